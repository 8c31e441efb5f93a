/* lazyvm run, lazyvm restore */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"

extern const unsigned char lazyvm_guest_image[];
extern const unsigned char lazyvm_guest_image_end[];

static const char run_help[] =
    "Usage: lazyvm run --mem SIZE --workload W [OPTIONS]\n"
    "\n"
    "Boot the bundled guest kernel in lazyvm's KVM VMM and run workload W: tasks\n"
    "joined with '+', each with a prepare phase (before the snapshot point) and a\n"
    "run phase (after it) that verifies every byte it reads:\n"
    "  scan:SIZE           write a seeded pattern over SIZE, read it all back\n"
    "  random:SIZE:COUNT   COUNT random page touches over SIZE, each verified\n"
    "  compute:N           N steps of a CPU-bound loop with a checkable result\n"
    "  crash:ud|pf|div     raise an exception in the run phase (tests reporting)\n"
    "With --snapshot-dir, the VM stops at the snapshot point and is saved there;\n"
    "`lazyvm restore DIR` runs the rest. Without it, both phases run straight through.\n"
    "\n"
    "  --mem SIZE           guest RAM, 16M to 4G, a multiple of 2 MiB (default 64M)\n"
    "  --mem-slots N        split RAM into N KVM memslots (default 1, at most 8)\n"
    "  --vcpus N            vCPUs, each on its own thread (default 1, at most 8)\n"
    "  --workload W         the tasks (default scan:4M)\n"
    "  --seed N             seed of the patterns (default 1)\n"
    "  --timeslice DUR      guest scheduler period (LAPIC timer; default 2ms, >= 200us)\n"
    "  --snapshot-dir DIR   write a snapshot at the snapshot point and stop\n"
    "  --json               print one JSON object at the end (console to stderr)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the guest verified everything (or the snapshot was written),\n"
    "1 it did not or the VM failed (the reason is printed), 2 bad usage.\n";

static const char restore_help[] =
    "Usage: lazyvm restore DIR [--load eager|mmap|lazy] [OPTIONS]\n"
    "\n"
    "Restore the snapshot in DIR (written by `lazyvm run --snapshot-dir`) and run the\n"
    "guest's run phase, which verifies all its data. The snapshot is validated\n"
    "completely before the guest runs (format, versions, checksums, layout, memory\n"
    "file size); a page whose checksum fails is never given to the guest.\n"
    "\n"
    "  --load eager         read and verify the whole memory file, then run\n"
    "  --load mmap          map the memory file MAP_PRIVATE (Firecracker's File\n"
    "                       backend); pages come from the page cache, unchecked\n"
    "  --load lazy          (default) run at once; each page is fetched on first touch\n"
    "                       by the fault engine (userfaultfd) and checked\n"
    "  --source-latency DUR lazy: every page read takes DUR (stands for remote storage)\n"
    "  --handler-threads N  lazy: fault-handling threads (default 1)\n"
    "  --intake block|busy  lazy: how handler threads wait for faults (default block)\n"
    "  --json               print one JSON object at the end (console to stderr):\n"
    "                       ok, load, restore_ms (start to first guest instruction),\n"
    "                       run_ms (run phase), total_ms, faults, pages_installed,\n"
    "                       bytes_read, fault_p50_us, fault_p99_us, max_rss_kb, error\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the guest verified everything, 1 otherwise (reason printed), 2 bad usage.\n";

static double ms(uint64_t from, uint64_t to)
{
	return to > from ? (double)(to - from) / 1e6 : 0;
}

