/* The read-only NBD server: through lazyvm's own NBD source, through libnbd
 * directly, through nbdinfo, and through raw sockets speaking (and breaking)
 * the protocol by hand. */
#include <arpa/inet.h>
#include <endian.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "lazyvm/log.h"
#include "lazyvm/nbd_server.h"
#include "lazyvm/source.h"
#include "lazyvm/units.h"
#include "test.h"

#ifndef LAZYVM_NO_NBD
#include <libnbd.h>
#endif

/* Three regions, each mapped on its own so they are not contiguous in memory;
 * the middle one is three pages, so a read can span all three. */
static const uint64_t region_len[3] = {1u << 20, 3 * 4096, (2u << 20) + 4096};
static struct nbd_export_region regions[3];
static uint64_t total;

#define PAGES (total / 4096)

static unsigned char pattern(uint64_t off)
{
	return (unsigned char)(off * 7 + (off >> 12) * 13 + (off >> 20));
}

static void make_export(void)
{
	total = 0;
	for (int i = 0; i < 3; i++) {
		unsigned char *p = mmap(NULL, region_len[i], PROT_READ | PROT_WRITE,
		                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		CHECK(p != MAP_FAILED);
		for (uint64_t b = 0; b < region_len[i]; b++)
			p[b] = pattern(total + b);
		/* Read-only from here on: a server that wrote would crash the case. */
		CHECK_OK(mprotect(p, region_len[i], PROT_READ));
		regions[i] = (struct nbd_export_region){.host = p, .len = region_len[i]};
		total += region_len[i];
	}
}

static bool bytes_ok(const unsigned char *buf, uint64_t off, uint64_t len)
{
	for (uint64_t i = 0; i < len; i++)
		if (buf[i] != pattern(off + i))
			return false;
	return true;
}

static struct nbd_server *serve(unsigned max_conns, unsigned handshake_timeout_ms)
{
	struct nbd_server_config cfg = {.regions = regions,
	                                .nregions = 3,
	                                .max_conns = max_conns,
	                                .handshake_timeout_ms = handshake_timeout_ms};
	struct nbd_server *s;
	char why[256] = "";
	int r;

	make_export();
	if (lv_log_get_level() > LV_LOG_WARN)
		lv_log_set_level(LV_LOG_WARN);
	r = nbd_server_start(&cfg, &s, why, sizeof(why));
	if (r < 0)
		fprintf(stderr, "  nbd_server_start: %s\n", why);
	CHECK_OK(r);
	CHECK(nbd_server_port(s) != 0);
	CHECK_EQ(nbd_server_size(s), total);
	return s;
}

/* The server counts a read, and marks its pages, once the whole reply is in
 * the kernel's hands; the client may hold the data a moment before that. */
#define CHECK_SOON(expr)                                                                           \
	do {                                                                                       \
		uint64_t end_ = lv_now_ns() + 2000000000ull;                                       \
		while (!(expr) && lv_now_ns() < end_)                                              \
			lv_sleep_ns(1000000);                                                      \
		CHECK(expr);                                                                       \
	} while (0)

static struct nbd_server_stats stats(struct nbd_server *s)
{
	struct nbd_server_stats st;

	nbd_server_stats(s, &st);
	return st;
}

/* ---- raw protocol helpers ---- */

#define NBDMAGIC    0x4e42444d41474943ull
#define IHAVEOPT    0x49484156454f5054ull
#define REPMAGIC    0x3e889045565a9ull
#define REQMAGIC    0x25609513u
#define SIMPLEMAGIC 0x67446698u

static int raw_connect(uint16_t port, int rcvbuf)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct timeval tv = {.tv_sec = 3};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	CHECK(fd >= 0);
	if (rcvbuf)
		CHECK_OK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
	/* No test waits on the server for ever: a missing answer fails the case. */
	CHECK_OK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHECK_OK(connect(fd, (struct sockaddr *)&sa, sizeof(sa)));
	return fd;
}

static void raw_send(int fd, const void *buf, size_t len)
{
	CHECK_EQ(send(fd, buf, len, MSG_NOSIGNAL), (long long)len);
}

static void raw_recv(int fd, void *buf, size_t len)
{
	CHECK_EQ(recv(fd, buf, len, MSG_WAITALL), (long long)len);
}

/* The server closed the connection (rather than answering or staying silent
 * past the 3 s receive timeout). */
static bool raw_closed(int fd)
{
	char c;
	ssize_t n = recv(fd, &c, 1, 0);

	return n == 0 || (n < 0 && errno == ECONNRESET);
}

