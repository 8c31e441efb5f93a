/* Sources, units and metrics. */
#include <fcntl.h>
#include <sys/stat.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/hostport.h"
#include "lazyvm/metrics.h"
#include "lazyvm/source.h"
#include "lazyvm/units.h"
#include "test.h"

/* A file of `size` bytes whose every byte is a function of its offset. */
static char *make_file(uint64_t size)
{
	static char path[] = "/tmp/lazyvm-test-core-XXXXXX";
	int fd = mkstemp(path);
	unsigned char *buf = malloc(size);

	CHECK(fd >= 0 && buf);
	for (uint64_t i = 0; i < size; i++)
		buf[i] = (unsigned char)(i * 7 + (i >> 12));
	CHECK_EQ(write(fd, buf, size), (long long)size);
	close(fd);
	free(buf);
	return path;
}

static int byte_ok(const unsigned char *p, uint64_t off, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != (unsigned char)((off + i) * 7 + ((off + i) >> 12)))
			return 0;
	return 1;
}

static void check_file_source(unsigned flags)
{
	/* Room for a full batch of requests, each a page further in. */
	char *path = make_file(4 << 20);
	struct source *src;
	static unsigned char bufs[SOURCE_BATCH_MAX][4096];
	struct source_req reqs[SOURCE_BATCH_MAX];

	CHECK_OK(source_file_open(path, flags, &src, NULL, 0));
	CHECK_EQ(source_size(src), 4 << 20);
	CHECK_OK(source_read(src, bufs[0], 8192, 4096));
	CHECK(byte_ok(bufs[0], 8192, 4096));
	CHECK_OK(source_read(src, bufs[0], (4 << 20) - 10, 10)); /* ends exactly at EOF */
	CHECK_EQ(source_read(src, bufs[0], (4 << 20) - 10, 11), -ERANGE);
	CHECK_EQ(source_read(src, bufs[0], UINT64_MAX - 1, 4096), -ERANGE);
	for (unsigned i = 0; i < SOURCE_BATCH_MAX; i++)
		reqs[i] = (struct source_req){.buf = bufs[i],
		                              .off = (uint64_t)(SOURCE_BATCH_MAX - i) * 4096 + i,
		                              .len = 4096};
	CHECK_OK(source_read_batch(src, reqs, SOURCE_BATCH_MAX));
	for (unsigned i = 0; i < SOURCE_BATCH_MAX; i++) {
		CHECK_EQ(reqs[i].result, 0);
		CHECK(byte_ok(bufs[i], reqs[i].off, 4096));
	}
	/* A file that shrinks under the source: an error, never zeros. */
	CHECK_OK(truncate(path, 4096 * 4));
	CHECK_EQ(source_read(src, bufs[0], 4096 * 8, 4096), -ENODATA);
	reqs[0] = (struct source_req){.buf = bufs[0], .off = 0, .len = 4096};
	reqs[1] = (struct source_req){.buf = bufs[1], .off = 4096 * 10, .len = 4096};
	CHECK_EQ(source_read_batch(src, reqs, 2), -ENODATA);
	CHECK_EQ(reqs[0].result, 0);
	CHECK_EQ(reqs[1].result, -ENODATA);
	/* ... and the message names the file and says it shrank, with both sizes. */
	char why[512];
	source_strerror(src, -ENODATA, why, sizeof(why));
	CHECK(strstr(why, path) && strstr(why, "ends early"));
	CHECK(strstr(why, "now 16384 bytes, shorter than the 4194304 it had when it was opened"));
	CHECK(!strcmp(source_strerror(src, -EIO, why, sizeof(why)), strerror(EIO)));
	source_destroy(src);
	unlink(path);
}

static void test_file_source_pread(void)
{
	check_file_source(0);
}
static void test_file_source_io_uring(void)
{
	check_file_source(SOURCE_FILE_IO_URING);
}

