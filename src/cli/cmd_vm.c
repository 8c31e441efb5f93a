/* lazyvm restore, lazyvm migrate, lazyvm probe */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "lazyvm/fdio.h"
#include "lazyvm/hostport.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"

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
    "Options marked lazy work with --load lazy only (bad usage otherwise):\n"
    "  --record-ws FILE     lazy: write the pages installed, in order (a working set);\n"
    "                       FILE must be a regular file if it exists\n"
    "  --prefetch-ws FILE   lazy: install that working set in bulk first (a missing or\n"
    "                       stale file only costs a warning)\n"
    "  --background-prefetch  lazy: fetch every untouched page in the\n"
    "                       background, 64 KiB at a time, yielding to demand faults\n"
    "  --source-timeout DUR the longest wait for the NBD server, connecting included\n"
    "                       (default 5s); a read it never answers fails after 6\n"
    "                       attempts, within 6 x DUR + 1.6 s\n"
    "  --source-latency DUR lazy (or eager from --source): every page read takes DUR\n"
    "                       (stands for remote storage)\n"
    "  --handler-threads N  lazy: fault-handling threads, 1 to 64 (default 1; not with\n"
    "                       --intake exit, where the vCPUs resolve their own faults)\n"
    "  --intake block|busy|exit  lazy: a handler thread blocking in poll (default) or\n"
    "                       spinning, or the vCPUs' own exits (userfault exits)\n"
    "  --exit-backend native|sigbus|kick  lazy, with --intake exit: how the vCPUs\n"
    "                       exit on a missing page (default: the best that works\n"
    "                       here, in that order; `lazyvm probe` lists them)\n"
    "  --fault-around N     lazy: pages installed per fault, 1 to 64 (default 16)\n"
    "  --apf off|user|exitless|kernel  lazy: async page faults (default off; user and\n"
    "                       exitless need --intake exit; with native exits on a KVM\n"
    "                       that has async PF for userfaults, KVM delivers them)\n"
    "  --policy sync|async|hybrid  lazy, with --apf other than off: which faults\n"
    "                       become async (default hybrid: when --source-latency\n"
    "                       >= 100us)\n"
    "  --stall-timeout DUR  stop the VM with an error when the guest sends no message\n"
    "                       and no console line, and no page is faulted in for it,\n"
    "                       for DUR (default 120s; 0: never)\n"
    "  --json               print one JSON object at the end (console to stderr):\n"
    "                       ok, load, restore_ms (start to first guest instruction),\n"
    "                       run_ms (run phase), total_ms, faults, pages_installed,\n"
    "                       bytes_read, fault_p50_us, fault_p99_us, max_rss_kb,\n"
    "                       blocktime_ms (per vCPU), blocktime_all_ms, ... error\n"
    "                       (all fields: docs/CLI.md)\n"
    "  -h, --help           this text\n"
    "\n"
    "The files in DIR (state, checksums, memory) and --record-ws must be regular\n"
    "files: a FIFO, directory or device is refused by name (status 1); a\n"
    "--prefetch-ws of another kind only costs a warning, like a missing one.\n"
    "Exit status: 0 the guest verified everything, 1 otherwise (reason printed), 2 bad\n"
    "usage (an unknown option, a bad value, options that do nothing together).\n";

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
    "  --accept-timeout DUR give up when no source came within DUR (> 0; default: wait)\n"
    "  --handler-threads N  fault-handling threads, 1 to 64 (default 1; not with\n"
    "                       --intake exit)\n"
    "  --intake block|busy|exit  a handler thread blocking in poll (default) or\n"
    "                       spinning, or the vCPUs' own exits (userfault exits)\n"
    "  --exit-backend native|sigbus|kick  with --intake exit: how the vCPUs exit on\n"
    "                       a missing page (default: the best that works here)\n"
    "  --fault-around N     pages installed per fault, 1 to 64 (default 16)\n"
    "  --source-timeout DUR the longest wait for the source's NBD server (default 5s);\n"
    "                       a source that stops answering stops the VM within\n"
    "                       6 x DUR + 1.6 s\n"
    "  --source-latency DUR add DUR to every page read (a slower network)\n"
    "  --apf off|user|exitless  async page faults while pages come (default off;\n"
    "                       user and exitless need --intake exit)\n"
    "  --policy sync|async|hybrid  with --apf user or exitless: which faults become\n"
    "                       async (default hybrid: when --source-latency >= 100us)\n"
    "  --stall-timeout DUR  stop the VM with an error when the guest sends no message\n"
    "                       and no console line, and no page is faulted in for it,\n"
    "                       for DUR (default 120s; 0: never)\n"
    "  --json               print one JSON object at the end (console to stderr):\n"
    "                       the restore fields plus state_bytes, downtime_ms (state\n"
    "                       received -> vCPUs run), transfer_ms (vCPUs run -> every\n"
    "                       page here), blocktime_ms, blocktime_all_ms\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the guest verified everything and every page came, 1 otherwise\n"
    "(reason printed), 2 bad usage.\n";