static uint64_t be64_at(const unsigned char *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return be64toh(v);
}
static uint32_t be32_at(const unsigned char *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return be32toh(v);
}
static uint16_t be16_at(const unsigned char *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return be16toh(v);
}

static void raw_greeting(int fd, uint32_t client_flags)
{
	unsigned char g[18];

	raw_recv(fd, g, sizeof(g));
	CHECK(be64_at(g) == NBDMAGIC);
	CHECK(be64_at(g + 8) == IHAVEOPT);
	CHECK_EQ(be16_at(g + 16), 3); /* FIXED_NEWSTYLE | NO_ZEROES */
	client_flags = htobe32(client_flags);
	raw_send(fd, &client_flags, 4);
}

static void raw_opt_magic(int fd, uint64_t magic, uint32_t opt, const void *data, uint32_t len)
{
	unsigned char h[16];
	uint64_t m = htobe64(magic);
	uint32_t o = htobe32(opt), l = htobe32(len);

	memcpy(h, &m, 8);
	memcpy(h + 8, &o, 4);
	memcpy(h + 12, &l, 4);
	raw_send(fd, h, sizeof(h));
	if (data) /* NULL: the header alone */
		raw_send(fd, data, len);
}

static void raw_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
	raw_opt_magic(fd, IHAVEOPT, opt, data, len);
}

/* One option reply: returns its type, its data in data[0..*len). */
static uint32_t raw_opt_reply(int fd, uint32_t opt, unsigned char *data, uint32_t *len)
{
	unsigned char h[20];

	raw_recv(fd, h, sizeof(h));
	CHECK(be64_at(h) == REPMAGIC);
	CHECK_EQ(be32_at(h + 8), opt);
	*len = be32_at(h + 16);
	CHECK(*len <= 256);
	if (*len)
		raw_recv(fd, data, *len);
	return be32_at(h + 12);
}

static void expect_opt_reply(int fd, uint32_t opt, uint32_t type, uint32_t len)
{
	unsigned char d[256];
	uint32_t got_len;

	CHECK_EQ(raw_opt_reply(fd, opt, d, &got_len), type);
	CHECK_EQ(got_len, len);
}

/* NBD_OPT_INFO or NBD_OPT_GO for export `name`: NBD_INFO_EXPORT with the size
 * and HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN, NBD_INFO_BLOCK_SIZE 1/4096/32M, ACK. */
static void raw_info(int fd, uint32_t opt, const char *name)
{
	unsigned char req[64], d[256];
	uint32_t nl = (uint32_t)strlen(name), be = htobe32(nl), len;
	bool seen_export = false, seen_bs = false;
	uint32_t type;

	memcpy(req, &be, 4);
	memcpy(req + 4, name, nl);
	req[4 + nl] = 0;
	req[5 + nl] = 1; /* one info request: */
	req[6 + nl] = 0;
	req[7 + nl] = 3; /* NBD_INFO_BLOCK_SIZE */
	raw_opt(fd, opt, req, 8 + nl);
	while ((type = raw_opt_reply(fd, opt, d, &len)) == 3) {
		if (be16_at(d) == 0) {
			CHECK_EQ(len, 12);
			CHECK(be64_at(d + 2) == total);
			CHECK_EQ(be16_at(d + 10), 1 | 2 | 256);
			seen_export = true;
		} else if (be16_at(d) == 3) {
			CHECK_EQ(len, 14);
			CHECK_EQ(be32_at(d + 2), 1);
			CHECK_EQ(be32_at(d + 6), 4096);
			CHECK_EQ(be32_at(d + 10), 32u << 20);
			seen_bs = true;
		}
	}
	CHECK_EQ(type, 1); /* NBD_REP_ACK */
	CHECK(seen_export && seen_bs);
}

static void raw_request(int fd, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len)
{
	unsigned char r[28];
	uint32_t m = htobe32(REQMAGIC), l = htobe32(len);
	uint16_t f = 0, t = htobe16(type);

	off = htobe64(off);
	memcpy(r, &m, 4);
	memcpy(r + 4, &f, 2);
	memcpy(r + 6, &t, 2);
	memcpy(r + 8, &cookie, 8); /* opaque: must come back byte for byte */
	memcpy(r + 16, &off, 8);
	memcpy(r + 24, &l, 4);
	raw_send(fd, r, sizeof(r));
}

/* A simple reply for `cookie`: returns its error. */
static uint32_t raw_reply(int fd, uint64_t cookie)
{
	unsigned char r[16];

	raw_recv(fd, r, sizeof(r));
	CHECK_EQ(be32_at(r), SIMPLEMAGIC);
	CHECK(memcmp(r + 8, &cookie, 8) == 0);
	return be32_at(r + 4);
}