static void test_file_source_errors(void)
{
	struct source *src;
	/* Room for the "/f" appended to the directory mkdtemp makes. */
	char why[256], fifo[64] = "/tmp/lazyvm-test-fifo-XXXXXX";

	CHECK_EQ(source_file_open("/nonexistent/lazyvm", 0, &src, why, sizeof(why)), -ENOENT);
	CHECK(strstr(why, "cannot open /nonexistent/lazyvm: No such file or directory"));
	CHECK_EQ(source_file_open("/tmp", 0, &src, why, sizeof(why)), -EISDIR);
	CHECK(strstr(why, "/tmp is a directory, not a regular file or block device"));
	CHECK_EQ(source_file_open("/dev/null", 0, &src, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "/dev/null is a character device"));
	CHECK_EQ(source_file_open("", 0, &src, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "empty file name"));
	/* A FIFO without a writer: refused at once, never waited on. */
	CHECK(mkdtemp(fifo));
	strcat(fifo, "/f");
	CHECK_OK(mkfifo(fifo, 0600) < 0 ? -errno : 0);
	CHECK_EQ(source_file_open(fifo, 0, &src, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, fifo) && strstr(why, "is a FIFO"));
	unlink(fifo);
	*strrchr(fifo, '/') = 0;
	rmdir(fifo);
}

static void test_zero_and_latency_sources(void)
{
	struct source *zero, *slow;
	unsigned char buf[4096];
	struct source_req reqs[3];
	uint64_t t0;

	CHECK_OK(source_zero_create(1 << 16, &zero));
	memset(buf, 0xaa, sizeof(buf));
	CHECK_OK(source_read(zero, buf, 4096, 4096));
	for (size_t i = 0; i < sizeof(buf); i++)
		CHECK_EQ(buf[i], 0);
	CHECK_EQ(source_read(zero, buf, 1 << 16, 1), -ERANGE);
	CHECK_OK(source_latency_wrap(zero, 20 * 1000 * 1000, &slow));
	CHECK_EQ(source_size(slow), 1 << 16);
	CHECK(strstr(source_describe(slow), "20000 us latency"));
	t0 = lv_now_ns();
	CHECK_OK(source_read(slow, buf, 0, 4096));
	CHECK(lv_now_ns() - t0 >= 20 * 1000 * 1000);
	/* A batch pays the latency once, like parallel requests to remote storage. */
	for (unsigned i = 0; i < 3; i++)
		reqs[i] = (struct source_req){.buf = buf, .off = i * 4096, .len = 4096};
	t0 = lv_now_ns();
	CHECK_OK(source_read_batch(slow, reqs, 3));
	uint64_t took = lv_now_ns() - t0;
	CHECK(took >= 20 * 1000 * 1000);
	CHECK(took < 60 * 1000 * 1000);
	source_destroy(slow); /* also destroys zero */
}

/* Page checksums read lazily from their own file, chunk by chunk. */
static void test_checked_source(void)
{
	const uint64_t pages = CSUM_CHUNK_PAGES + 10; /* two chunks, the last partial */
	char *path = make_file(pages * 4096);
	char csum_path[] = "/tmp/lazyvm-test-csum-XXXXXX";
	uint32_t *crcs = malloc(pages * 4), chunks[2];
	unsigned char *buf = malloc(pages * 4096);
	struct source *file, *src;
	int fd = open(path, O_RDONLY), cfd = mkstemp(csum_path);

	CHECK(fd >= 0 && cfd >= 0 && crcs && buf);
	CHECK_EQ(read(fd, buf, pages * 4096), (long long)(pages * 4096));
	close(fd);
	for (uint64_t p = 0; p < pages; p++)
		crcs[p] = crc32c(0, buf + p * 4096, 4096);
	chunks[0] = crc32c(0, crcs, CSUM_CHUNK_PAGES * 4);
	chunks[1] = crc32c(0, crcs + CSUM_CHUNK_PAGES, 10 * 4);
	CHECK_EQ(write(cfd, crcs, pages * 4), (long long)(pages * 4));
	CHECK_OK(source_file_open(path, 0, &file, NULL, 0));
	CHECK_OK(source_checked_wrap(file, cfd, 0, chunks, pages, 4096, &src));
	CHECK_OK(source_read(src, buf, 4096 * (CSUM_CHUNK_PAGES + 3), 3 * 4096)); /* chunk 1 */
	CHECK_OK(source_read(src, buf, 0, 8 * 4096));                             /* chunk 0 */
	CHECK_OK(source_checked_verify(src, buf, 0, 8 * 4096));
	buf[4096 + 17] ^= 1;
	CHECK_EQ(source_checked_verify(src, buf, 0, 8 * 4096), -EBADMSG);
	CHECK_EQ(source_read(src, buf, 100, 4096), -EINVAL); /* not page-aligned */
	source_destroy(src);
	/* A damaged chunk of the checksum file fails every page it covers. */
	crcs[5] ^= 1;
	CHECK_EQ(pwrite(cfd, crcs, pages * 4, 0), (long long)(pages * 4));
	CHECK_OK(source_file_open(path, 0, &file, NULL, 0));
	CHECK_OK(source_checked_wrap(file, cfd, 0, chunks, pages, 4096, &src));
	CHECK_EQ(source_read(src, buf, 4096 * 100, 4096), -EBADMSG);
	CHECK_OK(source_read(src, buf, 4096 * (CSUM_CHUNK_PAGES + 1), 4096)); /* chunk 1 is fine */
	source_destroy(src);
	close(cfd);
	unlink(csum_path);
	unlink(path);
	free(crcs);
	free(buf);
}

