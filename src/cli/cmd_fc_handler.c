/* lazyvm fc-handler */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cli.h"
#include "lazyvm/fc_handler.h"
#include "lazyvm/log.h"

static const char help[] =
    "Usage: lazyvm fc-handler --socket PATH --mem-file PATH|--source SOURCE [OPTIONS]\n"
    "       lazyvm fc-handler [OPTIONS] SOCKET MEMFILE\n"
    "       lazyvm fc-handler --snapshot SOCKET=SOURCE[,OPT=V...] [--snapshot ...]\n"
    "       fc-handler [OPTIONS] SOCKET MEMFILE   (lazyvm copied or linked under a name\n"
    "                                             ending in fc-handler)\n"
    "\n"
    "Serve the page faults of Firecracker VMs restored with the Uffd memory backend\n"
    "(PUT /snapshot/load with mem_backend {backend_type: \"Uffd\", backend_path: PATH})\n"
    "from a snapshot memory file. Each connection is one VM: the handler checks its\n"
    "hand-off (JSON regions + the userfaultfd) and serves its faults until the VM\n"
    "exits. Balloon-removed ranges read zeros afterwards. Many VMs at once.\n"
    "Every Firecracker release's hand-off is accepted (v1.4 to v1.16, main, and the\n"
    "secret-hiding branch without guest_memfd; docs/SNAPSHOT.md); fields it does\n"
    "not know are ignored (logged at debug level). Needs no /proc: it runs inside\n"
    "Firecracker's jail (use the static build, make static), where a VM it cannot\n"
    "prove to be the connecting process is never killed.\n"
    "\n"
    "  --socket PATH            unix socket to listen on (a stale socket is replaced,\n"
    "                           one someone listens on is not)\n"
    "  --mem-file PATH          snapshot memory file: raw guest memory, regions in order\n"
    "  --source SOURCE          the memory as a file, or from any NBD server:\n"
    "                           nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=P\n"
    "                           (nbdkit with its file, curl or S3 plugins, qemu-nbd)\n"
    "  --source-timeout DUR     NBD: end a wait without progress after DUR, then\n"
    "                           reconnect; 6 attempts (default 5s)\n"
    "  --checksums FILE         check every page against FILE (`lazyvm checksum`);\n"
    "                           a page that fails is never installed (its VM is\n"
    "                           given up on); known-zero pages are served unread\n"
    "  --record-ws FILE         write the first VM's touch order (its working set)\n"
    "                           to FILE when it leaves or the handler stops\n"
    "  --prefetch-ws FILE       install FILE's pages first, in order, for every VM\n"
    "                           (REAP); a missing, damaged or stale file only warns\n"
    "  --background-prefetch    then every other page, yielding to demand faults\n"
    "  --snapshot SOCKET=SOURCE[,checksums=F][,record-ws=F][,prefetch-ws=F]\n"
    "                           one more snapshot on its own socket (repeatable; a\n"
    "                           VM gets the memory of the socket it connects to)\n"
    "  --threads N              fault-handling threads per VM (default 1)\n"
    "  --intake block|busy      block in poll(2) for faults (default), or spin on the\n"
    "                           UFFD: lower latency, costs a CPU while faults arrive\n"
    "  --busy-idle DUR          busy intake: after DUR without a fault, block until the\n"
    "                           next one (default 10ms; 0 = spin for ever)\n"
    "  --io-uring               read a batch of faulting pages through io_uring\n"
    "  --fault-around N         install up to N pages a fault, 1 to 64 (default 16;\n"
    "                           1 = off)\n"
    "  --source-latency DUR     delay every read by DUR (stands for remote storage)\n"
    "  --populate all|fault     all: install every page of a VM in the background\n"
    "                           from its hand-off on (as Firecracker's fault_all\n"
    "                           handler does); fault: only what faults (default)\n"
    "  --on-fatal kill|report   a VM that cannot be served (bad hand-off, unreadable\n"
    "                           page): SIGKILL its process (default; Firecracker would\n"
    "                           hang for ever) when the connecting process is proven\n"
    "                           to be the VM, else only report; or always only report\n"
    "  --handshake-timeout DUR  refuse a connection that has not sent a complete\n"
    "                           hand-off within DUR (default 5s)\n"
    "  --max-vms N              refuse VMs beyond N served at once (default 256)\n"
    "  --max-pending N          refuse connections beyond N hand-offs being read at\n"
    "                           once (default 64)\n"
    "  --takeover SOCKET        take every VM and socket over from the handler that\n"
    "                           listens on SOCKET (its first socket's path +\n"
    "                           \".takeover\"), which then exits; no VM waits for\n"
    "                           more than the hand-over. Give the same snapshot\n"
    "                           options; if this fails, the old handler serves on\n"
    "  --takeover-listen PATH   where a successor may take over (default: the first\n"
    "                           socket's path + \".takeover\"; mode 0600, this uid\n"
    "                           or root only)\n"
    "  --no-takeover-listen     let no successor take over\n"
    "  --fd-store auto|on|off   systemd's fd store (FileDescriptorStoreMax=): keep\n"
    "                           the sockets and every VM's fds there, so a restarted\n"
    "                           service serves on (default auto: when NOTIFY_SOCKET\n"
    "                           is set; on: fail without it)\n"
    "  --log-level LEVEL        error, warning, info (default) or debug\n"
    "  -h, --help               this text\n"
    "\n"
    "  --metrics-prom FILE      the metrics in Prometheus text format, per VM and in\n"
    "                           total, rewritten every second and at exit\n"
    "\n"
    "Metrics (JSON, one line) go to stdout on SIGUSR1 and at exit; logs go to stderr.\n"
    "SIGTERM or SIGINT stops the handler: VMs still attached are named, since they\n"
    "will hang at their next fault (with the fd store, they wait for the next\n"
    "instance instead).\n"
    "Exit status: 0 after a clean stop, 1 on a start-up or handler-wide error, 2 on\n"
    "bad usage.\n";

