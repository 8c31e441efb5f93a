/* lazyvm run */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "lazyvm/guest_abi.h"
#include "lazyvm/guest_workload.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"

extern const unsigned char lazyvm_guest_image[];
extern const unsigned char lazyvm_guest_image_end[];

static const char run_help[] =
    "Usage: lazyvm run [--mem SIZE] [--workload W] [OPTIONS]\n"
    "       lazyvm run --kernel BZIMAGE [--initrd CPIO] [--cmdline STR] [OPTIONS]\n"
    "\n"
    "Boot the bundled guest kernel in lazyvm's KVM VMM and run workload W: tasks\n"
    "joined with '+', each with a prepare phase (before the snapshot point) and a\n"
    "run phase (after it) that verifies every byte it reads:\n"
    "  scan:SIZE           write a seeded pattern over SIZE, read it all back\n"
    "  random:SIZE:COUNT   COUNT random page touches over SIZE, each verified\n"
    "  compute:N           N steps of a CPU-bound loop with a checkable result\n"
    "  edge:SIZE           rep movsb, add, lock xadd, repe cmpsq across missing pages\n"
    "                      (SIZE a multiple of 16k, at least 64k)\n"
    "  rescan:K            read scan task K's pages again, at the same time as task K\n"
    "  crash:ud|pf|div     raise an exception in the run phase (tests reporting)\n"
    "SIZE: a multiple of 4k with an optional k, M or G; COUNT, N: decimal below 2^40;\n"
    "at most 32 tasks and 255 characters. The tasks' pages must fit in --mem.\n"
    "With --snapshot-dir, the VM stops at the snapshot point and is saved there;\n"
    "`lazyvm restore DIR` runs the rest. Without it, both phases run straight through.\n"
    "\n"
    "  --mem SIZE           guest RAM, 16M to 4G, a multiple of 2 MiB (default 64M)\n"
    "  --mem-slots N        split RAM into N KVM memslots (default 1, at most 8)\n"
    "  --vcpus N            vCPUs, each on its own thread (default 1, at most 8)\n"
    "  --workload W         the tasks (default scan:4M)\n"
    "  --seed N             seed of the patterns and random choices, 0 to 2^31-1\n"
    "                       (default 1)\n"
    "  --timeslice DUR      guest scheduler period (LAPIC timer; default 2ms, >= 200us)\n"
    "  --snapshot-dir DIR   write a snapshot at the snapshot point and stop\n"
    "  --apf on|off         the guest enables PV async page faults at boot (default on)\n"
    "  --migrate-to H:P     post-copy migrate the VM to `lazyvm migrate --listen H:P`\n"
    "                       at the snapshot point (the run phase runs there); this\n"
    "                       process serves the guest's memory over NBD until the\n"
    "                       destination has every page, then exits\n"
    "  --migrate-after DUR  with --migrate-to: migrate DUR (> 0) after the start\n"
    "                       instead, wherever the guest is\n"
    "  --kernel BZIMAGE     boot this Linux bzImage (64-bit entry, boot protocol\n"
    "                       2.12 or later) instead of the bundled guest: COM1 is the\n"
    "                       console (stdout), a line with \"Kernel panic\" fails the\n"
    "                       run, \"lazyvm: result pass\" / \"lazyvm: result fail: WHY\"\n"
    "                       count as results, \"lazyvm: snapshot\" is the snapshot\n"
    "                       point, the i8042 reset (reboot=k; reboot -f) ends the run.\n"
    "                       --mem at most 3G; --workload, --seed, --timeslice and\n"
    "                       --migrate-* do not apply; --apf defaults to off (KVM holds\n"
    "                       the PV async PF MSRs), --apf on lets lazyvm hold them for a\n"
    "                       restore with --apf user|exitless (docs/LINUX.md)\n"
    "  --initrd CPIO        the initramfs for --kernel\n"
    "  --cmdline STR        the kernel command line for --kernel (default:\n"
    "                       \"%s\")\n"
    "  --stall-timeout DUR  stop the VM with an error when the guest sends no message\n"
    "                       and no console line for DUR (default 120s; 0: never)\n"
    "  --json               print one JSON object at the end (console to stderr)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the guest verified everything (or the snapshot was written, or\n"
    "the VM migrated and the destination has all its memory), 1 it did not or the\n"
    "VM failed (the reason is printed; a refused migration lets the VM finish here,\n"
    "still status 1), 2 bad usage (a bad value, workload or combination: named).\n";

/* The workload string, parsed as the guest will parse it: a bad one is bad
 * usage, said before anything boots. */
static int check_workload(const char *w)
{
	struct workload_task tasks[WORKLOAD_MAX_TASKS];
	struct workload_error e;
	unsigned n;

	if (workload_parse_tasks(w, tasks, WORKLOAD_MAX_TASKS, &n, &e) == 0)
		return 0;
	if (!e.whole)
		fprintf(stderr, "lazyvm run: --workload: bad part '%.*s' of '%s': %s\n", (int)e.len,
		        w + e.off, w, e.why);
	else
		fprintf(stderr, "lazyvm run: --workload: '%.40s...' (%zu characters) is %s\n", w,
		        strlen(w), e.why);
	return -1;
}

/* The tasks' pages must fit in --mem (the guest's own image and heap
 * alignment take a few MiB more: the guest refuses what then does not fit). */