/* A successful read of [off, off + len) on a connection in transmission. */
static void raw_read_ok(int fd, uint64_t cookie, uint64_t off, uint32_t len)
{
	unsigned char *buf = malloc(len);

	CHECK(buf);
	raw_request(fd, 0, cookie, off, len);
	CHECK_EQ(raw_reply(fd, cookie), 0);
	raw_recv(fd, buf, len);
	CHECK(bytes_ok(buf, off, len));
	free(buf);
}

/* A connection through the handshake (NBD_OPT_GO) into transmission. */
static int raw_transmission(uint16_t port)
{
	int fd = raw_connect(port, 0);

	raw_greeting(fd, 3);
	raw_info(fd, 7, "");
	return fd;
}

/* ---- the cases ---- */

#ifndef LAZYVM_NO_NBD
static struct source *open_source(struct nbd_server *s)
{
	char uri[64], why[256] = "";
	struct source *src;
	int r;

	snprintf(uri, sizeof(uri), "nbd://127.0.0.1:%u/", nbd_server_port(s));
	r = source_nbd_open(uri, 0, &src, why, sizeof(why));
	if (r < 0)
		fprintf(stderr, "  source_nbd_open(%s): %s\n", uri, why);
	CHECK_OK(r);
	return src;
}

/* lazyvm's own client reads every byte, across region boundaries; the
 * server's counters and page bitmap follow. */
static void test_source_nbd_reads_everything(void)
{
	struct nbd_server *s = serve(0, 0);
	struct source *src = open_source(s);
	uint64_t b1 = region_len[0], b2 = region_len[0] + region_len[1], sent = 0;
	static unsigned char bufs[SOURCE_BATCH_MAX][4096];
	struct source_req reqs[SOURCE_BATCH_MAX];
	unsigned char *buf = malloc(total);

	CHECK(buf);
	CHECK_EQ(source_size(src), total);
	CHECK(!nbd_server_range_sent(s, 0, 4096));

	/* One page: exactly that page is covered. */
	CHECK_OK(source_read(src, buf, b1, 4096));
	sent += 4096;
	CHECK(bytes_ok(buf, b1, 4096));
	CHECK_SOON(stats(s).pages_covered == 1);
	CHECK_SOON(nbd_server_range_sent(s, b1, 4096));
	CHECK(nbd_server_range_sent(s, b1 + 100, 10));
	CHECK(!nbd_server_range_sent(s, b1, 4097));
	CHECK(!nbd_server_range_sent(s, b1 - 1, 2));

	/* Unaligned reads spanning one and then two region boundaries; the
	 * pages they only partly cover are not counted as sent. */
	CHECK_OK(source_read(src, buf, b1 - 100, 200));
	sent += 200;
	CHECK(bytes_ok(buf, b1 - 100, 200));
	CHECK_OK(source_read(src, buf, b1 - 5000, (size_t)(b2 - b1) + 10000));
	sent += b2 - b1 + 10000;
	CHECK(bytes_ok(buf, b1 - 5000, b2 - b1 + 10000));
	CHECK_SOON(nbd_server_range_sent(s, b1 - 4096, 4096)); /* wholly inside the read */
	CHECK(!nbd_server_range_sent(s, b1 - 8192, 4096));     /* only its last 904 bytes */
	CHECK_SOON(nbd_server_range_sent(s, b1, b2 - b1));
	CHECK_SOON(stats(s).pages_covered == 1 + 3 + 1); /* b1..b2, b1 - 4096, b2 */

	/* A batch of pages in flight together, in reverse order. */
	for (unsigned i = 0; i < SOURCE_BATCH_MAX; i++)
		reqs[i] = (struct source_req){
		    .buf = bufs[i], .off = total - (uint64_t)(i + 1) * 4096, .len = 4096};
	CHECK_OK(source_read_batch(src, reqs, SOURCE_BATCH_MAX));
	sent += SOURCE_BATCH_MAX * 4096;
	for (unsigned i = 0; i < SOURCE_BATCH_MAX; i++)
		CHECK(bytes_ok(bufs[i], reqs[i].off, 4096));
	CHECK_SOON(
	    nbd_server_range_sent(s, total - SOURCE_BATCH_MAX * 4096, SOURCE_BATCH_MAX * 4096));
	CHECK(!nbd_server_range_sent(s, 0, total));

	/* Everything, in reads of 192 KiB (not a divisor of any region). */
	for (uint64_t off = 0; off < total; off += 192 << 10) {
		size_t len = total - off < (192 << 10) ? (size_t)(total - off) : 192 << 10;

		CHECK_OK(source_read(src, buf + off, off, len));
		sent += len;
	}
	CHECK(bytes_ok(buf, 0, total));
	CHECK_SOON(nbd_server_range_sent(s, 0, total));
	CHECK(nbd_server_range_sent(s, total, 0));
	CHECK(!nbd_server_range_sent(s, total, 1));
	CHECK(!nbd_server_range_sent(s, UINT64_MAX, 2));

	CHECK_SOON(stats(s).bytes_sent == sent);
	struct nbd_server_stats st = stats(s);
	CHECK_EQ(st.bytes_sent, sent);
	CHECK_EQ(st.pages_covered, PAGES);
	CHECK_EQ(st.connections, 1);
	CHECK_EQ(st.errors, 0);
	CHECK(st.requests >= 4 + SOURCE_BATCH_MAX);
	source_destroy(src);
	free(buf);
	nbd_server_stop(s);
}

