/* lazyvm run, lazyvm restore, lazyvm migrate */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lazyvm/hostport.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"

/* A guest that says nothing for this long is taken for stuck (--stall-timeout):
 * far above any task of the bundled guest between two messages here. */
#define STALL_DEFAULT_NS (120ull * 1000000000ull)

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
    "  --apf on|off         the guest enables PV async page faults at boot (default on)\n"
    "  --migrate-to H:P     post-copy migrate the VM to `lazyvm migrate --listen H:P`\n"
    "                       at the snapshot point (the run phase runs there); this\n"
    "                       process serves the guest's memory over NBD until the\n"
    "                       destination has every page, then exits\n"
    "  --migrate-after DUR  migrate DUR after the start instead, wherever the guest is\n"
    "  --stall-timeout DUR  stop the VM with an error when the guest sends no message\n"
    "                       and no console line for DUR (default 120s; 0: never)\n"
    "  --json               print one JSON object at the end (console to stderr)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the guest verified everything (or the snapshot was written, or\n"
    "the VM migrated and the destination has all its memory), 1 it did not or the\n"
    "VM failed (the reason is printed; a refused migration lets the VM finish here,\n"
    "still status 1), 2 bad usage.\n";

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
    "  --source URI         guest memory from an NBD export (nbd://HOST:PORT/EXPORT,\n"
    "                       nbd+unix:///?socket=PATH) instead of DIR/memory; still\n"
    "                       checked against DIR/checksums; not with --load mmap\n"
    "  --source-timeout DUR the longest wait for the NBD server, connecting included\n"
    "                       (default 5s); a read it never answers fails after 6\n"
    "                       attempts, within 6 x DUR + 1.6 s\n"
    "  --record-ws FILE     lazy: write the pages installed, in order (a working set)\n"
    "  --prefetch-ws FILE   lazy: install that working set in bulk first (a missing or\n"
    "                       stale file only costs a warning)\n"
    "  --background-prefetch  lazy: fetch every untouched page in the\n"
    "                       background, 64 KiB at a time, yielding to demand faults\n"
    "  --source-latency DUR lazy: every page read takes DUR (stands for remote storage)\n"
    "  --handler-threads N  lazy: fault-handling threads (default 1)\n"
    "  --intake block|busy|exit  lazy: a handler thread blocking in poll (default) or\n"
    "                       spinning, or the vCPUs' own exits (userfault exits)\n"
    "  --fault-around N     lazy: pages installed per fault, 1 to 64 (default 16)\n"
    "  --apf off|user|exitless|kernel  async page faults (default off; user and\n"
    "                       exitless need --intake exit)\n"
    "  --policy sync|async|hybrid  which faults become async (default hybrid)\n"
    "  --stall-timeout DUR  stop the VM with an error when the guest sends no message\n"
    "                       and no console line for DUR (default 120s; 0: never)\n"
    "  --json               print one JSON object at the end (console to stderr):\n"
    "                       ok, load, restore_ms (start to first guest instruction),\n"
    "                       run_ms (run phase), total_ms, faults, pages_installed,\n"
    "                       bytes_read, fault_p50_us, fault_p99_us, max_rss_kb,\n"
    "                       blocktime_ms (per vCPU), blocktime_all_ms, ... error\n"
    "                       (all fields: docs/CLI.md)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the guest verified everything, 1 otherwise (reason printed), 2 bad usage.\n";