static int check_mem(uint64_t mem, const char *w)
{
	struct workload_task tasks[WORKLOAD_MAX_TASKS];
	struct workload_error e;
	uint64_t need = 0;
	unsigned n;

	if (workload_parse_tasks(w, tasks, WORKLOAD_MAX_TASKS, &n, &e) < 0)
		return 0; /* checked with --workload */
	for (unsigned i = 0; i < n; i++)
		need += workload_task_mem(&tasks[i]);
	if (need <= mem)
		return 0;
	fprintf(stderr,
	        "lazyvm run: --workload '%s' needs %llu MiB of guest memory; --mem is %llu MiB\n",
	        w, (unsigned long long)(need >> 20), (unsigned long long)(mem >> 20));
	return -1;
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
	    {"kernel", required_argument, 0, 'K'},
	    {"initrd", required_argument, 0, 'I'},
	    {"cmdline", required_argument, 0, 'C'},
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
	                             .stall_ns = CLI_STALL_DEFAULT_NS,
	                             .image = lazyvm_guest_image,
	                             .image_len =
	                                 (size_t)(lazyvm_guest_image_end - lazyvm_guest_image)};
	const char *cmd = "run";
	uint64_t t0 = lv_now_ns();
	unsigned long long v;
	unsigned u;
	bool json = false, guest_opts = false, apf_given = false;
	struct vmm_outcome o;
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (cli_size(cmd, "--mem", optarg, &v) < 0)
				return 2;
			if (v < GUEST_MEM_MIN || v > GUEST_MEM_MAX || v % (2u << 20)) {
				fprintf(stderr,
				        "lazyvm run: --mem: '%s' is not 16M to 4G in whole 2 MiB "
				        "(e.g. 64M)\n",
				        optarg);
				return 2;
			}
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
		case 'w':
			guest_opts = true;
			if (check_workload(optarg) < 0)
				return 2;
			cfg.workload = optarg;
			break;
		case 's':
			guest_opts = true;
			if (cli_uint(cmd, "--seed", optarg, 0, 0x7fffffff, &u) < 0)
				return 2;
			cfg.seed = u;
			break;
		case 't':
			guest_opts = true;
			if (cli_duration(cmd, "--timeslice", optarg, &v) < 0)
				return 2;
			if (v < 200000 || v > 1000000000) {
				fprintf(stderr,
				        "lazyvm run: --timeslice: '%s' is not 200us to 1s\n",
				        optarg);
				return 2;
			}
			cfg.timeslice_us = (uint32_t)(v / 1000);
			break;
		case 'd':
			if (cli_path(cmd, "--snapshot-dir", optarg) < 0)
				return 2;
			cfg.snapshot_dir = optarg;
			break;
		case 'M':
			guest_opts = true;
			if (cli_hostport(cmd, "--migrate-to", optarg, false) < 0)
				return 2;
			cfg.migrate_to = optarg;
			break;
		case 'Z':
			if (cli_duration(cmd, "--stall-timeout", optarg, &v) < 0)
				return 2;
			cfg.stall_ns = v;
			break;
		case 'a':
			guest_opts = true;
			if (cli_duration(cmd, "--migrate-after", optarg, &v) < 0)
				return 2;
			if (v == 0) {
				fprintf(stderr,
				        "lazyvm run: --migrate-after: '%s': must be more than 0\n",
				        optarg);
				return 2;
			}
			cfg.migrate_after_ns = v;
			break;
		case 'P': {
			apf_given = true;
			static const char *const onoff[] = {"off", "on"};
			int k;
			if (CLI_CHOICE(cmd, "--apf", optarg, onoff, &k) < 0)
				return 2;
			cfg.apf = k ? VMM_APF_USER : VMM_APF_OFF;
			break;
		}
		case 'K':
			if (cli_path(cmd, "--kernel", optarg) < 0)
				return 2;
			cfg.kernel_path = optarg;
			break;
		case 'I':
			if (cli_path(cmd, "--initrd", optarg) < 0)
				return 2;
			cfg.initrd_path = optarg;
			break;
		case 'C': cfg.cmdline = optarg; break;
		case 'j': json = true; break;
		case 'h': printf(run_help, vmm_linux_default_cmdline); return 0;
		default: return cli_bad_option(cmd, c, argv);
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
	if (!cfg.kernel_path && (cfg.initrd_path || cfg.cmdline)) {
		fprintf(stderr, "lazyvm run: --initrd and --cmdline need --kernel\n");
		return 2;
	}
	if (cfg.kernel_path && guest_opts) {
		fprintf(stderr, "lazyvm run: --workload, --seed, --timeslice, --migrate-to and "
		                "--migrate-after are the bundled guest's; not with --kernel\n");
		return 2;
	}
	if (cfg.kernel_path && cfg.mem_size > (3ull << 30)) {
		fprintf(stderr,
		        "lazyvm run: --mem: a Linux guest takes at most 3G (RAM stops below "
		        "the IOAPIC and LAPIC at 3 GiB)\n");
		return 2;
	}
	if (cfg.kernel_path && !apf_given)
		cfg.apf = VMM_APF_OFF; /* Linux: KVM holds the PV async PF MSRs */
	else if (check_mem(cfg.mem_size, cfg.workload) < 0)
		return 2;
	cfg.console_to_stderr = json;
	vmm_run(&cfg, &o);
	cli_report(cmd, "boot", t0, &o, json);
	return o.ok ? 0 : 1;
}