static struct nbd_handle *libnbd_connect(struct nbd_server *s)
{
	struct nbd_handle *h = nbd_create();
	char port[16];

	CHECK(h);
	snprintf(port, sizeof(port), "%u", nbd_server_port(s));
	if (nbd_connect_tcp(h, "127.0.0.1", port) < 0) {
		fprintf(stderr, "  nbd_connect_tcp: %s\n", nbd_get_error());
		CHECK(0);
	}
	return h;
}

/* libnbd with its defaults: it asks for structured replies first, is told
 * no, and goes on with simple ones; what it learns of the export is right;
 * reads outside the export and writes fail with the server's errors. */
static void test_libnbd_handshake_and_errors(void)
{
	struct nbd_server *s = serve(0, 0);
	struct nbd_handle *h = libnbd_connect(s);
	static unsigned char buf[8192];

	CHECK_EQ(nbd_get_size(h), (long long)total);
	CHECK_EQ(nbd_is_read_only(h), 1);
	CHECK_EQ(nbd_can_multi_conn(h), 1);
	CHECK_EQ(nbd_can_flush(h), 0);
	CHECK_EQ(nbd_can_trim(h), 0);
	CHECK_EQ(nbd_get_structured_replies_negotiated(h), 0);
	CHECK(strcmp(nbd_get_protocol(h), "newstyle-fixed") == 0);
	CHECK_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 1);
	CHECK_EQ(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 4096);
	CHECK_EQ(nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM), 32 << 20);

	CHECK_OK(nbd_pread(h, buf, 8192, total - 8192, 0));
	CHECK(bytes_ok(buf, total - 8192, 8192));

	/* libnbd refuses these itself by default; with its strict checks off the
	 * requests reach the server, which must refuse them. */
	CHECK_EQ(nbd_pread(h, buf, 4096, total - 4095, 0), -1);
	CHECK_EQ(nbd_pwrite(h, buf, 4096, 0, 0), -1);
	CHECK_EQ(nbd_get_errno(), EPERM);
	CHECK_EQ(stats(s).errors, 0);
	CHECK_OK(nbd_set_strict_mode(h, 0));
	CHECK_EQ(nbd_pread(h, buf, 4096, total - 4095, 0), -1);
	CHECK_EQ(nbd_get_errno(), EINVAL);
	CHECK_EQ(nbd_pread(h, buf, 4096, UINT64_MAX - 100, 0), -1);
	CHECK_EQ(nbd_get_errno(), EINVAL);
	CHECK_EQ(nbd_pwrite(h, buf, 4096, 0, 0), -1);
	CHECK_EQ(nbd_get_errno(), EPERM);
	CHECK_EQ(stats(s).errors, 3);
	/* Still in step after the errors. */
	CHECK_OK(nbd_pread(h, buf, 4096, 4096, 0));
	CHECK(bytes_ok(buf, 4096, 4096));
	CHECK_OK(nbd_shutdown(h, 0));
	nbd_close(h);
	nbd_server_stop(s);
}

#define AIO_CONNS 3
#define AIO_DEPTH 48

/* Several connections, each with many reads in flight (libnbd's aio API
 * pipelines them); every byte checked. */
