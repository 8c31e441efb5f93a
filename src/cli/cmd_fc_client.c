/* lazyvm fc-client */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <stdint.h>
#include <unistd.h>

#include "cli.h"
#include "lazyvm/fc_client.h"

static const char help[] =
    "Usage: lazyvm fc-client --socket PATH --mem-file PATH [OPTIONS]\n"
    "\n"
    "Play Firecracker's part of the UFFD hand-off against a page-fault handler, the\n"
    "way the chosen release does it (read from its source; docs/SNAPSHOT.md): make\n"
    "and register the userfaultfd, map guest memory, send the JSON regions and the\n"
    "fds over PATH, then do what that release does with the socket. Then touch\n"
    "every page from several threads in random order and compare every byte with\n"
    "the memory file, and let a balloon take back the second quarter of each region\n"
    "(as that release's balloon does), which must then read zeros.\n"
    "\n"
    "  --socket PATH        the handler's socket\n"
    "  --mem-file PATH      the memory file the handler serves (the guest memory is\n"
    "                       as large as the file)\n"
    "  --fc-version V       the release played (default 1.12):\n"
    "                       1.4   userfaultfd(2) user-mode only; base_host_virt_addr,\n"
    "                             size, offset; EVENT_REMOVE only with --balloon;\n"
    "                             socket closed after the hand-off\n"
    "                       1.7   /dev/userfaultfd; + page_size_kib (v1.5-v1.11)\n"
    "                       1.12  + page_size; EVENT_REMOVE always; socket kept open\n"
    "                             (v1.12-v1.16)\n"
    "                       main  as 1.12, guest memory 2 MiB-aligned, MADV_HUGEPAGE\n"
    "                       secret-hiding  + gpa_start, is_guest_memfd; then the\n"
    "                             \"no_exitless_apf\" message\n"
    "  --balloon            the snapshot has a balloon (before v1.12 the only case\n"
    "                       EVENT_REMOVE is asked for)\n"
    "  --hotplug            v1.14+ memory hotplug: one more region, the hotplug area,\n"
    "                       with an unplugged slot made PROT_NONE after the hand-off\n"
    "  --guest-memfd        secret-hiding: a guest_memfd VM (is_guest_memfd, three\n"
    "                       fds: memfds stand in for the guest_memfd and bitmap)\n"
    "  --unknown-fields     add fields no release sends (a newer one might)\n"
    "  --exitless-apf N     secret-hiding: say exitless_apf:N with 3N fds (eventfds\n"
    "                       stand in for the vCPU fds) instead of no_exitless_apf\n"
    "  --touch-percent P    the guest uses P% of its memory (the same pages every run,\n"
    "                       whatever --seed: a function's working set); default 100\n"
    "  --wait-resident      wait until the handler has installed every page (its\n"
    "                       --populate all) before touching: a fully resident VM\n"
    "  --fault-request OFF  secret-hiding's older JSON protocol: ask for the page at\n"
    "                       memory file offset OFF and check it is resident when the\n"
    "                       reply comes, before touching anything\n"
    "  --regions N          guest memory regions, 1 to 15 (default 3)\n"
    "  --page-size SIZE     4k (default) or 2M (hugetlbfs; needs free huge pages)\n"
    "  --threads N          touching threads (default 4)\n"
    "  --seed N             random order seed (default 1)\n"
    "  --no-remove-check    skip the balloon check\n"
    "  --remove-first       the balloon takes its quarters back before the touches\n"
    "                       (MADV_DONTNEED), which must then read zeros there\n"
    "  --bad MODE           send a broken hand-off and print the handler's reply:\n"
    "                       no-fd, two-fds, not-uffd, garbage, truncated, oversized,\n"
    "                       overlap, beyond-file, unaligned, wrong-type, silent,\n"
    "                       blocking (no O_NONBLOCK), event-fork (EVENT_FORK feature)\n"
    "  --connector WHO      who connects and sends: self (default), child (a forked\n"
    "                       child that stays: a bystander), child-exit (it exits)\n"
    "  --clear-nonblock     once a page came in, clear O_NONBLOCK on the\n"
    "                       userfaultfd (shared with the handler), then go on\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 every byte verified; 1 a mismatch or an error; 2 bad usage;\n"
    "3 (with --bad, or --guest-memfd) the handler refused the hand-off with a reply.\n";