/* Which of the fault-handling options were given (engine_option). */
enum {
	GIVEN_LATENCY = 1u << 0,
	GIVEN_THREADS = 1u << 1,
	GIVEN_AROUND = 1u << 2,
	GIVEN_INTAKE = 1u << 3,
	GIVEN_APF = 1u << 4,
	GIVEN_POLICY = 1u << 5,
	GIVEN_BACKEND = 1u << 6,
};

/* The fault-handling options restore and migrate share. Returns 1 when `c`
 * was one of them (its GIVEN_ bit set in *given), 0 when not, -1 after
 * printing why its value is bad. */
static int engine_option(const char *cmd, int c, const char *arg, struct vmm_restore_config *cfg,
                         unsigned *given)
{
	static const char *const intakes[] = {"block", "busy", "exit"};
	static const char *const apfs[] = {"off", "user", "exitless", "kernel"};
	static const char *const policies[] = {"sync", "async", "hybrid"};
	static const char *const backends[] = {"native", "sigbus", "kick"};
	static const char opt_of[] = "LTAiPOX";
	unsigned long long v;
	int k;

	if (c > 0 && strchr(opt_of, c))
		*given |= 1u << (strchr(opt_of, c) - opt_of);
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
	case 'X':
		/* in enum vmm_exit_backend order, after AUTO */
		if (cli_choice(cmd, "--exit-backend", arg, backends, 3, &k) < 0)
			return -1;
		cfg->exit_backend = (enum vmm_exit_backend)(k + 1);
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

/* Fault-handling options that would do nothing, or cannot work, together:
 * refused as bad usage rather than silently ignored. 0 or -1 after saying. */
static int check_engine_options(const char *cmd, const struct vmm_restore_config *cfg,
                                unsigned given)
{
	if ((cfg->apf == VMM_APF_USER || cfg->apf == VMM_APF_EXITLESS) && !cfg->exit_intake) {
		fprintf(stderr,
		        "lazyvm %s: --apf %s needs --intake exit: the VMM makes a fault "
		        "asynchronous when the vCPU exits on the missing page\n",
		        cmd, cfg->apf == VMM_APF_USER ? "user" : "exitless");
		return -1;
	}
	if ((given & GIVEN_POLICY) && cfg->apf == VMM_APF_OFF) {
		fprintf(stderr,
		        "lazyvm %s: --policy chooses which faults become asynchronous: it needs "
		        "--apf user, exitless or kernel\n",
		        cmd);
		return -1;
	}
	if ((given & GIVEN_BACKEND) && !cfg->exit_intake) {
		fprintf(stderr,
		        "lazyvm %s: --exit-backend chooses how --intake exit works: it needs "
		        "--intake exit\n",
		        cmd);
		return -1;
	}
	if ((given & GIVEN_THREADS) && cfg->exit_intake) {
		fprintf(stderr,
		        "lazyvm %s: --handler-threads does nothing with --intake exit (the vCPUs "
		        "resolve their own faults)\n",
		        cmd);
		return -1;
	}
	return 0;
}

/* The restore options that only a lazy load uses. */
static int check_restore_options(const struct vmm_restore_config *cfg, unsigned given)
{
	static const struct {
		unsigned bit;
		const char *opt;
	} lazy_only[] = {
	    {GIVEN_THREADS, "--handler-threads"}, {GIVEN_AROUND, "--fault-around"},
	    {GIVEN_INTAKE, "--intake"},           {GIVEN_APF, "--apf"},
	    {GIVEN_POLICY, "--policy"},           {GIVEN_BACKEND, "--exit-backend"},
	};
	const char *load = vmm_load_name(cfg->load);
	const char *bad = NULL;

	if (cfg->load != VMM_LOAD_LAZY) {
		for (size_t i = 0; i < sizeof(lazy_only) / sizeof(lazy_only[0]); i++)
			if (given & lazy_only[i].bit)
				bad = lazy_only[i].opt;
		bad = cfg->record_ws     ? "--record-ws"
		      : cfg->prefetch_ws ? "--prefetch-ws"
		      : cfg->background  ? "--background-prefetch"
		                         : bad;
		/* Eager reads from an NBD export go through the latency wrapper. */
		if (!bad && (given & GIVEN_LATENCY) &&
		    !(cfg->load == VMM_LOAD_EAGER && cfg->source_uri))
			bad = "--source-latency";
	}
	if (bad) {
		fprintf(stderr,
		        "lazyvm restore: %s does nothing with --load %s: it works with --load "
		        "lazy%s\n",
		        bad, load,
		        !strcmp(bad, "--source-latency") ? " (or eager from --source)" : "");
		return -1;
	}
	if (cfg->load == VMM_LOAD_MMAP && cfg->source_uri) {
		fprintf(stderr, "lazyvm restore: --load mmap maps the local memory file; it cannot "
		                "read from --source\n");
		return -1;
	}
	return check_engine_options("restore", cfg, given);
}

/* An existing --record-ws that is not a regular file is refused before the
 * guest runs, not found out when the working set is written at its end. */
static int check_output_file(const char *cmd, const char *opt, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0 || S_ISREG(st.st_mode))
		return 0;
	fprintf(stderr, "lazyvm %s: %s: %s is %s, not a regular file\n", cmd, opt, path,
	        lv_file_kind(st.st_mode));
	return -1;
}