static void test_libnbd_many_aio_reads(void)
{
	struct nbd_server *s = serve(0, 0);
	struct nbd_handle *h[AIO_CONNS];
	static unsigned char buf[AIO_CONNS][AIO_DEPTH][20000];
	uint64_t off[AIO_CONNS][AIO_DEPTH];
	int64_t cookie[AIO_CONNS][AIO_DEPTH];
	size_t len[AIO_CONNS][AIO_DEPTH];
	unsigned pending = 0, seed = 12345;
	uint64_t deadline = lv_now_ns() + 3000000000ull;

	for (int c = 0; c < AIO_CONNS; c++)
		h[c] = libnbd_connect(s);
	for (int c = 0; c < AIO_CONNS; c++)
		for (int i = 0; i < AIO_DEPTH; i++) {
			seed = seed * 1103515245 + 12345;
			len[c][i] = 1 + seed % sizeof(buf[c][i]);
			off[c][i] = ((uint64_t)seed * 2654435761u) % (total - len[c][i] + 1);
			if (i == 0) /* one read surely across both boundaries */
				off[c][i] = region_len[0] - 4000, len[c][i] = 20000;
			cookie[c][i] = nbd_aio_pread(h[c], buf[c][i], len[c][i], off[c][i],
			                             NBD_NULL_COMPLETION, 0);
			CHECK(cookie[c][i] > 0);
			pending++;
		}
	CHECK(nbd_aio_in_flight(h[0]) > 1);
	while (pending) {
		CHECK(lv_now_ns() < deadline);
		for (int c = 0; c < AIO_CONNS; c++) {
			CHECK(nbd_poll(h[c], 0) >= 0);
			for (int i = 0; i < AIO_DEPTH; i++) {
				if (cookie[c][i] == 0)
					continue;
				int r = nbd_aio_command_completed(h[c], (uint64_t)cookie[c][i]);

				CHECK(r >= 0);
				if (r == 1) {
					CHECK(bytes_ok(buf[c][i], off[c][i], len[c][i]));
					cookie[c][i] = 0;
					pending--;
				}
			}
		}
		if (pending)
			CHECK(nbd_poll(h[pending % AIO_CONNS], 10) >= 0);
	}
	CHECK_EQ(stats(s).connections, AIO_CONNS);
	CHECK_EQ(stats(s).requests, AIO_CONNS * AIO_DEPTH);
	CHECK_EQ(stats(s).errors, 0);
	for (int c = 0; c < AIO_CONNS; c++)
		nbd_close(h[c]);
	nbd_server_stop(s);
}

/* nbdinfo (opt mode, NBD_OPT_INFO then NBD_OPT_GO) sees the export. */
static void test_nbdinfo(void)
{
	char cmd[128], out[4096], want[64];
	struct nbd_server *s;
	size_t n;
	FILE *p;

	if (access("/usr/bin/nbdinfo", X_OK) != 0)
		SKIP("/usr/bin/nbdinfo is not installed (Debian: libnbd-bin)");
	s = serve(0, 0);
	snprintf(cmd, sizeof(cmd), "/usr/bin/nbdinfo nbd://127.0.0.1:%u 2>&1", nbd_server_port(s));
	p = popen(cmd, "r");
	CHECK(p);
	n = fread(out, 1, sizeof(out) - 1, p);
	out[n] = 0;
	int status = pclose(p);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fprintf(stderr, "  %s:\n%s\n", cmd, out);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	snprintf(want, sizeof(want), "export-size: %llu", (unsigned long long)total);
	CHECK(strstr(out, want));
	CHECK(strstr(out, "is_read_only: true"));
	nbd_server_stop(s);
}
/* A listener that accepts (the kernel completes the TCP handshake) and never
 * speaks: opening fails with -ETIMEDOUT after the timeout, not never. */
static void test_source_nbd_open_silent_server(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	char uri[64], why[256] = "";
	struct source *src = NULL;
	uint64_t t0;

	CHECK(lfd >= 0);
	CHECK(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(lfd, 4) == 0);
	CHECK(getsockname(lfd, (struct sockaddr *)&sa, &sl) == 0);
	snprintf(uri, sizeof(uri), "nbd://127.0.0.1:%u/", ntohs(sa.sin_port));
	t0 = lv_now_ns();
	CHECK_EQ(source_nbd_open(uri, 200000000ull, &src, why, sizeof(why)), -ETIMEDOUT);
	CHECK(lv_now_ns() - t0 >= 190000000ull && lv_now_ns() - t0 < 3000000000ull);
	CHECK(strstr(why, "did not complete the NBD handshake within 200 ms"));
	CHECK(src == NULL);
	close(lfd);
}
#endif

/* The option replies, by hand: LIST, unknown, malformed and oversized options,
 * INFO, then EXPORT_NAME with and without the 124 zero bytes. */