static const char migrate_help[] =
    "Usage: lazyvm migrate --listen HOST:PORT [OPTIONS]\n"
    "\n"
    "Be the destination of a post-copy live migration: wait for one\n"
    "`lazyvm run --migrate-to HOST:PORT`, take its VM (vCPU and device state) and\n"
    "run it at once, fetching each page of guest memory from the source (over NBD,\n"
    "checked against the page checksums the source sent) when first touched, and\n"
    "every other page in the background. Pages the source found all-zero are never\n"
    "sent. Once every page is here the source is told and exits; this process runs\n"
    "the guest to its end and reports the blocktime (time vCPUs waited for pages).\n"
    "If the VM cannot be taken (bad state, no KVM) the source is told why and the VM\n"
    "goes on there.\n"
    "\n"
    "  --listen HOST:PORT   where to wait for the source (port 0: any; the address\n"
    "                       is printed as `listening on HOST:PORT`, on stderr with\n"
    "                       --json)\n"
    "  --accept-timeout DUR give up when no source came within DUR (default: wait)\n"
    "  --handler-threads N  fault-handling threads (default 1)\n"
    "  --intake block|busy|exit  a handler thread blocking in poll (default) or\n"
    "                       spinning, or the vCPUs' own exits (userfault exits)\n"
    "  --fault-around N     pages installed per fault, 1 to 64 (default 16)\n"
    "  --source-latency DUR add DUR to every page read (a slower network)\n"
    "  --source-timeout DUR the longest wait for the source's NBD server (default 5s);\n"
    "                       a source that stops answering stops the VM within\n"
    "                       6 x DUR + 1.6 s\n"
    "  --apf off|user|exitless  async page faults while pages come (default off;\n"
    "                       user and exitless need --intake exit)\n"
    "  --policy sync|async|hybrid  which faults become async (default hybrid: when\n"
    "                       --source-latency >= 100us)\n"
    "  --stall-timeout DUR  stop the VM with an error when the guest sends no message\n"
    "                       and no console line for DUR (default 120s; 0: never)\n"
    "  --json               print one JSON object at the end (console to stderr):\n"
    "                       the restore fields plus state_bytes, downtime_ms (state\n"
    "                       received -> vCPUs run), transfer_ms (vCPUs run -> every\n"
    "                       page here), blocktime_ms, blocktime_all_ms\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the guest verified everything and every page came, 1 otherwise\n"
    "(reason printed), 2 bad usage.\n";

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
		printf(",\"huge_collapsed\":%llu,\"pages_zero_known\":%llu,\"blocktime_all_ms\":%."
		       "3f,\"blocktime_ms\":[",
		       (unsigned long long)o->huge_collapsed,
		       (unsigned long long)o->pages_zero_known, (double)o->blocktime_all_ns / 1e6);
		for (unsigned i = 0; i < o->nvcpus && i < 8; i++)
			printf("%s%.3f", i ? "," : "", (double)o->blocktime_ns[i] / 1e6);
		printf("],\"blocktime_faults\":[");
		for (unsigned i = 0; i < o->nvcpus && i < 8; i++)
			printf("%s%llu", i ? "," : "", (unsigned long long)o->blocktime_faults[i]);
		printf(
		    "],\"snapshot_ms\":%.3f,\"migrated\":%s,\"state_bytes\":%llu,\"downtime_ms\":%."
		    "3f,"
		    "\"transfer_ms\":%.3f,\"pages\":%llu,\"pages_zero\":%llu,\"bytes_sent\":%llu,"
		    "\"nbd_requests\":%llu,\"migrate_note\":",
		    (double)o->snapshot_ns / 1e6, o->migrated ? "true" : "false",
		    (unsigned long long)o->mig_state_bytes, (double)o->mig_downtime_ns / 1e6,
		    (double)o->mig_transfer_ns / 1e6, (unsigned long long)o->mig_pages,
		    (unsigned long long)o->mig_pages_zero, (unsigned long long)o->mig_bytes_sent,
		    (unsigned long long)o->mig_requests);
		print_json_string(o->migrate_note);
		printf(",\"error\":");
		print_json_string(o->error);
		printf("}\n");
		return;
	}
	if (!o->ok) {
		fprintf(stderr, "lazyvm %s: %s\n", what, o->error);
		return;
	}
	if (o->migrated) {
		printf("lazyvm %s: migrated: downtime %.1f ms (vCPUs parked -> running at the "
		       "destination), state %llu KiB; memory: %llu of %llu pages sent (%.1f MiB in "
		       "%llu requests), %llu zero pages not sent; every page there %.1f ms later\n",
		       what, (double)o->mig_downtime_ns / 1e6,
		       (unsigned long long)(o->mig_state_bytes >> 10),
		       (unsigned long long)(o->mig_pages - o->mig_pages_zero),
		       (unsigned long long)o->mig_pages, (double)o->mig_bytes_sent / 1048576.0,
		       (unsigned long long)o->mig_requests, (unsigned long long)o->mig_pages_zero,
		       (double)o->mig_transfer_ns / 1e6);
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
	if (o->mig_state_bytes)
		printf("lazyvm %s: migration: state %llu KiB; vCPUs ran %.1f ms after it came; "
		       "%llu zero pages never sent; every page here after %.1f ms\n",
		       what, (unsigned long long)(o->mig_state_bytes >> 10),
		       (double)o->mig_downtime_ns / 1e6, (unsigned long long)o->pages_zero_known,
		       (double)o->mig_transfer_ns / 1e6);
	if (o->nvcpus) {
		printf("lazyvm %s: blocktime (vCPUs waiting for pages):", what);
		for (unsigned i = 0; i < o->nvcpus && i < 8; i++)
			printf(" vCPU %u %.1f ms (%llu waits);", i,
			       (double)o->blocktime_ns[i] / 1e6,
			       (unsigned long long)o->blocktime_faults[i]);
		printf(" all at once %.1f ms\n", (double)o->blocktime_all_ns / 1e6);
	}
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
	    {"migrate-to", required_argument, 0, 'M'},
	    {"migrate-after", required_argument, 0, 'a'},
	    {"stall-timeout", required_argument, 0, 'Z'},
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
	                             .stall_ns = STALL_DEFAULT_NS,
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
		case 'M':
			if (cli_hostport(cmd, "--migrate-to", optarg, false) < 0)
				return 2;
			cfg.migrate_to = optarg;
			break;
		case 'a':
			if (cli_duration(cmd, "--migrate-after", optarg, &v) < 0)
				return 2;
			if (v == 0) {
				fprintf(stderr,
				        "lazyvm run: --migrate-after must be more than 0\n");
				return 2;
			}
			cfg.migrate_after_ns = v;
			break;
		case 'P': {
			static const char *const onoff[] = {"off", "on"};
			int k;
			if (CLI_CHOICE(cmd, "--apf", optarg, onoff, &k) < 0)
				return 2;
			cfg.apf = k ? VMM_APF_USER : VMM_APF_OFF;
			break;
		}
		case 'Z':
			if (cli_duration(cmd, "--stall-timeout", optarg, &v) < 0)
				return 2;
			cfg.stall_ns = v;
			break;
		case 'j': json = true; break;
		case 'h': fputs(run_help, stdout); return 0;
		default: fputs("Run 'lazyvm run --help' for the options.\n", stderr); return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lazyvm run: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (cfg.migrate_to && cfg.snapshot_dir) {
		fprintf(stderr, "lazyvm run: --migrate-to and --snapshot-dir both use the snapshot "
		                "point; give one\n");
		return 2;
	}
	if (cfg.migrate_after_ns && !cfg.migrate_to) {
		fprintf(stderr, "lazyvm run: --migrate-after needs --migrate-to\n");
		return 2;
	}
	cfg.console_to_stderr = json;
	vmm_run(&cfg, &o);
	report(cmd, "boot", t0, &o, json);
	return o.ok ? 0 : 1;
}