static int parse_log_level(const char *s)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};

	for (int i = 0; i < 4; i++)
		if (!strcmp(s, names[i]))
			return i;
	return -1;
}

/* SOCKET=SOURCE[,checksums=F][,record-ws=F][,prefetch-ws=F], cut in place. */
static int parse_snapshot(char *spec, struct fc_snapshot_config *sc)
{
	static const char *const keys[] = {"checksums=", "record-ws=", "prefetch-ws="};
	char *eq = strchr(spec, '='), *opt;

	*sc = (struct fc_snapshot_config){0};
	if (!eq || eq == spec || !eq[1]) {
		fprintf(stderr,
		        "lazyvm fc-handler: --snapshot '%s': want SOCKET=SOURCE[,OPT=V...]\n",
		        spec);
		return -1;
	}
	*eq = '\0';
	sc->socket_path = spec;
	sc->source = eq + 1;
	for (opt = strchr(sc->source, ','); opt; opt = strchr(opt + 1, ',')) {
		*opt = '\0';
		const char **dst[] = {&sc->checksums, &sc->record_ws, &sc->prefetch_ws};
		size_t k;

		for (k = 0; k < 3; k++)
			if (!strncmp(opt + 1, keys[k], strlen(keys[k])) &&
			    opt[1 + strlen(keys[k])]) {
				*dst[k] = opt + 1 + strlen(keys[k]);
				break;
			}
		if (k == 3) {
			fprintf(
			    stderr,
			    "lazyvm fc-handler: --snapshot %s: unknown option '%s' (checksums=, "
			    "record-ws=, prefetch-ws=)\n",
			    sc->socket_path, opt + 1);
			return -1;
		}
	}
	return 0;
}