static void print_json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void report(const char *what, const char *load, uint64_t t0, const struct vmm_outcome *o,
                   bool json)
{
	uint64_t end = o->t_done_ns ? o->t_done_ns : lv_now_ns();

	if (json) {
		printf(
		    "{\"ok\":%s,\"load\":\"%s\",\"restore_ms\":%.3f,\"run_ms\":%.3f,\"total_"
		    "ms\":%.3f,"
		    "\"faults\":%llu,\"pages_installed\":%llu,\"bytes_read\":%llu,"
		    "\"fault_p50_us\":%.1f,\"fault_p99_us\":%.1f,\"max_rss_kb\":%llu,"
		    "\"results\":%u,\"results_failed\":%u,\"snapshot_written\":%s,"
		    "\"exit_backend\":\"%s\",\"apf_not_present\":%llu,\"apf_ready\":%llu,"
		    "\"apf_spurious\":%llu,\"apf_refused_unsafe\":%llu,\"apf_refused_state\":%llu,"
		    "\"guest_apf_not_present\":%llu,\"guest_apf_ready\":%llu,"
		    "\"apf_io_wakeups\":%llu,\"apf_notify_signals\":%llu,\"apf_sync\":%llu,"
		    "\"apf_sync_ms\":%.3f,\"apf_async_ms\":%.3f,\"ws_recorded\":%llu,"
		    "\"ws_prefetched\":%llu,\"prefetch_ms\":%.3f,\"pages_background\":%llu,"
		    "\"apf_note\":",
		    o->ok ? "true" : "false", load, ms(t0, o->t_first_entry_ns),
		    ms(o->t_run_start_ns, o->t_done_ns), ms(t0, end), (unsigned long long)o->faults,
		    (unsigned long long)o->pages_installed, (unsigned long long)o->bytes_read,
		    (double)o->fault_p50_ns / 1e3, (double)o->fault_p99_ns / 1e3,
		    (unsigned long long)o->max_rss_kb, o->results, o->results_failed,
		    o->snapshot_written ? "true" : "false", o->exit_backend,
		    (unsigned long long)o->apf_not_present, (unsigned long long)o->apf_ready,
		    (unsigned long long)o->apf_spurious, (unsigned long long)o->apf_refused_unsafe,
		    (unsigned long long)o->apf_refused_state,
		    (unsigned long long)o->guest_apf_not_present,
		    (unsigned long long)o->guest_apf_ready, (unsigned long long)o->apf_io_wakeups,
		    (unsigned long long)o->apf_notify_signals, (unsigned long long)o->apf_sync,
		    (double)o->apf_sync_ns / 1e6, (double)o->apf_async_ns / 1e6,
		    (unsigned long long)o->ws_recorded, (unsigned long long)o->ws_prefetched,
		    (double)o->prefetch_ms_x1000 / 1e3, (unsigned long long)o->pages_background);
		print_json_string(o->apf_note);
		printf(",\"error\":");
		print_json_string(o->error);
		printf("}\n");
		return;
	}
	if (!o->ok) {
		fprintf(stderr, "lazyvm %s: %s\n", what, o->error);
		return;
	}
	if (o->snapshot_written) {
		printf("lazyvm %s: snapshot written at the snapshot point after %.1f ms\n", what,
		       ms(t0, lv_now_ns()));
		return;
	}
	printf("lazyvm %s: ok: %u task(s) verified; first guest instruction after %.1f ms, run "
	       "phase %.1f ms\n",
	       what, o->results, ms(t0, o->t_first_entry_ns), ms(o->t_run_start_ns, o->t_done_ns));
	if (o->exit_backend[0])
		printf("lazyvm %s: faults reach lazyvm as vCPU exits (exit backend: %s)\n", what,
		       o->exit_backend);
	if (o->apf_not_present || o->guest_apf_not_present)
		printf("lazyvm %s: async page faults: %llu injected, %llu page-ready, %llu "
		       "spurious; the "
		       "guest took %llu not-present and %llu ready\n",
		       what, (unsigned long long)o->apf_not_present,
		       (unsigned long long)o->apf_ready, (unsigned long long)o->apf_spurious,
		       (unsigned long long)o->guest_apf_not_present,
		       (unsigned long long)o->guest_apf_ready);
	if (o->apf_note[0])
		printf("lazyvm %s: %s\n", what, o->apf_note);
	if (strcmp(load, "boot") != 0)
		printf("lazyvm %s: memory (%s): %llu faults, %llu pages installed, %llu MiB read, "
		       "fault "
		       "p50 %.1f us, peak RSS %llu MiB\n",
		       what, load, (unsigned long long)o->faults,
		       (unsigned long long)o->pages_installed,
		       (unsigned long long)(o->bytes_read >> 20), (double)o->fault_p50_ns / 1e3,
		       (unsigned long long)(o->max_rss_kb >> 10));
}

