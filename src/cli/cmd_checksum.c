/* lazyvm checksum */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "lazyvm/csumfile.h"
#include "lazyvm/fdio.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"

static const char help[] =
    "Usage: lazyvm checksum MEMFILE [-o FILE]\n"
    "       lazyvm checksum --from-snapshot DIR [-o FILE]\n"
    "\n"
    "Write the checksum file fc-handler checks a memory file with (--checksums):\n"
    "a CRC-32C of every 4 KiB page and a map of the pages that are zero (holes,\n"
    "found with SEEK_HOLE and not read, and pages of zeros), so that no page is\n"
    "ever installed with bytes that are not the snapshot's and zero pages are\n"
    "served without a read. docs/SNAPSHOT.md has the format.\n"
    "\n"
    "  -o, --output FILE        where to write it (default MEMFILE.lvsum, or\n"
    "                           DIR/memory.lvsum)\n"
    "  --from-snapshot DIR      take the checksums and the zero-page map of a lazyvm\n"
    "                           snapshot (checked against its state file) instead of\n"
    "                           reading the memory\n"
    "  -h, --help               this text\n"
    "\n"
    "Progress goes to stderr once a second; the summary to stdout.\n"
    "Exit status: 0 written; 1 an error (named); 2 bad usage.\n";

static void progress(uint64_t done, uint64_t total)
{
	fprintf(stderr, "lazyvm checksum: %llu of %llu MiB (%.0f%%)\n",
	        (unsigned long long)(done >> 20), (unsigned long long)(total >> 20),
	        100.0 * (double)done / (double)total);
}

static int from_memfile(const char *mem, const char *out)
{
	struct csumfile_scan st;
	struct stat sb;
	char why[4200];
	uint64_t t0 = lv_now_ns(), npages;
	uint32_t *crcs;
	uint64_t *zero;
	int fd, r;

	if ((fd = lv_open_input(mem, 0, &sb, why, sizeof(why))) < 0) {
		fprintf(stderr, "lazyvm checksum: %s\n", why);
		return 1;
	}
	if (sb.st_size <= 0 || sb.st_size % CSUMFILE_PAGE_SIZE) {
		fprintf(stderr,
		        "lazyvm checksum: %s is %lld bytes, not a whole number of 4 KiB pages\n",
		        mem, (long long)sb.st_size);
		close(fd);
		return 1;
	}
	npages = (uint64_t)sb.st_size / CSUMFILE_PAGE_SIZE;
	crcs = malloc(npages * 4);
	zero = calloc((npages + 63) / 64, 8);
	if (!crcs || !zero) {
		fprintf(stderr, "lazyvm checksum: out of memory for %llu pages\n",
		        (unsigned long long)npages);
		close(fd);
		return 1;
	}
	r = csumfile_scan(fd, (uint64_t)sb.st_size, crcs, zero, &st, progress, why, sizeof(why));
	close(fd);
	if (r == 0)
		r = csumfile_write(out, (uint64_t)sb.st_size, crcs, zero, why, sizeof(why));
	free(crcs);
	free(zero);
	if (r < 0) {
		fprintf(stderr, "lazyvm checksum: %s: %s\n", mem, why);
		return 1;
	}
	printf("checksum: %s: %llu pages (%llu MiB), %llu zero (%llu in holes, not read), %llu MiB "
	       "read in %.2f s -> %s\n",
	       mem, (unsigned long long)st.pages, (unsigned long long)(npages >> 8),
	       (unsigned long long)st.zero_pages, (unsigned long long)st.hole_pages,
	       (unsigned long long)(st.bytes_read >> 20), (double)(lv_now_ns() - t0) / 1e9, out);
	return 0;
}

int cmd_checksum(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"output", required_argument, 0, 'o'},
	    {"from-snapshot", required_argument, 0, 'S'},
	    {"help", no_argument, 0, 'h'},
	    {0, 0, 0, 0},
	};
	const char *cmd = "checksum", *out = NULL, *snap = NULL, *mem = NULL;
	char def[4200], why[4200];
	int c;

	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
		switch (c) {
		case 'o':
			if (cli_path(cmd, "--output", optarg) < 0)
				return 2;
			out = optarg;
			break;
		case 'S':
			if (cli_path(cmd, "--from-snapshot", optarg) < 0)
				return 2;
			snap = optarg;
			break;
		case 'h': fputs(help, stdout); return 0;
		default: return cli_bad_option(cmd, c, argv);
		}
	}
	if (optind < argc)
		mem = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "lazyvm checksum: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (!mem == !snap) {
		fprintf(stderr,
		        "lazyvm checksum: give a MEMFILE or --from-snapshot DIR (one of them)\n"
		        "Run 'lazyvm checksum --help' for the options.\n");
		return 2;
	}
	if (!out) {
		snprintf(def, sizeof(def), snap ? "%s/memory.lvsum" : "%s.lvsum",
		         snap ? snap : mem);
		out = def;
	}
	if (mem)
		return from_memfile(mem, out);
	uint64_t size = 0, zero = 0;
	if (vmm_snapshot_checksums(snap, out, &size, &zero, why, sizeof(why)) < 0) {
		fprintf(stderr, "lazyvm checksum: %s\n", why);
		return 1;
	}
	printf("checksum: snapshot %s: %llu pages (%llu MiB), %llu zero -> %s\n", snap,
	       (unsigned long long)(size / CSUMFILE_PAGE_SIZE), (unsigned long long)(size >> 20),
	       (unsigned long long)zero, out);
	return 0;
}