/* The fault-handling options restore and migrate share. Returns 1 when `c`
 * was one of them, 0 when not, -1 after printing why its value is bad. */
static int engine_option(const char *cmd, int c, const char *arg, struct vmm_restore_config *cfg)
{
	static const char *const intakes[] = {"block", "busy", "exit"};
	static const char *const apfs[] = {"off", "user", "exitless", "kernel"};
	static const char *const policies[] = {"sync", "async", "hybrid"};
	unsigned long long v;
	int k;

	switch (c) {
	case 'L':
		if (cli_duration(cmd, "--source-latency", arg, &v) < 0)
			return -1;
		cfg->source_latency_ns = v;
		return 1;
	case 'Z':
		if (cli_duration(cmd, "--stall-timeout", arg, &v) < 0)
			return -1;
		cfg->stall_ns = v;
		return 1;
	case 'N':
		if (cli_duration(cmd, "--source-timeout", arg, &v) < 0)
			return -1;
		if (v < 10000000ull || v > 3600000000000ull) {
			fprintf(stderr, "lazyvm %s: --source-timeout must be 10ms to 1h\n", cmd);
			return -1;
		}
		cfg->source_timeout_ns = v;
		return 1;
	case 'T':
		return cli_uint(cmd, "--handler-threads", arg, 1, 64, &cfg->handler_threads) < 0
		           ? -1
		           : 1;
	case 'A':
		return cli_uint(cmd, "--fault-around", arg, 1, 64, &cfg->fault_around) < 0 ? -1 : 1;
	case 'i':
		if (cli_choice(cmd, "--intake", arg, intakes, 3, &k) < 0)
			return -1;
		cfg->intake = k == 1 ? ENGINE_INTAKE_BUSY : ENGINE_INTAKE_BLOCK;
		cfg->exit_intake = k == 2;
		return 1;
	case 'P':
		/* in enum vmm_apf order */
		if (cli_choice(cmd, "--apf", arg, apfs, 4, &k) < 0)
			return -1;
		cfg->apf = (enum vmm_apf)k;
		return 1;
	case 'O':
		/* in enum vmm_apf_policy order */
		if (cli_choice(cmd, "--policy", arg, policies, 3, &k) < 0)
			return -1;
		cfg->policy = (enum vmm_apf_policy)k;
		return 1;
	default: return 0;
	}
}