int cmd_run(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"mem", required_argument, 0, 'm'},
	    {"mem-slots", required_argument, 0, 'S'},
	    {"vcpus", required_argument, 0, 'c'},
	    {"workload", required_argument, 0, 'w'},
	    {"seed", required_argument, 0, 's'},
	    {"timeslice", required_argument, 0, 't'},
	    {"snapshot-dir", required_argument, 0, 'd'},
	    {"apf", required_argument, 0, 'P'},
	    {"json", no_argument, 0, 'j'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	struct vmm_run_config cfg = {.apf = VMM_APF_USER,
	                             .mem_size = 64ull << 20,
	                             .mem_slots = 1,
	                             .vcpus = 1,
	                             .timeslice_us = 2000,
	                             .seed = 1,
	                             .workload = "scan:4M",
	                             .image = lazyvm_guest_image,
	                             .image_len =
	                                 (size_t)(lazyvm_guest_image_end - lazyvm_guest_image)};
	const char *cmd = "run";
	uint64_t t0 = lv_now_ns();
	unsigned long long v;
	unsigned u;
	bool json = false;
	struct vmm_outcome o;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (cli_size(cmd, "--mem", optarg, &v) < 0)
				return 2;
			cfg.mem_size = v;
			break;
		case 'S':
			if (cli_uint(cmd, "--mem-slots", optarg, 1, 8, &cfg.mem_slots) < 0)
				return 2;
			break;
		case 'c':
			if (cli_uint(cmd, "--vcpus", optarg, 1, 8, &cfg.vcpus) < 0)
				return 2;
			break;
		case 'w': cfg.workload = optarg; break;
		case 's':
			if (cli_uint(cmd, "--seed", optarg, 0, 0x7fffffff, &u) < 0)
				return 2;
			cfg.seed = u;
			break;
		case 't':
			if (cli_duration(cmd, "--timeslice", optarg, &v) < 0)
				return 2;
			if (v < 200000 || v > 1000000000) {
				fprintf(stderr, "lazyvm run: --timeslice must be 200us to 1s\n");
				return 2;
			}
			cfg.timeslice_us = (uint32_t)(v / 1000);
			break;
		case 'd': cfg.snapshot_dir = optarg; break;
		case 'P': {
			static const char *const onoff[] = {"off", "on"};
			int k;
			if (CLI_CHOICE(cmd, "--apf", optarg, onoff, &k) < 0)
				return 2;
			cfg.apf = k ? VMM_APF_USER : VMM_APF_OFF;
			break;
		}
		case 'j': json = true; break;
		case 'h': fputs(run_help, stdout); return 0;
		default: fputs("Run 'lazyvm run --help' for the options.\n", stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lazyvm run: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	cfg.console_to_stderr = json;
	vmm_run(&cfg, &o);
	report(cmd, "boot", t0, &o, json);
	return o.ok ? 0 : 1;
}

int cmd_restore(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"load", required_argument, 0, 'l'},
	    {"source-latency", required_argument, 0, 'L'},
	    {"handler-threads", required_argument, 0, 'T'},
	    {"fault-around", required_argument, 0, 'A'},
	    {"intake", required_argument, 0, 'i'},
	    {"apf", required_argument, 0, 'P'},
	    {"policy", required_argument, 0, 'O'},
	    {"source", required_argument, 0, 'U'},
	    {"record-ws", required_argument, 0, 'R'},
	    {"prefetch-ws", required_argument, 0, 'W'},
	    {"background-prefetch", no_argument, 0, 'G'},
	    {"json", no_argument, 0, 'j'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	struct vmm_restore_config cfg = {.fault_around = 16,
	                                 .apf = VMM_APF_OFF,
	                                 .policy = VMM_POLICY_HYBRID,
	                                 .load = VMM_LOAD_LAZY,
	                                 .handler_threads = 1,
	                                 .intake = ENGINE_INTAKE_BLOCK};
	const char *cmd = "restore";
	uint64_t t0 = lv_now_ns();
	unsigned long long v;
	bool json = false;
	struct vmm_outcome o;
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': {
			/* in enum vmm_load order */
			static const char *const loads[] = {"eager", "mmap", "lazy"};
			int k;
			if (CLI_CHOICE(cmd, "--load", optarg, loads, &k) < 0)
				return 2;
			cfg.load = (enum vmm_load)k;
			break;
		}
		case 'L':
			if (cli_duration(cmd, "--source-latency", optarg, &v) < 0)
				return 2;
			cfg.source_latency_ns = v;
			break;
		case 'T':
			if (cli_uint(cmd, "--handler-threads", optarg, 1, 64,
			             &cfg.handler_threads) < 0)
				return 2;
			break;
		case 'i': {
			static const char *const intakes[] = {"block", "busy", "exit"};
			int k;
			if (CLI_CHOICE(cmd, "--intake", optarg, intakes, &k) < 0)
				return 2;
			cfg.intake = k == 1 ? ENGINE_INTAKE_BUSY : ENGINE_INTAKE_BLOCK;
			cfg.exit_intake = k == 2;
			break;
		}
		case 'A':
			if (cli_uint(cmd, "--fault-around", optarg, 1, 64, &cfg.fault_around) < 0)
				return 2;
			break;
		case 'P': {
			/* in enum vmm_apf order */
			static const char *const apfs[] = {"off", "user", "exitless", "kernel"};
			int k;
			if (CLI_CHOICE(cmd, "--apf", optarg, apfs, &k) < 0)
				return 2;
			cfg.apf = (enum vmm_apf)k;
			break;
		}
		case 'O': {
			/* in enum vmm_apf_policy order */
			static const char *const policies[] = {"sync", "async", "hybrid"};
			int k;
			if (CLI_CHOICE(cmd, "--policy", optarg, policies, &k) < 0)
				return 2;
			cfg.policy = (enum vmm_apf_policy)k;
			break;
		}
		case 'U': cfg.source_uri = optarg; break;
		case 'R': cfg.record_ws = optarg; break;
		case 'W': cfg.prefetch_ws = optarg; break;
		case 'G': cfg.background = true; break;
		case 'j': json = true; break;
		case 'h': fputs(restore_help, stdout); return 0;
		default: fputs("Run 'lazyvm restore --help' for the options.\n", stderr); return 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr, "lazyvm restore: give exactly one snapshot directory\n"
		                "Run 'lazyvm restore --help' for the options.\n");
		return 2;
	}
	cfg.dir = argv[optind];
	cfg.console_to_stderr = json;
	vmm_restore(&cfg, &o);
	report(cmd, vmm_load_name(cfg.load), t0, &o, json);
	return o.ok ? 0 : 1;
}

static const char probe_help[] =
    "Usage: lazyvm probe [--all]\n"
    "\n"
    "Say which userfault exit backends work on this host, using tiny probe VMs:\n"
    "native (KVM_MEM_USERFAULT memslots), sigbus (UFFD_FEATURE_SIGBUS: KVM exits\n"
    "with the gpa), kick (blocking UFFD + a signal to the vCPU). --all also probes\n"
    "kick when sigbus works (it takes ~50 ms). Exit status 0, or 1 when KVM is\n"
    "unusable.\n";

int cmd_probe(int argc, char **argv)
{
	bool all = false;
	char buf[2048];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--all"))
			all = true;
		else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			fputs(probe_help, stdout);
			return 0;
		} else {
			fprintf(stderr, "lazyvm probe: unknown argument '%s'\n", argv[i]);
			return 2;
		}
	}
	int r = vmm_probe_exits(all, buf, sizeof(buf));
	fputs(buf, r < 0 ? stderr : stdout);
	return r < 0 ? 1 : 0;
}