int cmd_fc_client(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"socket", required_argument, 0, 's'},
	    {"mem-file", required_argument, 0, 'm'},
	    {"regions", required_argument, 0, 'r'},
	    {"page-size", required_argument, 0, 'p'},
	    {"threads", required_argument, 0, 't'},
	    {"seed", required_argument, 0, 'S'},
	    {"fc-version", required_argument, 0, 'V'},
	    {"balloon", no_argument, 0, 'B'},
	    {"hotplug", no_argument, 0, 'H'},
	    {"guest-memfd", no_argument, 0, 'G'},
	    {"unknown-fields", no_argument, 0, 'U'},
	    {"exitless-apf", required_argument, 0, 'X'},
	    {"touch-percent", required_argument, 0, 'P'},
	    {"wait-resident", no_argument, 0, 'w'},
	    {"fault-request", required_argument, 0, 'Q'},
	    {"no-remove-check", no_argument, 0, 'n'},
	    {"remove-first", no_argument, 0, 'E'},
	    {"bad", required_argument, 0, 'b'},
	    {"connector", required_argument, 0, 'c'},
	    {"clear-nonblock", no_argument, 0, 'C'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	const char *cmd = "fc-client", *sock = NULL, *mem = NULL;
	unsigned regions = 3, threads = 4, seed = 1;
	unsigned long long page = 4096;
	struct fc_vm_config vc = {.version = FC_V1_12};
	unsigned long long fault_off = 0;
	bool fault_req = false, wait_resident = false;
	enum fc_bad bad = FC_BAD_NONE;
	bool check_remove = true, clear_nonblock = false;
	enum fc_connector connector = FC_CONNECTOR_SELF;
	struct fc_touch_result res;
	struct fc_vm vm;
	char why[512] = "";
	int c, r;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (cli_path(cmd, "--socket", optarg) < 0)
				return 2;
			sock = optarg;
			break;
		case 'm':
			if (cli_path(cmd, "--mem-file", optarg) < 0)
				return 2;
			mem = optarg;
			break;
		case 'r':
			if (cli_uint(cmd, "--regions", optarg, 1, 15, &regions) < 0)
				return 2;
			break;
		case 'p':
			if (cli_size(cmd, "--page-size", optarg, &page) < 0)
				return 2;
			if (page != 4096 && page != (2ull << 20)) {
				fprintf(stderr,
				        "lazyvm fc-client: --page-size: '%s' is not 4k or 2M\n",
				        optarg);
				return 2;
			}
			break;
		case 't':
			if (cli_uint(cmd, "--threads", optarg, 1, 64, &threads) < 0)
				return 2;
			break;
		case 'S':
			if (cli_uint(cmd, "--seed", optarg, 0, 0x7fffffff, &seed) < 0)
				return 2;
			break;
		case 'V':
			if (fc_version_parse(optarg, &vc.version) < 0) {
				fprintf(
				    stderr,
				    "lazyvm fc-client: --fc-version: '%s' is not 1.4, 1.7, 1.12, "
				    "main or secret-hiding\n",
				    optarg);
				return 2;
			}
			break;
		case 'B': vc.balloon = true; break;
		case 'H': vc.hotplug = true; break;
		case 'G': vc.guest_memfd = true; break;
		case 'U': vc.unknown_fields = true; break;
		case 'X':
			if (cli_uint(cmd, "--exitless-apf", optarg, 1, 32, &vc.exitless_apf) < 0)
				return 2;
			break;
		case 'P':
			if (cli_uint(cmd, "--touch-percent", optarg, 1, 100, &vc.touch_percent) < 0)
				return 2;
			break;
		case 'w': wait_resident = true; break;
		case 'Q':
			if (cli_size(cmd, "--fault-request", optarg, &fault_off) < 0)
				return 2;
			fault_req = true;
			break;
		case 'n': check_remove = false; break;
		case 'E': vc.remove_first = true; break;
		case 'b':
			if (fc_bad_parse(optarg, &bad) < 0) {
				fprintf(stderr,
				        "lazyvm fc-client: --bad: unknown mode '%s' (see --help)\n",
				        optarg);
				return 2;
			}
			break;
		case 'c': {
			/* in enum fc_connector order */
			static const char *const connectors[] = {"self", "child", "child-exit"};
			int k;
			if (CLI_CHOICE(cmd, "--connector", optarg, connectors, &k) < 0)
				return 2;
			connector = (enum fc_connector)k;
			break;
		}
		case 'C': clear_nonblock = true; break;
		case 'h': fputs(help, stdout); return 0;
		default: return cli_bad_option(cmd, c, argv);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lazyvm fc-client: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!sock || !mem) {
		fprintf(stderr,
		        "lazyvm fc-client: %s is required\n"
		        "Run 'lazyvm fc-client --help' for the options.\n",
		        !sock ? "--socket PATH" : "--mem-file PATH");
		return 2;
	}
	if (vc.hotplug && (vc.version < FC_V1_12 || page != 4096)) {
		fprintf(stderr, "lazyvm fc-client: --hotplug: memory hotplug is Firecracker v1.14 "
		                "and later (--fc-version 1.12, main or secret-hiding), 4k pages\n");
		return 2;
	}
	if (vc.remove_first && !check_remove) {
		fprintf(stderr, "lazyvm fc-client: --remove-first and --no-remove-check contradict "
		                "each other\n");
		return 2;
	}
	if (vc.guest_memfd && vc.version != FC_V_SECRET_HIDING) {
		fprintf(stderr,
		        "lazyvm fc-client: --guest-memfd needs --fc-version secret-hiding\n");
		return 2;
	}
	vc.mem_file = mem;
	vc.nregions = regions;
	vc.page_size = page;
	r = fc_vm_create(&vm, &vc, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "lazyvm fc-client: %s\n", why);
		return 1;
	}
	vm.connector = connector;
	r = fc_vm_handoff(&vm, sock, bad, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "lazyvm fc-client: %s\n", why);
		fc_vm_destroy(&vm);
		return 1;
	}
	if (vm.child) {
		printf("fc-client: hand-off sent by child process %d; the VM is process %d\n",
		       (int)vm.child, (int)getpid());
		fflush(stdout);
	}
	if (clear_nonblock) {
		/* Once a page came in from the engine, so that the handler has taken
		 * the userfaultfd as it was handed over and is serving it: the last
		 * page, which the handler's proof of ownership never installs. */
		const struct fc_region *last = &vm.regions[vm.nregions - 1];
		volatile unsigned char b =
		    *(volatile unsigned char *)(uintptr_t)(last->base_host_virt_addr + last->size -
		                                           vm.page_size);
		(void)b;
		r = fc_vm_clear_nonblock(&vm);
		if (r < 0) {
			fprintf(stderr, "lazyvm fc-client: clearing O_NONBLOCK: %s\n",
			        strerror(-r));
			fc_vm_destroy(&vm);
			return 1;
		}
		printf("fc-client: cleared O_NONBLOCK on the userfaultfd the handler reads\n");
	}
	printf(
	    "fc-client: Firecracker %s: userfaultfd from %s, features 0x%llx, %u region(s)%s%s\n",
	    fc_version_name(vc.version), vm.uffd_how, (unsigned long long)vm.features, vm.nregions,
	    vm.nholes ? ", an unplugged slot (PROT_NONE)" : "",
	    vm.sock >= 0 ? ", socket kept open" : ", socket closed");
	fflush(stdout);
	if (bad != FC_BAD_NONE || vc.guest_memfd) {
		char reply[512];
		int n = fc_vm_read_reply(&vm, reply, sizeof(reply), 20000);

		fc_vm_destroy(&vm);
		if (n > 0 && strstr(reply, "handshake rejected")) {
			printf("fc-client: --%s%s: handler replied: %s",
			       bad ? "bad " : "guest-memfd", bad ? fc_bad_name(bad) : "", reply);
			return 3;
		}
		printf("fc-client: --%s%s: no refusal from the handler (%s)\n",
		       bad ? "bad " : "guest-memfd", bad ? fc_bad_name(bad) : "",
		       n > 0 ? reply : "connection closed or timed out without a reply");
		return 1;
	}
	if (fault_req) {
		/* secret-hiding's older JSON protocol: the page must be in when the
		 * reply comes, without this process touching it. */
		char reply[256];
		int n = fc_vm_fault_request(&vm, fault_off, reply, sizeof(reply), 10000);
		bool in = n > 0 && fc_vm_page_resident(&vm, fault_off);

		printf("fc-client: fault request for offset %llu: %s%s\n", fault_off,
		       n > 0 ? reply : "no reply",
		       in ? "; the page is resident" : "; NOT RESIDENT");
		if (!in) {
			fc_vm_destroy(&vm);
			return 1;
		}
	}
	if (wait_resident) {
		double waited = 0;

		if (fc_vm_wait_resident(&vm, 120ull * 1000 * 1000 * 1000, &waited) < 0) {
			fprintf(stderr,
			        "lazyvm fc-client: not every page was resident after 120 s\n");
			fc_vm_destroy(&vm);
			return 1;
		}
		printf("fc-client: every page resident after %.3f s, before any touch\n", waited);
	}
	r = fc_vm_touch_verify(&vm, threads, seed, check_remove, &res);
	if (r < 0) {
		fprintf(stderr, "lazyvm fc-client: touching memory: %s\n", strerror(-r));
		fc_vm_destroy(&vm);
		return 1;
	}
	uint64_t used = res.touches / threads;
	printf(
	    "fc-client: %u region(s), %llu MiB in %llu-byte pages, %u thread(s): %llu page touches "
	    "in %.3f s (%.0f pages/s first-touch rate)\n",
	    vm.nregions, (unsigned long long)(vm.size >> 20), page, threads,
	    (unsigned long long)res.touches, res.touch_s, (double)used / res.touch_s);
	printf("fc-client: first touch of a page: p50 %.1f us, p99 %.1f us, max %.1f us\n",
	       res.touch_p50_ns / 1e3, res.touch_p99_ns / 1e3, res.touch_max_ns / 1e3);
	printf("fc-client: contents: %s (%llu mismatching pages)\n",
	       res.mismatches ? "MISMATCH against the memory file"
	                      : "every byte matches the memory file",
	       (unsigned long long)res.mismatches);
	if (res.hole_pages)
		printf("fc-client: %llu pages of the unplugged slot left alone (PROT_NONE)\n",
		       (unsigned long long)res.hole_pages);
	if (check_remove && res.removed_pages)
		printf("fc-client: balloon: %llu pages removed by %s, %s\n",
		       (unsigned long long)res.removed_pages, res.remove_how,
		       res.nonzero ? "SOME DO NOT READ ZEROS" : "all read zeros afterwards");
	else if (check_remove)
		printf("fc-client: balloon: %s\n", res.remove_how);
	fc_vm_destroy(&vm);
	return res.mismatches || res.nonzero ? 1 : 0;
}