int cmd_restore(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"load", required_argument, 0, 'l'},
	    {"source-latency", required_argument, 0, 'L'},
	    {"source-timeout", required_argument, 0, 'N'},
	    {"handler-threads", required_argument, 0, 'T'},
	    {"fault-around", required_argument, 0, 'A'},
	    {"intake", required_argument, 0, 'i'},
	    {"apf", required_argument, 0, 'P'},
	    {"policy", required_argument, 0, 'O'},
	    {"source", required_argument, 0, 'U'},
	    {"record-ws", required_argument, 0, 'R'},
	    {"prefetch-ws", required_argument, 0, 'W'},
	    {"background-prefetch", no_argument, 0, 'G'},
	    {"stall-timeout", required_argument, 0, 'Z'},
	    {"json", no_argument, 0, 'j'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	struct vmm_restore_config cfg = {.fault_around = 16,
	                                 .stall_ns = STALL_DEFAULT_NS,
	                                 .apf = VMM_APF_OFF,
	                                 .policy = VMM_POLICY_HYBRID,
	                                 .load = VMM_LOAD_LAZY,
	                                 .handler_threads = 1,
	                                 .intake = ENGINE_INTAKE_BLOCK};
	const char *cmd = "restore";
	uint64_t t0 = lv_now_ns();
	bool json = false;
	struct vmm_outcome o;
	int c, e;

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
		case 'U': {
			char why[300];
			if (lv_check_nbd_uri(optarg, why, sizeof(why)) < 0) {
				fprintf(stderr, "lazyvm %s: --source %s\n", cmd, why);
				return 2;
			}
			cfg.source_uri = optarg;
			break;
		}
		case 'R': cfg.record_ws = optarg; break;
		case 'W': cfg.prefetch_ws = optarg; break;
		case 'G': cfg.background = true; break;
		case 'j': json = true; break;
		case 'h': fputs(restore_help, stdout); return 0;
		default:
			if ((e = engine_option(cmd, c, optarg, &cfg)) > 0)
				break;
			if (e == 0)
				fputs("Run 'lazyvm restore --help' for the options.\n", stderr);
			return 2;
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

/* On stdout, or on stderr with --json (stdout carries the one JSON object). */
static void print_listening(void *arg, const char *addr)
{
	FILE *f = arg ? stderr : stdout;

	fprintf(f, "lazyvm migrate: listening on %s\n", addr);
	fflush(f);
}

int cmd_migrate(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"listen", required_argument, 0, 'l'},
	    {"accept-timeout", required_argument, 0, 't'},
	    {"handler-threads", required_argument, 0, 'T'},
	    {"intake", required_argument, 0, 'i'},
	    {"fault-around", required_argument, 0, 'A'},
	    {"source-latency", required_argument, 0, 'L'},
	    {"source-timeout", required_argument, 0, 'N'},
	    {"apf", required_argument, 0, 'P'},
	    {"policy", required_argument, 0, 'O'},
	    {"stall-timeout", required_argument, 0, 'Z'},
	    {"json", no_argument, 0, 'j'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	struct vmm_migrate_in_config cfg = {.restore = {.fault_around = 16,
	                                                .stall_ns = STALL_DEFAULT_NS,
	                                                .apf = VMM_APF_OFF,
	                                                .policy = VMM_POLICY_HYBRID,
	                                                .load = VMM_LOAD_LAZY,
	                                                .handler_threads = 1,
	                                                .intake = ENGINE_INTAKE_BLOCK},
	                                    .listening = print_listening};
	const char *cmd = "migrate";
	unsigned long long v;
	bool json = false;
	struct vmm_outcome o;
	int c, e;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (cli_hostport(cmd, "--listen", optarg, true) < 0)
				return 2;
			cfg.listen = optarg;
			break;
		case 't':
			if (cli_duration(cmd, "--accept-timeout", optarg, &v) < 0)
				return 2;
			cfg.accept_timeout_ns = v;
			break;
		case 'j': json = true; break;
		case 'h': fputs(migrate_help, stdout); return 0;
		default:
			if ((e = engine_option(cmd, c, optarg, &cfg.restore)) > 0)
				break;
			if (e == 0)
				fputs("Run 'lazyvm migrate --help' for the options.\n", stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lazyvm migrate: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!cfg.listen) {
		fprintf(stderr, "lazyvm migrate: --listen HOST:PORT is required\n"
		                "Run 'lazyvm migrate --help' for the options.\n");
		return 2;
	}
	cfg.restore.console_to_stderr = json;
	cfg.arg = json ? stderr : NULL;
	vmm_migrate_in(&cfg, &o);
	/* Times count from the moment the VM state arrived, not from the wait. */
	report(cmd, "lazy", o.t_ready_ns ? o.t_ready_ns - o.mig_downtime_ns : lv_now_ns(), &o,
	       json);
	return o.ok ? 0 : 1;
}