static void test_raw_options(void)
{
	struct nbd_server *s = serve(0, 0);
	unsigned char d[256], *big = calloc(1, 5000), junk[40] = {0},
	                      bad_go[6] = {0, 0, 0, 0, 0, 1};
	uint32_t len;
	int fd = raw_connect(nbd_server_port(s), 0);

	lv_log_set_level(LV_LOG_ERROR);
	CHECK(big);
	raw_greeting(fd, 3);
	raw_opt(fd, 3, NULL, 0); /* NBD_OPT_LIST: one export, "" */
	CHECK_EQ(raw_opt_reply(fd, 3, d, &len), 2);
	CHECK_EQ(len, 4);
	CHECK_EQ(be32_at(d), 0);
	expect_opt_reply(fd, 3, 1, 0);
	raw_opt(fd, 3, junk, 4); /* LIST takes no data */
	expect_opt_reply(fd, 3, 0x80000003u, 0);
	raw_opt(fd, 8, NULL, 0); /* NBD_OPT_STRUCTURED_REPLY */
	expect_opt_reply(fd, 8, 0x80000001u, 0);
	raw_opt(fd, 0x7654, junk, sizeof(junk)); /* unknown, with data to skip */
	expect_opt_reply(fd, 0x7654, 0x80000001u, 0);
	raw_opt(fd, 5, NULL, 0); /* NBD_OPT_STARTTLS */
	expect_opt_reply(fd, 5, 0x80000001u, 0);
	raw_opt(fd, 0x7654, big, 5000); /* over the 4 KiB limit: skipped, refused */
	expect_opt_reply(fd, 0x7654, 0x80000009u, 0);
	raw_opt(fd, 7, bad_go, sizeof(bad_go)); /* GO claiming an info it lacks */
	expect_opt_reply(fd, 7, 0x80000003u, 0);
	raw_info(fd, 6, "any name at all");
	raw_opt(fd, 1, "whatever", 8); /* NBD_OPT_EXPORT_NAME, NO_ZEROES negotiated */
	raw_recv(fd, d, 10);
	CHECK(be64_at(d) == total);
	CHECK_EQ(be16_at(d + 8), 1 | 2 | 256);
	raw_read_ok(fd, 77, 4096 * 3, 4096);
	close(fd);

	/* A client without NO_ZEROES gets them. */
	fd = raw_connect(nbd_server_port(s), 0);
	raw_greeting(fd, 1);
	raw_opt(fd, 1, NULL, 0);
	raw_recv(fd, big, 134);
	CHECK(be64_at(big) == total);
	for (int i = 10; i < 134; i++)
		CHECK_EQ(big[i], 0);
	raw_read_ok(fd, 78, 0, 100);
	close(fd);

	/* NBD_OPT_ABORT: acknowledged, then closed. */
	fd = raw_connect(nbd_server_port(s), 0);
	raw_greeting(fd, 3);
	raw_opt(fd, 2, NULL, 0);
	expect_opt_reply(fd, 2, 1, 0);
	CHECK(raw_closed(fd));
	close(fd);

	/* Unknown client flags: closed. */
	fd = raw_connect(nbd_server_port(s), 0);
	raw_greeting(fd, 3 | 0x100);
	CHECK(raw_closed(fd));
	close(fd);
	free(big);
	nbd_server_stop(s);
}

/* Every command by hand, pipelined: the errors come back in order, a refused
 * write's payload is consumed, a refused read sends no data. */
static void test_raw_commands(void)
{
	struct nbd_server *s = serve(0, 0);
	int fd = raw_transmission(nbd_server_port(s));
	static unsigned char payload[8192], buf[8192];
	uint64_t b1 = region_len[0];

	lv_log_set_level(LV_LOG_ERROR);
	raw_request(fd, 1, 1, 0, sizeof(payload)); /* WRITE */
	raw_send(fd, payload, sizeof(payload));
	raw_request(fd, 0, 2, total - 4096, 4097);      /* READ past the end */
	raw_request(fd, 0, 3, UINT64_MAX - 100, 4096);  /* READ whose end wraps */
	raw_request(fd, 0, 4, 0, (32u << 20) + 1);      /* READ over the limit */
	raw_request(fd, 0, 5, 0, 0);                    /* READ of nothing */
	raw_request(fd, 4, 6, 0, 4096);                 /* TRIM */
	raw_request(fd, 6, 7, 0, 4096);                 /* WRITE_ZEROES */
	raw_request(fd, 3, 8, 0, 0);                    /* FLUSH */
	raw_request(fd, 99, 9, 0, 0);                   /* unknown */
	raw_request(fd, 0, 10, b1 - 4096, sizeof(buf)); /* READ across a boundary */
	CHECK_EQ(raw_reply(fd, 1), 1);                  /* EPERM */
	CHECK_EQ(raw_reply(fd, 2), 22);                 /* EINVAL */
	CHECK_EQ(raw_reply(fd, 3), 22);
	CHECK_EQ(raw_reply(fd, 4), 22);
	CHECK_EQ(raw_reply(fd, 5), 22);
	CHECK_EQ(raw_reply(fd, 6), 1);
	CHECK_EQ(raw_reply(fd, 7), 1);
	CHECK_EQ(raw_reply(fd, 8), 0);
	CHECK_EQ(raw_reply(fd, 9), 22);
	CHECK_EQ(raw_reply(fd, 10), 0);
	raw_recv(fd, buf, sizeof(buf));
	CHECK(bytes_ok(buf, b1 - 4096, sizeof(buf)));
	CHECK_EQ(stats(s).errors, 8);
	CHECK_EQ(stats(s).requests, 10);
	CHECK_SOON(stats(s).bytes_sent == sizeof(buf));

	raw_request(fd, 2, 11, 0, 0); /* DISC */
	CHECK(raw_closed(fd));
	close(fd);

	/* A write too long to skip ends the connection. */
	fd = raw_transmission(nbd_server_port(s));
	raw_request(fd, 1, 12, 0, (32u << 20) + 1);
	CHECK(raw_closed(fd));
	close(fd);
	nbd_server_stop(s);
}