static void test_units(void)
{
	uint64_t v;

	CHECK_EQ(crc32c(0, "123456789", 9), 0xe3069283); /* the CRC-32C check value */

	CHECK_OK(lv_parse_size("4096", &v));
	CHECK_EQ(v, 4096);
	CHECK_OK(lv_parse_size("64M", &v));
	CHECK_EQ(v, 64ull << 20);
	CHECK_OK(lv_parse_size("2MiB", &v));
	CHECK_EQ(v, 2ull << 20);
	CHECK_OK(lv_parse_size("1g", &v));
	CHECK_EQ(v, 1ull << 30);
	CHECK_EQ(lv_parse_size("", &v), -EINVAL);
	CHECK_EQ(lv_parse_size("12Q", &v), -EINVAL);
	CHECK_EQ(lv_parse_size("-1", &v), -EINVAL);
	CHECK_EQ(lv_parse_size("99999999999T", &v), -ERANGE);
	CHECK_EQ(lv_parse_size("18446744073709551616", &v), -ERANGE);
	CHECK_OK(lv_parse_duration("10ms", &v));
	CHECK_EQ(v, 10000000);
	CHECK_OK(lv_parse_duration("200us", &v));
	CHECK_EQ(v, 200000);
	CHECK_OK(lv_parse_duration("0", &v));
	CHECK_EQ(v, 0);
	CHECK_EQ(lv_parse_duration("10", &v), -EINVAL); /* unit required */
	CHECK_EQ(lv_parse_duration("1h", &v), -EINVAL);
}

/* HOST:PORT and nbd:// server parts: what parses, and what is refused
 * with which part named. */