int cmd_restore(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"load", required_argument, 0, 'l'},
	    {"source-latency", required_argument, 0, 'L'},
	    {"handler-threads", required_argument, 0, 'T'},
	    {"fault-around", required_argument, 0, 'A'},
	    {"intake", required_argument, 0, 'i'},
	    {"exit-backend", required_argument, 0, 'X'},
	    {"apf", required_argument, 0, 'P'},
	    {"policy", required_argument, 0, 'O'},
	    {"source", required_argument, 0, 'U'},
	    {"record-ws", required_argument, 0, 'R'},
	    {"prefetch-ws", required_argument, 0, 'W'},
	    {"background-prefetch", no_argument, 0, 'G'},
	    {"source-timeout", required_argument, 0, 'N'},
	    {"stall-timeout", required_argument, 0, 'Z'},
	    {"json", no_argument, 0, 'j'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	struct vmm_restore_config cfg = {.fault_around = 16,
	                                 .stall_ns = CLI_STALL_DEFAULT_NS,
	                                 .apf = VMM_APF_OFF,
	                                 .policy = VMM_POLICY_HYBRID,
	                                 .load = VMM_LOAD_LAZY,
	                                 .handler_threads = 1,
	                                 .intake = ENGINE_INTAKE_BLOCK};
	const char *cmd = "restore";
	uint64_t t0 = lv_now_ns();
	bool json = false;
	struct vmm_outcome o;
	unsigned given = 0;
	int c, e;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
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
		case 'U':
			/* nbd://, nbds://, nbd+unix://, nbds+unix://, nbd+vsock:// */
			if (strncmp(optarg, "nbd", 3) || !strstr(optarg, "://")) {
				fprintf(stderr,
				        "lazyvm restore: --source: '%s' is not an NBD URI "
				        "(nbd://HOST:PORT/EXPORT, nbd+unix:///?socket=PATH)\n",
				        optarg);
				return 2;
			} else {
				char why[300];
				if (lv_check_nbd_uri(optarg, why, sizeof(why)) < 0) {
					fprintf(stderr, "lazyvm %s: --source %s\n", cmd, why);
					return 2;
				}
			}
			cfg.source_uri = optarg;
			break;
		case 'R':
			if (cli_path(cmd, "--record-ws", optarg) < 0)
				return 2;
			cfg.record_ws = optarg;
			break;
		case 'W':
			if (cli_path(cmd, "--prefetch-ws", optarg) < 0)
				return 2;
			cfg.prefetch_ws = optarg;
			break;
		case 'G': cfg.background = true; break;
		case 'j': json = true; break;
		case 'h': fputs(restore_help, stdout); return 0;
		default:
			if ((e = engine_option(cmd, c, optarg, &cfg, &given)) > 0)
				break;
			return e == 0 ? cli_bad_option(cmd, c, argv) : 2;
		}
	}
	if (optind != argc - 1) {
		fprintf(stderr,
		        optind == argc ? "lazyvm restore: the snapshot directory is missing\n"
		                       : "lazyvm restore: give one snapshot directory, not %d\n",
		        argc - optind);
		fputs("Run 'lazyvm restore --help' for the options.\n", stderr);
		return 2;
	}
	if (cli_path(cmd, "DIR", argv[optind]) < 0 || check_restore_options(&cfg, given) < 0)
		return 2;
	if (cfg.record_ws && check_output_file(cmd, "--record-ws", cfg.record_ws) < 0)
		return 1;
	cfg.dir = argv[optind];
	cfg.console_to_stderr = json;
	vmm_restore(&cfg, &o);
	cli_report(cmd, vmm_load_name(cfg.load), t0, &o, json);
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
	    {"exit-backend", required_argument, 0, 'X'},
	    {"fault-around", required_argument, 0, 'A'},
	    {"source-latency", required_argument, 0, 'L'},
	    {"apf", required_argument, 0, 'P'},
	    {"policy", required_argument, 0, 'O'},
	    {"source-timeout", required_argument, 0, 'N'},
	    {"stall-timeout", required_argument, 0, 'Z'},
	    {"json", no_argument, 0, 'j'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	struct vmm_migrate_in_config cfg = {.restore = {.fault_around = 16,
	                                                .stall_ns = CLI_STALL_DEFAULT_NS,
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
	unsigned given = 0;
	int c, e;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			if (cli_hostport(cmd, "--listen", optarg, true) < 0)
				return 2;
			cfg.listen = optarg;
			break;
		case 't':
			if (cli_duration(cmd, "--accept-timeout", optarg, &v) < 0)
				return 2;
			if (v == 0) {
				fprintf(
				    stderr,
				    "lazyvm migrate: --accept-timeout: '%s': must be more than 0 "
				    "(leave it out to wait for ever)\n",
				    optarg);
				return 2;
			}
			cfg.accept_timeout_ns = v;
			break;
		case 'j': json = true; break;
		case 'h': fputs(migrate_help, stdout); return 0;
		default:
			if ((e = engine_option(cmd, c, optarg, &cfg.restore, &given)) > 0)
				break;
			return e == 0 ? cli_bad_option(cmd, c, argv) : 2;
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
	if (cfg.restore.apf == VMM_APF_KERNEL) {
		fprintf(stderr,
		        "lazyvm migrate: --apf: 'kernel' is not off, user or exitless (KVM's "
		        "own async page faults are a restore's)\n");
		return 2;
	}
	if (check_engine_options(cmd, &cfg.restore, given) < 0)
		return 2;
	cfg.restore.console_to_stderr = json;
	cfg.arg = json ? stderr : NULL;
	vmm_migrate_in(&cfg, &o);
	/* Times count from the moment the VM state arrived, not from the wait. */
	cli_report(cmd, "lazy", o.t_ready_ns ? o.t_ready_ns - o.mig_downtime_ns : lv_now_ns(), &o,
	           json);
	return o.ok ? 0 : 1;
}