/* Garbage from one client ends that client only; a client that vanishes
 * mid-reply (SIGPIPE territory) harms nobody either. */
static void test_raw_garbage_isolated(void)
{
	struct nbd_server *s = serve(0, 0);
	uint16_t port = nbd_server_port(s);
	int good = raw_transmission(port), bad;
	static const char garbage[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";

	lv_log_set_level(LV_LOG_ERROR);
	raw_read_ok(good, 1, 0, 4096);

	bad = raw_connect(port, 0); /* garbage instead of the client flags and options */
	raw_recv(bad, (char[18]){0}, 18);
	raw_send(bad, garbage, sizeof(garbage));
	CHECK(raw_closed(bad));
	close(bad);

	bad = raw_connect(port, 0); /* a bad option magic */
	raw_greeting(bad, 3);
	raw_opt_magic(bad, 0x1122334455667788ull, 7, NULL, 0);
	CHECK(raw_closed(bad));
	close(bad);

	bad = raw_transmission(port); /* a bad request magic */
	raw_send(bad, garbage, 28);
	CHECK(raw_closed(bad));
	close(bad);

	bad = raw_connect(port, 0); /* an option longer than anything allowed */
	raw_greeting(bad, 3);
	raw_opt(bad, 7, NULL, 0xfffffff0u);
	CHECK(raw_closed(bad));
	close(bad);

	for (int i = 0; i < 4; i++) { /* big reads, then gone */
		bad = raw_transmission(port);
		for (int r = 0; r < 4; r++)
			raw_request(bad, 0, 100 + r, 0, (uint32_t)(total - 4096));
		close(bad);
	}
	raw_read_ok(good, 2, total - 4096, 4096);
	CHECK(stats(s).errors >= 4);
	CHECK_EQ(stats(s).refused, 0);
	close(good);
	nbd_server_stop(s);
}

/* max_conns connections at once; the next is closed at once; a slot freed by
 * a leaving client is taken again. */
static void test_raw_too_many_connections(void)
{
	struct nbd_server *s = serve(2, 0);
	uint16_t port = nbd_server_port(s);
	int a = raw_transmission(port), b = raw_transmission(port), c;
	bool served = false;

	lv_log_set_level(LV_LOG_ERROR);
	c = raw_connect(port, 0);
	CHECK(raw_closed(c)); /* not even a greeting */
	close(c);
	CHECK_EQ(stats(s).refused, 1);
	raw_read_ok(a, 1, 0, 4096);
	raw_read_ok(b, 2, 4096, 4096);

	close(a);
	/* The slot frees once a's thread notices; retry for up to a second. */
	for (int i = 0; i < 100 && !served; i++) {
		unsigned char g[18];

		c = raw_connect(port, 0);
		if (recv(c, g, sizeof(g), MSG_WAITALL) == sizeof(g)) {
			uint32_t flags = htobe32(3);

			raw_send(c, &flags, 4);
			raw_info(c, 7, "");
			raw_read_ok(c, 3, 8192, 4096);
			served = true;
		} else {
			lv_sleep_ns(10000000);
		}
		close(c);
	}
	CHECK(served);
	CHECK_EQ(stats(s).connections, 3);
	close(b);
	nbd_server_stop(s);
}

/* A client silent in the handshake is dropped after the handshake timeout. */
static void test_raw_handshake_timeout(void)
{
	struct nbd_server *s = serve(0, 200);
	int fd = raw_connect(nbd_server_port(s), 0);
	uint64_t t0 = lv_now_ns();

	lv_log_set_level(LV_LOG_ERROR);
	raw_recv(fd, (char[18]){0}, 18);
	CHECK(raw_closed(fd));
	CHECK(lv_now_ns() - t0 < 2000000000ull);
	close(fd);

	/* The deadline is for the whole handshake: a byte every 20 ms of a long
	 * option does not keep the connection. */
	static const unsigned char list_4k[16] = {'I', 'H', 'A', 'V', 'E', 'O', 'P',  'T',
	                                          0,   0,   0,   3,   0,   0,   0x10, 0};
	bool closed = false;

	fd = raw_connect(nbd_server_port(s), 0);
	t0 = lv_now_ns();
	raw_greeting(fd, 3);
	for (int i = 0; i < 200 && !closed; i++) {
		char c = i < 16 ? (char)list_4k[i] : 0;
		ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);

		closed =
		    n == 0 || (n < 0 && errno == ECONNRESET) || send(fd, &c, 1, MSG_NOSIGNAL) < 0;
		CHECK(n < 0 || closed); /* no reply can come: the option is unfinished */
		lv_sleep_ns(20000000);
	}
	CHECK(closed);
	CHECK(lv_now_ns() - t0 < 2000000000ull);
	close(fd);
	nbd_server_stop(s);
}