static void test_hostport(void)
{
	static const struct {
		const char *in;
		bool zero_ok;
		const char *host; /* NULL: refused, and `why` holds `msg` */
		unsigned port;
		const char *msg;
	} cases[] = {
	    {"127.0.0.1:80", false, "127.0.0.1", 80, NULL},
	    {"127.0.0.1:0", true, "127.0.0.1", 0, NULL},
	    {"localhost:65535", false, "localhost", 65535, NULL},
	    {"[::1]:7", false, "::1", 7, NULL},
	    {"[fe80::1%eth0]:7", false, "fe80::1%eth0", 7, NULL},
	    {"my-host.example:10809", false, "my-host.example", 10809, NULL},
	    {"127.0.0.1:99999", true, NULL, 0, "port 99999 is out of range (0-65535)"},
	    {"127.0.0.1:65536", false, NULL, 0, "port 65536 is out of range (1-65535)"},
	    {"127.0.0.1:0", false, NULL, 0, "port 0 is out of range (1-65535)"},
	    {"127.0.0.1:000080", false, NULL, 0, "port '000080' is not a number from 1"},
	    {"127.0.0.1:8x", false, NULL, 0, "port '8x' is not a number"},
	    {"127.0.0.1:-1", false, NULL, 0, "port '-1' is not a number"},
	    {"127.0.0.1:", false, NULL, 0, "port '' is not a number"},
	    {"127.0.0.1: 80", false, NULL, 0, "port ' 80' is not a number"},
	    {"nowhere", false, NULL, 0, "'nowhere' is not HOST:PORT (no port)"},
	    {":80", false, NULL, 0, "':80' has no host"},
	    {"300.1.1.1:80", false, NULL, 0, "'300.1.1.1' is not an IPv4 address"},
	    {"1.2.3:80", false, NULL, 0, "'1.2.3' is not an IPv4 address"},
	    {"::1:80", false, NULL, 0, "an IPv6 address needs brackets"},
	    {"[::g]:80", false, NULL, 0, "'[::g]' is not an IPv6 address"},
	    {"[::1]80", false, NULL, 0, "an IPv6 address is [ADDRESS]:PORT"},
	    {"[::1]", false, NULL, 0, "is not HOST:PORT (no port)"},
	    {"bad_host:80", false, NULL, 0, "'bad_host' is not a host name or an address"},
	    {"-a:80", false, NULL, 0, "is not a host name"},
	    {"a..b:80", false, NULL, 0, "is not a host name"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char host[64] = "", why[160] = "";
		uint16_t port = 1234;
		int r = lv_parse_hostport(cases[i].in, cases[i].zero_ok, host, sizeof(host), &port,
		                          why, sizeof(why));

		if (cases[i].host) {
			if (r != 0)
				fprintf(stderr, "  '%s': %s\n", cases[i].in, why);
			CHECK_OK(r);
			CHECK(!strcmp(host, cases[i].host));
			CHECK_EQ(port, cases[i].port);
		} else {
			if (r != -EINVAL || !strstr(why, cases[i].msg))
				fprintf(stderr, "  '%s': %d '%s', wanted '%s'\n", cases[i].in, r,
				        why, cases[i].msg);
			CHECK_EQ(r, -EINVAL);
			CHECK(strstr(why, cases[i].msg));
		}
	}

	static const struct {
		const char *uri;
		const char *msg; /* NULL: accepted */
	} uris[] = {
	    {"nbd://127.0.0.1:10809/", NULL},
	    {"nbd://127.0.0.1/", NULL},
	    {"nbd://127.0.0.1", NULL},
	    {"nbds://user@server.example:1234/export?tls-certificates=/x", NULL},
	    {"nbd://[::1]:80/e", NULL},
	    {"nbd+unix:///?socket=/tmp/s", NULL},
	    {"nbd://127.0.0.1:99999/",
	     "'nbd://127.0.0.1:99999/': port 99999 is out of range (1-65535)"},
	    {"nbd://127.0.0.1:0/", "port 0 is out of range"},
	    {"nbd://127.0.0.1:12x/", "port '12x' is not a number"},
	    {"nbd://999.0.0.1:80/", "'999.0.0.1' is not an IPv4 address"},
	    {"nbd:///export", "names no server"},
	};
	for (size_t i = 0; i < sizeof(uris) / sizeof(uris[0]); i++) {
		char why[200] = "";
		int r = lv_check_nbd_uri(uris[i].uri, why, sizeof(why));

		if (uris[i].msg ? r != -EINVAL || !strstr(why, uris[i].msg) : r != 0)
			fprintf(stderr, "  '%s': %d '%s'\n", uris[i].uri, r, why);
		CHECK_EQ(r, uris[i].msg ? -EINVAL : 0);
		CHECK(!uris[i].msg || strstr(why, uris[i].msg));
	}
}

static void test_histogram(void)
{
	static struct hist h;
	static struct metrics a, b;

	CHECK_EQ(hist_percentile(&h, 0.5), 0);
	for (uint64_t i = 1; i <= 1000; i++)
		hist_record(&h, i * 1000); /* 1 us .. 1 ms */
	uint64_t p50 = hist_percentile(&h, 0.5), p99 = hist_percentile(&h, 0.99);
	CHECK(p50 > 500000 * 97 / 100 && p50 < 500000 * 103 / 100);
	CHECK(p99 > 990000 * 97 / 100 && p99 <= 1000000);
	CHECK_EQ(hist_percentile(&h, 1.0), 1000000);
	CHECK(hist_percentile(&h, 0.0) <= 1000 * 103 / 100);
	/* Small values are exact. */
	static struct hist s;
	hist_record(&s, 3);
	CHECK_EQ(hist_percentile(&s, 0.5), 3);

	ctr_add(&a.faults, 5);
	ctr_add(&b.faults, 7);
	hist_record(&a.latency, 100);
	hist_record(&b.latency, 300);
	metrics_add(&a, &b);
	CHECK_EQ(a.faults, 12);
	CHECK_EQ(a.latency.count, 2);
	CHECK_EQ(a.latency.max_ns, 300);

	char *json = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&json, &len);
	metrics_write_json(f, &a);
	fclose(f);
	CHECK(strstr(json, "\"faults\":12,"));
	CHECK(strstr(json, "\"latency_us\":{\"count\":2,"));
	CHECK(json[0] == '{' && json[len - 1] == '}');
	free(json);
}

TEST_MAIN(TEST(test_file_source_pread), TEST(test_file_source_io_uring),
          TEST(test_file_source_errors), TEST(test_zero_and_latency_sources),
          TEST(test_checked_source), TEST(test_units), TEST(test_hostport), TEST(test_histogram))