int cmd_fc_handler(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, 0, 's'},
	    {"mem-file", required_argument, 0, 'm'},
	    {"threads", required_argument, 0, 't'},
	    {"intake", required_argument, 0, 'i'},
	    {"busy-idle", required_argument, 0, 'b'},
	    {"fault-around", required_argument, 0, 'A'},
	    {"io-uring", no_argument, 0, 'u'},
	    {"source-latency", required_argument, 0, 'l'},
	    {"source", required_argument, 0, 'S'},
	    {"source-timeout", required_argument, 0, 'O'},
	    {"checksums", required_argument, 0, 'c'},
	    {"record-ws", required_argument, 0, 'R'},
	    {"prefetch-ws", required_argument, 0, 'W'},
	    {"background-prefetch", no_argument, 0, 'G'},
	    {"snapshot", required_argument, 0, 'n'},
	    {"metrics-prom", required_argument, 0, 'X'},
	    {"populate", required_argument, 0, 'p'},
	    {"on-fatal", required_argument, 0, 'f'},
	    {"handshake-timeout", required_argument, 0, 'T'},
	    {"max-vms", required_argument, 0, 'M'},
	    {"max-pending", required_argument, 0, 'P'},
	    {"log-level", required_argument, 0, 'L'},
	    {"takeover", required_argument, 0, 'K'},
	    {"takeover-listen", required_argument, 0, 'k'},
	    {"no-takeover-listen", no_argument, 0, 'N'},
	    {"fd-store", required_argument, 0, 'F'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	struct fc_handler_config cfg = {
	    .threads_per_vm = 1,
	    .intake = ENGINE_INTAKE_BLOCK,
	    .busy_idle_ns = 10ull * 1000 * 1000,
	    .on_fatal = FC_ON_FATAL_KILL,
	    .handshake_timeout_ns = 5ull * 1000 * 1000 * 1000,
	    .max_vms = 256,
	    .max_pending = 64,
	    .fault_around = 16,
	    .signal_fd = -1,
	    .metrics_out = stdout,
	    .source_timeout_ns = 5ull * 1000 * 1000 * 1000,
	    .nsnaps = 1,
	};
	struct fc_snapshot_config *first = &cfg.snaps[0];
	const char *cmd = "fc-handler";
	unsigned long long v;
	struct fc_handler *h;
	bool busy_idle_given = false;
	sigset_t sigs;
	int c, r;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 's': first->socket_path = optarg; break;
		case 'm':
		case 'S':
			if (first->source) {
				fprintf(stderr,
				        "lazyvm fc-handler: --mem-file and --source name the same "
				        "thing; give one\n");
				return 2;
			}
			first->source = optarg;
			break;
		case 'O':
			if (cli_duration(cmd, "--source-timeout", optarg, &v) < 0)
				return 2;
			if (v == 0) {
				fprintf(
				    stderr,
				    "lazyvm fc-handler: --source-timeout: must be more than 0\n");
				return 2;
			}
			cfg.source_timeout_ns = v;
			break;
		case 'c': first->checksums = optarg; break;
		case 'R': first->record_ws = optarg; break;
		case 'W': first->prefetch_ws = optarg; break;
		case 'G': cfg.background_prefetch = true; break;
		case 'X': cfg.metrics_prom = optarg; break;
		case 'n':
			if (cfg.nsnaps == FC_MAX_SNAPSHOTS) {
				fprintf(stderr,
				        "lazyvm fc-handler: --snapshot: at most %d snapshots\n",
				        FC_MAX_SNAPSHOTS);
				return 2;
			}
			if (parse_snapshot(optarg, &cfg.snaps[cfg.nsnaps]) < 0)
				return 2;
			cfg.nsnaps++;
			break;
		case 't':
			if (cli_uint(cmd, "--threads", optarg, 1, 64, &cfg.threads_per_vm) < 0)
				return 2;
			break;
		case 'i': {
			static const char *const intakes[] = {"block", "busy"};
			int k;
			if (CLI_CHOICE(cmd, "--intake", optarg, intakes, &k) < 0)
				return 2;
			cfg.intake = k ? ENGINE_INTAKE_BUSY : ENGINE_INTAKE_BLOCK;
			break;
		}
		case 'b':
			if (cli_duration(cmd, "--busy-idle", optarg, &v) < 0)
				return 2;
			cfg.busy_idle_ns = v;
			break;
		case 'u': cfg.io_uring = 1; break;
		case 'A':
			if (cli_uint(cmd, "--fault-around", optarg, 1, 64, &cfg.fault_around) < 0)
				return 2;
			break;
		case 'l':
			if (cli_duration(cmd, "--source-latency", optarg, &v) < 0)
				return 2;
			cfg.source_latency_ns = v;
			break;
		case 'p': {
			static const char *const modes[] = {"fault", "all"};
			int k;
			if (CLI_CHOICE(cmd, "--populate", optarg, modes, &k) < 0)
				return 2;
			cfg.populate_all = k == 1;
			break;
		}
		case 'f': {
			static const char *const policies[] = {"kill", "report"};
			int k;
			if (CLI_CHOICE(cmd, "--on-fatal", optarg, policies, &k) < 0)
				return 2;
			cfg.on_fatal = k ? FC_ON_FATAL_REPORT : FC_ON_FATAL_KILL;
			break;
		}
		case 'T':
			if (cli_duration(cmd, "--handshake-timeout", optarg, &v) < 0)
				return 2;
			if (v == 0) {
				fprintf(
				    stderr,
				    "lazyvm fc-handler: --handshake-timeout: '%s': must be more "
				    "than 0\n",
				    optarg);
				return 2;
			}
			cfg.handshake_timeout_ns = v;
			break;
		case 'M':
			if (cli_uint(cmd, "--max-vms", optarg, 1, 100000, &cfg.max_vms) < 0)
				return 2;
			break;
		case 'P':
			if (cli_uint(cmd, "--max-pending", optarg, 1, 100000, &cfg.max_pending) < 0)
				return 2;
			break;
		case 'L':
			if ((r = parse_log_level(optarg)) < 0) {
				fprintf(stderr,
				        "lazyvm fc-handler: --log-level: '%s' is not error, "
				        "warning, info or debug\n",
				        optarg);
				return 2;
			}
			lv_log_set_level((enum lv_log_level)r);
			break;
		case 'K':
			if (cli_path(cmd, "--takeover", optarg) < 0)
				return 2;
			cfg.takeover_from = optarg;
			break;
		case 'k':
			if (cli_path(cmd, "--takeover-listen", optarg) < 0)
				return 2;
			cfg.takeover_listen = optarg;
			break;
		case 'N': cfg.no_takeover_listen = true; break;
		case 'F': {
			/* in enum fc_fd_store order */
			static const char *const modes[] = {"auto", "on", "off"};
			int k;
			if (CLI_CHOICE(cmd, "--fd-store", optarg, modes, &k) < 0)
				return 2;
			cfg.fd_store = (enum fc_fd_store)k;
			break;
		}
		case 'h': fputs(help, stdout); return 0;
		default: return cli_bad_option(cmd, c, argv);
		}
		busy_idle_given |= c == 'b';
	}
	/* Firecracker's positional convention: SOCKET MEMFILE, as its example
	 * handlers and its test harness (inside the jail) run them. */
	if (optind < argc && !first->socket_path)
		first->socket_path = argv[optind++];
	if (optind < argc && !first->source)
		first->source = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "lazyvm fc-handler: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	/* The first snapshot is the one --socket and --mem-file name; with only
	 * --snapshot options, the list starts at the first of those. */
	bool have_first = first->socket_path || first->source || first->checksums ||
	                  first->record_ws || first->prefetch_ws;
	if (!have_first && cfg.nsnaps > 1) {
		memmove(&cfg.snaps[0], &cfg.snaps[1], (cfg.nsnaps - 1) * sizeof(cfg.snaps[0]));
		cfg.nsnaps--;
	} else if (!first->socket_path || !first->source) {
		fprintf(stderr,
		        "lazyvm fc-handler: %s is required\n"
		        "Run 'lazyvm fc-handler --help' for the options.\n",
		        !first->socket_path ? "--socket PATH" : "--mem-file PATH (or --source)");
		return 2;
	}
	for (unsigned i = 0; i < cfg.nsnaps; i++)
		for (unsigned j = 0; j < i; j++)
			if (!strcmp(cfg.snaps[i].socket_path, cfg.snaps[j].socket_path)) {
				fprintf(stderr, "lazyvm fc-handler: socket %s is given twice\n",
				        cfg.snaps[i].socket_path);
				return 2;
			}
	if (cfg.populate_all && cfg.background_prefetch) {
		fprintf(stderr, "lazyvm fc-handler: --populate all already installs every page; "
		                "--background-prefetch would add nothing\n");
		return 2;
	}
	if (cfg.no_takeover_listen && cfg.takeover_listen) {
		fprintf(stderr, "lazyvm fc-handler: --takeover-listen and --no-takeover-listen "
		                "contradict each other\n");
		return 2;
	}
	if (cfg.takeover_from && cfg.fd_store == FC_FD_STORE_ON) {
		fprintf(stderr,
		        "lazyvm fc-handler: --takeover and --fd-store on: the VMs come from "
		        "one or the other\n");
		return 2;
	}
	if (busy_idle_given && cfg.intake != ENGINE_INTAKE_BUSY) {
		fprintf(stderr,
		        "lazyvm fc-handler: --busy-idle does nothing without --intake busy\n");
		return 2;
	}
	/* Signals arrive through a signalfd in the event loop; the handler threads
	 * (created later) inherit the blocked mask and never see them. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	sigprocmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	cfg.signal_fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (cfg.signal_fd < 0) {
		perror("lazyvm fc-handler: signalfd");
		return 1;
	}
	r = fc_handler_create(&cfg, &h);
	if (r < 0) {
		close(cfg.signal_fd);
		return 1;
	}
	r = fc_handler_run(h);
	lv_info(fc_handler_handed_over(h) ? "handed over: exiting" : "stopping");
	fc_handler_write_metrics(h, stdout);
	fc_handler_write_prom(h);
	fc_handler_destroy(h);
	close(cfg.signal_fd);
	return r < 0 ? 1 : 0;
}
