/* Checksum files (lazyvm checksum): a scan that finds holes without reading
 * them, the file written and read back, every kind of damage named, and a
 * source that refuses a page whose bytes are not the ones checksummed. */
#include <fcntl.h>
#include <sys/stat.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/csumfile.h"
#include "lazyvm/source.h"
#include "test.h"

#define PAGES 3000u /* three chunks of page CRCs, the last one short */

struct files {
	char mem[64], sum[64];
	uint64_t size;
};

/* A sparse memory file: a hole, data with one page of zeros in it, a hole. */
static void make_mem(struct files *f)
{
	unsigned char page[4096];
	int fd;

	strcpy(f->mem, "/tmp/lazyvm-test-csum-XXXXXX");
	fd = mkstemp(f->mem);
	CHECK(fd >= 0);
	f->size = (uint64_t)PAGES * 4096;
	CHECK_OK(ftruncate(fd, (off_t)f->size));
	for (unsigned p = 1024; p < 2048; p++) {
		for (unsigned i = 0; i < sizeof(page); i++)
			page[i] = (unsigned char)(p * 7 + i);
		if (p == 1500)
			memset(page, 0, sizeof(page)); /* data, but zeros */
		CHECK_EQ(pwrite(fd, page, sizeof(page), (off_t)p * 4096), 4096);
	}
	close(fd);
	snprintf(f->sum, sizeof(f->sum), "%s.lvsum", f->mem);
}

static void scan_and_write(struct files *f, struct csumfile_scan *st)
{
	uint32_t *crcs = malloc(PAGES * 4);
	uint64_t *zero = calloc((PAGES + 63) / 64, 8);
	char why[256] = "";
	int fd = open(f->mem, O_RDONLY);

	CHECK(crcs && zero && fd >= 0);
	CHECK_OK(csumfile_scan(fd, f->size, crcs, zero, st, NULL, why, sizeof(why)));
	close(fd);
	CHECK_OK(csumfile_write(f->sum, f->size, crcs, zero, why, sizeof(why)));
	free(crcs);
	free(zero);
}

static void cleanup(struct files *f)
{
	unlink(f->mem);
	unlink(f->sum);
}

static void test_scan_write_open(void)
{
	struct files f;
	struct csumfile_scan st;
	struct csumfile *cf;
	char why[256];

	make_mem(&f);
	scan_and_write(&f, &st);
	CHECK_EQ(st.pages, PAGES);
	CHECK_EQ(st.zero_pages, PAGES - 1024 + 1);
	/* tmpfs and ext4 both report the holes: nothing there is read. */
	CHECK_EQ(st.hole_pages, PAGES - 1024);
	CHECK_EQ(st.bytes_read, 1024 * 4096);
	CHECK_OK(csumfile_open(f.sum, f.size, &cf, why, sizeof(why)));
	CHECK_EQ(cf->zero_pages, PAGES - 1024 + 1);
	CHECK(csumfile_is_zero(cf, 0) && csumfile_is_zero(cf, 1500) && csumfile_is_zero(cf, 2999));
	CHECK(!csumfile_is_zero(cf, 1024) && !csumfile_is_zero(cf, 2047));
	CHECK(!csumfile_is_zero(cf, PAGES)); /* beyond the end: never zero */
	CHECK_EQ(cf->nchunks, 3);
	csumfile_close(cf);
	cleanup(&f);
}

/* Every page read through the checked source is the memory file's; one byte
 * changed in the memory file fails that page's read, and only that page's. */
static void test_checked_reads(void)
{
	struct files f;
	struct csumfile_scan st;
	struct csumfile *cf;
	struct source *file, *src;
	unsigned char buf[4096];
	char why[256];
	int fd;

	make_mem(&f);
	scan_and_write(&f, &st);
	CHECK_OK(csumfile_open(f.sum, f.size, &cf, why, sizeof(why)));
	CHECK_OK(source_file_open(f.mem, 0, &file, NULL, 0));
	CHECK_OK(csumfile_wrap(cf, file, &src));
	for (unsigned p = 0; p < PAGES; p += 7)
		CHECK_OK(source_read(src, buf, (uint64_t)p * 4096, 4096));
	fd = open(f.mem, O_WRONLY);
	CHECK(fd >= 0);
	CHECK_EQ(pwrite(fd, "X", 1, 1800 * 4096 + 99), 1);
	CHECK_EQ(pwrite(fd, "Y", 1, 2500 * 4096), 1); /* into a hole, which was zeros */
	close(fd);
	CHECK_EQ(source_read(src, buf, 1800 * 4096, 4096), -EBADMSG);
	CHECK_EQ(source_read(src, buf, 2500 * 4096, 4096), -EBADMSG);
	CHECK_OK(source_read(src, buf, 1801 * 4096, 4096));
	source_destroy(src);
	csumfile_close(cf);
	cleanup(&f);
}

/* Flips one byte at `at` in the checksum file, expects open to fail naming `msg`. */
static void damaged(struct files *f, off_t at, uint64_t size, const char *msg)
{
	struct csumfile *cf = NULL;
	char why[512] = "";
	unsigned char b;
	int fd = open(f->sum, O_RDWR);

	CHECK(fd >= 0);
	if (at >= 0) {
		CHECK_EQ(pread(fd, &b, 1, at), 1);
		b ^= 0x40;
		CHECK_EQ(pwrite(fd, &b, 1, at), 1);
	}
	close(fd);
	CHECK_EQ(csumfile_open(f->sum, size, &cf, why, sizeof(why)), -EINVAL);
	if (!strstr(why, msg)) {
		fprintf(stderr, "  got \"%s\", want \"%s\"\n", why, msg);
		CHECK(0);
	}
	CHECK(cf == NULL);
	if (at >= 0) { /* put it back */
		fd = open(f->sum, O_RDWR);
		b ^= 0x40;
		CHECK_EQ(pwrite(fd, &b, 1, at), 1);
		close(fd);
	}
}

static void test_damage_is_named(void)
{
	struct files f;
	struct csumfile_scan st;
	struct csumfile *cf;
	char why[512];

	make_mem(&f);
	scan_and_write(&f, &st);
	damaged(&f, 0, f.size, "is not a lazyvm checksum file");
	damaged(&f, 20, f.size, "its header is damaged");
	damaged(&f, -1, f.size + 4096,
	        "was made for a 12288000-byte memory file; this one is "
	        "12292096 bytes");
	CHECK_OK(csumfile_open(f.sum, f.size, &cf, why, sizeof(why)));
	off_t zero_at = (off_t)cf->h.zero_off + 3;
	csumfile_close(cf);
	damaged(&f, zero_at, f.size, "its zero-page map is damaged");
	CHECK_OK(truncate(f.sum, 8000));
	damaged(&f, -1, f.size, "truncated or damaged");
	CHECK_OK(truncate(f.sum, 10));
	damaged(&f, -1, f.size, "is not a lazyvm checksum file");
	cleanup(&f);
}

TEST_MAIN(TEST(test_scan_write_open), TEST(test_checked_reads), TEST(test_damage_is_named))