/* nbd_server_stop returns at once whatever the clients do: silent before
 * the greeting, idle in the options, idle in transmission, or blocking the
 * server's send by never reading a large reply. */
static void test_stop_is_prompt(void)
{
	struct nbd_server *s = serve(16, 60000);
	uint16_t port = nbd_server_port(s);
	int silent = raw_connect(port, 0), in_options = raw_connect(port, 0);
	int idle = raw_transmission(port), stuck = raw_connect(port, 4096);
	uint64_t t0;

	raw_greeting(in_options, 3);
	raw_greeting(stuck, 3);
	raw_info(stuck, 7, "");
	for (int r = 0; r < 8; r++) /* ~24 MiB the client never reads */
		raw_request(stuck, 0, (uint64_t)r, 0, (uint32_t)total);
	lv_sleep_ns(100000000); /* let the server fill the socket and block */
	t0 = lv_now_ns();
	nbd_server_stop(s);
	CHECK(lv_now_ns() - t0 < 1000000000ull);
	raw_recv(silent, (char[18]){0}, 18); /* the greeting came before the stop */
	CHECK(raw_closed(silent));
	CHECK(raw_closed(in_options));
	CHECK(raw_closed(idle));
	close(silent);
	close(in_options);
	close(idle);
	close(stuck);
}

/* Bad configurations are refused with a reason. */
static void test_bad_config(void)
{
	static unsigned char page[8192] __attribute__((aligned(4096)));
	struct nbd_export_region odd = {.host = page, .len = 4095},
	                         ok = {.host = page, .len = 8192};
	struct nbd_server_config cfg = {.regions = &odd, .nregions = 1};
	struct nbd_server *s;
	char why[256] = "";

	lv_log_set_level(LV_LOG_ERROR);
	CHECK_EQ(nbd_server_start(&cfg, &s, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "multiple of 4096"));
	cfg.nregions = 0;
	CHECK_EQ(nbd_server_start(&cfg, &s, why, sizeof(why)), -EINVAL);
	cfg = (struct nbd_server_config){.regions = &ok, .nregions = 1, .bind_addr = "localhost"};
	CHECK_EQ(nbd_server_start(&cfg, &s, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "numeric"));

	/* The same port twice: the second is refused. */
	cfg.bind_addr = "::1";
	CHECK_OK(nbd_server_start(&cfg, &s, why, sizeof(why)));
	CHECK_EQ(nbd_server_size(s), 8192);
	struct nbd_server *s2;
	cfg.port = nbd_server_port(s);
	CHECK_EQ(nbd_server_start(&cfg, &s2, why, sizeof(why)), -EADDRINUSE);
	nbd_server_stop(s);
	nbd_server_stop(NULL);
}

TEST_MAIN(
#ifndef LAZYVM_NO_NBD
    TEST(test_source_nbd_reads_everything), TEST(test_libnbd_handshake_and_errors),
    TEST(test_libnbd_many_aio_reads), TEST(test_nbdinfo), TEST(test_source_nbd_open_silent_server),
#endif
    TEST(test_raw_options), TEST(test_raw_commands), TEST(test_raw_garbage_isolated),
    TEST(test_raw_too_many_connections), TEST(test_raw_handshake_timeout),
    TEST(test_stop_is_prompt), TEST(test_bad_config))
