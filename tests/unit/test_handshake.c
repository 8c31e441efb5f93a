/* Firecracker's UFFD hand-off message: the parser, the completeness scanner
 * and the writer. Every input is copied into a buffer of exactly its length,
 * so that under ASan a read past len is caught rather than hidden by the
 * string literal's NUL. */
#include "test.h"

#include "lazyvm/fc_handshake.h"

#define MIB     (1024ull * 1024)
#define PAGE_2M (2 * MIB)

/* Copies s[0..len) into a fresh allocation of exactly len bytes. Zero bytes
 * become NULL, which any read would fault on. */
static char *exact_copy(const char *s, size_t len)
{
	char *p;

	if (!len)
		return NULL;
	p = malloc(len);
	if (!p) {
		fprintf(stderr, "  out of memory\n");
		exit(1);
	}
	memcpy(p, s, len);
	return p;
}

/* Parses s[0..len) and tells whether it failed with want_rc, left *out empty
 * and named the problem with a message containing want_msg. Prints what it got
 * otherwise, so CHECK(fails_with(...)) reports both the test's line and why. */
static int fails_with(const char *s, size_t len, uint64_t file_size, int want_rc,
                      const char *want_msg)
{
	struct fc_handshake hs = {.regions = (struct fc_region *)&hs, .nregions = 99};
	char err[512];
	char *copy = exact_copy(s, len);
	int rc;

	memset(err, 'X', sizeof(err));
	rc = fc_handshake_parse(copy, len, file_size, &hs, err, sizeof(err));
	free(copy);
	if (rc == want_rc && !hs.regions && hs.nregions == 0 && memchr(err, '\0', sizeof(err)) &&
	    strstr(err, want_msg))
		return 1;
	fprintf(stderr, "  input (%zu bytes): %.*s\n", len, (int)(len < 300 ? len : 300), s);
	fprintf(stderr, "  got rc %d, regions %p/%zu, error \"%.*s\"\n", rc, (void *)hs.regions,
	        hs.nregions, (int)sizeof(err), err);
	fprintf(stderr, "  want rc %d, error containing \"%s\"\n", want_rc, want_msg);
	if (rc == 0)
		fc_handshake_free(&hs);
	return 0;
}

/* Parses s[0..len) into *hs and tells whether it succeeded. */
static int parses(const char *s, size_t len, uint64_t file_size, struct fc_handshake *hs)
{
	char err[512] = "";
	char *copy = exact_copy(s, len);
	int rc;

	rc = fc_handshake_parse(copy, len, file_size, hs, err, sizeof(err));
	free(copy);
	if (rc == 0)
		return 1;
	fprintf(stderr, "  input (%zu bytes): %.*s\n", len, (int)(len < 300 ? len : 300), s);
	fprintf(stderr, "  rc %d: %s\n", rc, err);
	return 0;
}

/* fc_json_next, reduced to "complete, with only white space after it". */
static int complete(const char *s, size_t len)
{
	char *copy = exact_copy(s, len);
	size_t end = 0;
	int rc = fc_json_next(copy, len, &end);

	if (rc == 1)
		while (end < len && strchr(" \t\r\n", copy[end]) && copy[end])
			end++;
	free(copy);
	return rc == 1 && end < len ? -EINVAL : rc;
}

/* For string literals, which may hold NUL bytes. */
#define BAD(lit, rc, msg)             CHECK(fails_with(lit, sizeof(lit) - 1, 0, rc, msg))
#define BAD_FILE(lit, fsize, rc, msg) CHECK(fails_with(lit, sizeof(lit) - 1, fsize, rc, msg))
#define GOOD(lit, fsize, hs)          CHECK(parses(lit, sizeof(lit) - 1, fsize, hs))
#define COMPLETE(lit)                 complete(lit, sizeof(lit) - 1)

#define ONE                                                                                        \
	"[{\"base_host_virt_addr\":139999997952,\"size\":4096,\"offset\":0,\"page_size\":4096,"    \
	"\"page_size_kib\":4096}]"

/* Two regions the way Firecracker lays out a 3 GiB+ guest: a hole below 4 GiB. */
#define TWO                                                                                        \
	"[{\"base_host_virt_addr\":139637976727552,\"size\":3221225472,\"offset\":0,"              \
	"\"page_size\":4096,\"page_size_kib\":4096},"                                              \
	"{\"base_host_virt_addr\":139641271975936,\"size\":1073741824,\"offset\":3221225472,"      \
	"\"page_size\":4096,\"page_size_kib\":4096}]"

static void check_region(const struct fc_region *r, uint64_t base, uint64_t size, uint64_t off,
                         uint64_t ps)
{
	CHECK_EQ(r->base_host_virt_addr, base);
	CHECK_EQ(r->size, size);
	CHECK_EQ(r->offset, off);
	CHECK_EQ(r->page_size, ps);
}

static void good_one_region(void)
{
	struct fc_handshake hs;

	GOOD(ONE, 0, &hs);
	CHECK_EQ(hs.nregions, 1);
	check_region(&hs.regions[0], 139999997952ull, 4096, 0, 4096);
	fc_handshake_free(&hs);
	CHECK(hs.regions == NULL && hs.nregions == 0);
	fc_handshake_free(&hs); /* twice is harmless */
	fc_handshake_free(NULL);
}

static void good_several_regions(void)
{
	struct fc_handshake hs;

	GOOD(TWO, 4ull << 30, &hs);
	CHECK_EQ(hs.nregions, 2);
	check_region(&hs.regions[0], 139637976727552ull, 3ull << 30, 0, 4096);
	check_region(&hs.regions[1], 139641271975936ull, 1ull << 30, 3ull << 30, 4096);
	fc_handshake_free(&hs);
}

static void good_only_page_size(void)
{
	struct fc_handshake hs;

	GOOD("[{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":4096,\"page_size\":4096}]", 0,
	     &hs);
	CHECK_EQ(hs.nregions, 1);
	check_region(&hs.regions[0], 8192, 4096, 4096, 4096);
	fc_handshake_free(&hs);
}

static void good_only_page_size_kib(void)
{
	struct fc_handshake hs;

	/* Deprecated field, but older Firecracker sends only this one: in bytes. */
	GOOD("[{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":0,\"page_size_kib\":4096}]",
	     0, &hs);
	check_region(&hs.regions[0], 8192, 4096, 0, 4096);
	fc_handshake_free(&hs);
}

static void good_any_field_order(void)
{
	struct fc_handshake hs;

	GOOD("[{\"page_size_kib\":4096,\"offset\":4096,\"page_size\":4096,\"size\":8192,"
	     "\"base_host_virt_addr\":4096}]",
	     0, &hs);
	check_region(&hs.regions[0], 4096, 8192, 4096, 4096);
	fc_handshake_free(&hs);
}

static void good_whitespace_everywhere(void)
{
	struct fc_handshake hs;

	GOOD(" \t\r\n[ \n{ \"base_host_virt_addr\" \t: \r4096 ,\n\"size\"\n:\n4096\n,"
	     " \"offset\" : 0 , \"page_size\" : 4096 } ,\r\n{\"base_host_virt_addr\":8192,"
	     "\"size\":4096,\"offset\":4096,\"page_size\":4096}\t] \n\r\t ",
	     0, &hs);
	CHECK_EQ(hs.nregions, 2);
	check_region(&hs.regions[0], 4096, 4096, 0, 4096);
	check_region(&hs.regions[1], 8192, 4096, 4096, 4096);
	fc_handshake_free(&hs);
}

static void good_escaped_keys(void)
{
	struct fc_handshake hs;

	/* "si\u007ae" is "size"; every escape form that can spell a field name. */
	GOOD("[{\"base_host_virt_addr\":4096,\"si\\u007ae\":4096,\"\\u006Fffset\":0,"
	     "\"page\\u005fsize\":4096}]",
	     0, &hs);
	check_region(&hs.regions[0], 4096, 4096, 0, 4096);
	fc_handshake_free(&hs);
}

static void good_2m_pages(void)
{
	struct fc_handshake hs;

	GOOD("[{\"base_host_virt_addr\":140737486258176,\"size\":268435456,\"offset\":0,"
	     "\"page_size\":2097152,\"page_size_kib\":2097152},"
	     "{\"base_host_virt_addr\":140737754693632,\"size\":4194304,\"offset\":268435456,"
	     "\"page_size\":2097152,\"page_size_kib\":2097152}]",
	     272629760, &hs);
	CHECK_EQ(hs.nregions, 2);
	check_region(&hs.regions[0], 140737486258176ull, 256 * MIB, 0, PAGE_2M);
	check_region(&hs.regions[1], 140737754693632ull, 4 * MIB, 256 * MIB, PAGE_2M);
	fc_handshake_free(&hs);
}

static void good_mixed_page_sizes_and_max_values(void)
{
	struct fc_handshake hs;

	/* The highest page whose end still fits in 64 bits. */
	GOOD("[{\"base_host_virt_addr\":18446744073709543424,\"size\":4096,"
	     "\"offset\":18446744073709543424,\"page_size\":4096},"
	     "{\"base_host_virt_addr\":0,\"size\":2097152,\"offset\":0,\"page_size_kib\":2097152}]",
	     0, &hs);
	check_region(&hs.regions[0], UINT64_MAX - 8191, 4096, UINT64_MAX - 8191, 4096);
	check_region(&hs.regions[1], 0, PAGE_2M, 0, PAGE_2M);
	fc_handshake_free(&hs);
}

static void good_file_size_zero_is_unchecked(void)
{
	struct fc_handshake hs;

	GOOD("[{\"base_host_virt_addr\":4096,\"size\":1099511627776,\"offset\":1099511627776,"
	     "\"page_size\":4096}]",
	     0, &hs);
	CHECK_EQ(hs.regions[0].size, 1ull << 40);
	fc_handshake_free(&hs);
}

static void good_exact_fit_at_end_of_file(void)
{
	struct fc_handshake hs;

	GOOD(TWO, 4ull << 30, &hs);
	fc_handshake_free(&hs);
	BAD_FILE(TWO, (4ull << 30) - 4096, -EINVAL,
	         "region 1: file range [offset, offset+size) = [3221225472, 4294967296) ends "
	         "beyond the memory file (4294963200 bytes)");
	/* A file larger than needed is fine too (e.g. a snapshot with slack). */
	GOOD(TWO, (4ull << 30) + 1, &hs);
	fc_handshake_free(&hs);
}

static void good_overlap_boundaries(void)
{
	struct fc_handshake hs;

	/* Adjacent ranges touch but do not overlap, in both spaces. */
	GOOD("[{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":4096,\"page_size\":4096},"
	     "{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096}]",
	     8192, &hs);
	CHECK_EQ(hs.nregions, 2);
	fc_handshake_free(&hs);
}

/* n regions in descending address order with mixed page sizes and holes, the
 * file offsets being the running sum of sizes as Firecracker lays them out. */
static struct fc_region *make_regions(size_t n, uint64_t *file_size)
{
	struct fc_region *r = calloc(n, sizeof(*r));
	uint64_t off = 0, base = 1ull << 46;

	CHECK(r != NULL);
	for (size_t i = 0; i < n; i++) {
		uint64_t ps = i % 3 == 0 ? PAGE_2M : 4096;

		r[i].page_size = ps;
		r[i].size = ps * (1 + i % 5);
		base = (base - r[i].size - PAGE_2M * (i % 2)) / ps * ps;
		r[i].base_host_virt_addr = base;
		off = (off + ps - 1) / ps * ps;
		r[i].offset = off;
		off += r[i].size;
	}
	*file_size = off;
	return r;
}

static void good_format_parse_round_trip(void)
{
	size_t n = 300, cap = n * 200;
	uint64_t file_size;
	struct fc_region *r = make_regions(n, &file_size);
	char *buf = malloc(cap);
	struct fc_handshake hs;
	int len;

	CHECK(buf != NULL);
	len = fc_handshake_format(r, n, FC_SHAPE_V1_12, buf, cap);
	CHECK(len > 0);
	CHECK_EQ(strlen(buf), len);
	CHECK_EQ(complete(buf, (size_t)len), 1);
	CHECK(parses(buf, (size_t)len, file_size, &hs));
	CHECK_EQ(hs.nregions, n);
	for (size_t i = 0; i < n; i++)
		check_region(&hs.regions[i], r[i].base_host_virt_addr, r[i].size, r[i].offset,
		             r[i].page_size);
	CHECK_EQ(hs.has, FC_HAS_PAGE_SIZE | FC_HAS_PAGE_SIZE_KIB);
	fc_handshake_free(&hs);
	CHECK(
	    fails_with(buf, (size_t)len, file_size - 4096, -EINVAL, "ends beyond the memory file"));
	free(buf);
	free(r);
}

static void good_max_regions(void)
{
	size_t n = FC_HANDSHAKE_MAX_REGIONS, cap = (n + 1) * 200;
	uint64_t file_size;
	struct fc_region *r = make_regions(n + 1, &file_size);
	char *buf = malloc(cap);
	struct fc_handshake hs;
	int len;

	CHECK(buf != NULL);
	len = fc_handshake_format(r, n, FC_SHAPE_V1_12, buf, cap);
	CHECK(len > 0 && (size_t)len <= FC_HANDSHAKE_MAX_BYTES);
	CHECK(parses(buf, (size_t)len, 0, &hs));
	CHECK_EQ(hs.nregions, n);
	fc_handshake_free(&hs);

	len = fc_handshake_format(r, n + 1, FC_SHAPE_V1_12, buf, cap);
	CHECK(len > 0 && (size_t)len <= FC_HANDSHAKE_MAX_BYTES);
	CHECK(fails_with(buf, (size_t)len, 0, -E2BIG, "1025 regions, more than the 1024 allowed"));
	free(buf);
	free(r);
}

static void good_max_bytes(void)
{
	size_t len = FC_HANDSHAKE_MAX_BYTES;
	char *buf = malloc(len + 1);
	struct fc_handshake hs;

	CHECK(buf != NULL);
	memset(buf, ' ', len + 1);
	memcpy(buf, ONE, strlen(ONE));
	CHECK(parses(buf, len, 0, &hs));
	fc_handshake_free(&hs);
	CHECK(fails_with(buf, len + 1, 0, -E2BIG,
	                 "handshake is 262145 bytes, more than the 262144 allowed"));
	free(buf);
}

static void bad_oversized(void)
{
	size_t len = 300000;
	char *buf = malloc(len);

	CHECK(buf != NULL);
	memset(buf, ' ', len);
	memcpy(buf, ONE, strlen(ONE));
	CHECK(fails_with(buf, len, 0, -E2BIG,
	                 "handshake is 300000 bytes, more than the 262144 allowed"));
	free(buf);
}

static void bad_shape(void)
{
	BAD("", -EINVAL, "empty handshake (0 bytes)");
	BAD("   \n", -EINVAL, "truncated JSON: the handshake ends at byte 4");
	BAD("{\"size\":4096}", -EINVAL, "the handshake is an object, not a JSON array of regions");
	BAD("4096 ", -EINVAL, "the handshake is an integer, not a JSON array");
	BAD("[]", -EINVAL, "no regions");
	BAD(" [ \n ] ", -EINVAL, "no regions");
	BAD("[1]", -EINVAL, "region 0 is an integer, not a JSON object");
	BAD("[-1.5]", -EINVAL, "region 0 is a number that is not an integer, not a JSON object");
	BAD("[\"x\"]", -EINVAL, "region 0 is a string, not a JSON object");
	BAD("[null]", -EINVAL, "region 0 is null, not a JSON object");
	BAD("[[]]", -EINVAL, "region 0 is an array, not a JSON object");
	BAD("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096},true]",
	    -EINVAL, "region 1 is a boolean, not a JSON object");
	/* Syntax errors are json-c's, with the byte where it stopped. */
	BAD("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096},]",
	    -EINVAL, "invalid JSON at byte 70");
	BAD("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096}}",
	    -EINVAL, "invalid JSON at byte 69");
	BAD("[{\"base_host_virt_addr\" 4096}]", -EINVAL, "invalid JSON at byte 24");
	BAD("[{base_host_virt_addr:4096}]", -EINVAL, "invalid JSON at byte 2");
	BAD("[{\"size\":01}]", -EINVAL, "invalid JSON");
	BAD("[{\"size\":+4096}]", -EINVAL, "invalid JSON at byte 9");
	BAD("[{\"size\":.5}]", -EINVAL, "invalid JSON at byte 9");
	BAD("[{\"size\":0x1000}]", -EINVAL, "invalid JSON");
	BAD("[{}]", -EINVAL, "missing field \"base_host_virt_addr\" in region 0");
	BAD("GET / HTTP/1.1\r\n\r\n", -EINVAL, "invalid JSON at byte 0");
}

static void bad_trailing_garbage(void)
{
	BAD(ONE "x", -EINVAL, "trailing data at byte 99 after the handshake");
	BAD(ONE " \n" ONE, -EINVAL, "trailing data at byte 101");
	BAD(ONE "\0", -EINVAL, "trailing data");
	BAD(ONE "]", -EINVAL, "trailing data");
}

static void bad_values(void)
{
	BAD("[{\"size\":{}}]", -EINVAL,
	    "field \"size\" in region 0 is an object, not a non-negative integer");
	BAD("[{\"size\":[4096]}]", -EINVAL, "field \"size\" in region 0 is an array");
	BAD("[{\"size\":\"4096\"}]", -EINVAL, "field \"size\" in region 0 is a string");
	BAD("[{\"offset\":true}]", -EINVAL, "field \"offset\" in region 0 is a boolean");
	BAD("[{\"offset\":null}]", -EINVAL, "field \"offset\" in region 0 is null");
	BAD("[{\"size\":-4096}]", -EINVAL, "field \"size\" in region 0 is negative (-4096)");
	BAD("[{\"size\":4096.0}]", -EINVAL, "field \"size\" in region 0 has a fraction (4096.0)");
	BAD("[{\"size\":4e3}]", -EINVAL, "field \"size\" in region 0 has an exponent (4e3)");
	BAD("[{\"size\":4096E0}]", -EINVAL, "has an exponent");
	BAD("[{\"size\":18446744073709551616}]", -EINVAL,
	    "field \"size\" in region 0 is 18446744073709551615 or more, which does not fit in 64 "
	    "bits");
	BAD("[{\"size\":99999999999999999999999999999999999999999999999999999}]", -EINVAL,
	    "does not fit in 64 bits");
	BAD("[{\"page_size\":18446744073709551615}]", -EINVAL, "does not fit");
	BAD("[{"
	    "\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"is_guest_memfd\":1}]",
	    -EINVAL, "field \"is_guest_memfd\" in region 0 is an integer, not a boolean");
	BAD("[{"
	    "\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"gpa_start\":-1}]",
	    -EINVAL, "field \"gpa_start\" in region 0 is negative");
}

#define F_BASE "\"base_host_virt_addr\":4096"
#define F_SIZE "\"size\":4096"
#define F_OFF  "\"offset\":0"
#define F_PS   "\"page_size\":4096"
#define F_KIB  "\"page_size_kib\":4096"

static void bad_missing_fields(void)
{
	BAD("[{" F_SIZE "," F_OFF "," F_PS "}]", -EINVAL,
	    "missing field \"base_host_virt_addr\" in region 0");
	BAD("[{" F_BASE "," F_OFF "," F_PS "}]", -EINVAL, "missing field \"size\" in region 0");
	BAD("[{" F_BASE "," F_SIZE "," F_PS "}]", -EINVAL, "missing field \"offset\" in region 0");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":8192," F_SIZE ",\"offset\":4096," F_PS "},"
	    "{\"base_host_virt_addr\":12288," F_SIZE ",\"offset\":8192," F_PS "},"
	    "{\"base_host_virt_addr\":16384," F_SIZE "," F_PS "}]",
	    -EINVAL, "missing field \"offset\" in region 3");
	/* A misspelt required field is unknown, and the real one is missing. */
	BAD("[{" F_BASE ",\"Size\":4096," F_OFF "}]", -EINVAL,
	    "missing field \"size\" in region 0");
}

/* Firecracker v1.4-v1.6: no page size field at all, 4 KiB pages. */
static void good_v1_4_no_page_size(void)
{
	struct fc_handshake hs;

	GOOD("[{" F_BASE "," F_SIZE "," F_OFF "}]", 0, &hs);
	check_region(&hs.regions[0], 4096, 4096, 0, 4096);
	CHECK_EQ(hs.has, 0);
	fc_handshake_free(&hs);
	/* Implied 4 KiB pages still have to line up. */
	BAD("[{\"base_host_virt_addr\":4097," F_SIZE "," F_OFF "}]", -EINVAL,
	    "not a multiple of page_size 4096");
}

/* Unknown fields are accepted whatever their value, counted and named. */
static void good_unknown_fields(void)
{
	struct fc_handshake hs;

	GOOD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS ",\"foo\":1,\"nested\":{\"a\":[1,2]}},"
	     "{\"base_host_virt_addr\":8192," F_SIZE ",\"offset\":4096,\"Size\":\"x\",\"\":null,"
	     "\"bar\":-1.5,\"foo\":2}]",
	     0, &hs);
	CHECK_EQ(hs.nregions, 2);
	CHECK_EQ(hs.unknown_fields, 6);
	CHECK(strcmp(hs.unknown, "foo, nested, Size, \"\", bar") == 0);
	fc_handshake_free(&hs);
}

/* The secret-hiding branch's fields. */
static void good_secret_hiding(void)
{
	struct fc_region r[2] = {{.base_host_virt_addr = 1ull << 40,
	                          .size = 3ull << 30,
	                          .offset = 0,
	                          .page_size = 4096,
	                          .gpa_start = 0},
	                         {.base_host_virt_addr = (1ull << 40) + (4ull << 30),
	                          .size = 1ull << 30,
	                          .offset = 3ull << 30,
	                          .page_size = 4096,
	                          .gpa_start = 4ull << 30,
	                          .guest_memfd = true}};
	char buf[1024];
	struct fc_handshake hs;
	int len = fc_handshake_format(r, 2, FC_SHAPE_SECRET_HIDING, buf, sizeof(buf));

	CHECK(len > 0);
	CHECK(strstr(buf,
	             "\"offset\":0,\"gpa_start\":0,\"page_size\":4096,\"is_guest_memfd\":false,"
	             "\"page_size_kib\":4096}") != NULL);
	CHECK(parses(buf, (size_t)len, 4ull << 30, &hs));
	CHECK_EQ(hs.regions[1].gpa_start, 4ull << 30);
	CHECK(!hs.regions[0].guest_memfd && hs.regions[1].guest_memfd);
	CHECK_EQ(hs.has,
	         FC_HAS_PAGE_SIZE | FC_HAS_PAGE_SIZE_KIB | FC_HAS_GPA_START | FC_HAS_GUEST_MEMFD);
	CHECK_EQ(hs.unknown_fields, 0);
	fc_handshake_free(&hs);
}

/* Every release's shape, written then read back. */
static void good_every_shape(void)
{
	static const char *const want[] = {
	    [FC_SHAPE_V1_4] = "[{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":4096}]",
	    [FC_SHAPE_V1_7] = "[{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":4096,"
	                      "\"page_size_kib\":4096}]",
	    [FC_SHAPE_V1_12] = "[{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":4096,"
	                       "\"page_size\":4096,\"page_size_kib\":4096}]",
	};
	struct fc_region r = {
	    .base_host_virt_addr = 8192, .size = 4096, .offset = 4096, .page_size = 4096};
	struct fc_handshake hs;
	char buf[512];

	for (int s = FC_SHAPE_V1_4; s <= FC_SHAPE_V1_12; s++) {
		int len = fc_handshake_format(&r, 1, (enum fc_shape)s, buf, sizeof(buf));

		CHECK_EQ(len, strlen(want[s]));
		CHECK(strcmp(buf, want[s]) == 0);
		CHECK(parses(buf, (size_t)len, 8192, &hs));
		check_region(&hs.regions[0], 8192, 4096, 4096, 4096);
		fc_handshake_free(&hs);
	}
}

static void bad_page_sizes(void)
{
	BAD("[{" F_BASE "," F_SIZE "," F_OFF ",\"page_size\":4096,\"page_size_kib\":8192}]",
	    -EINVAL, "region 0: page_size (4096) and page_size_kib (8192) disagree");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF ",\"page_size_kib\":4,\"page_size\":4096}]", -EINVAL,
	    "region 0: page_size (4096) and page_size_kib (4) disagree");
	BAD("[{\"base_host_virt_addr\":8192,\"size\":8192," F_OFF ",\"page_size\":8192}]", -EINVAL,
	    "region 0: page_size 8192 is not supported (only 4096 or 2097152)");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF ",\"page_size_kib\":4}]", -EINVAL,
	    "region 0: page_size_kib 4 is not supported");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF ",\"page_size\":0}]", -EINVAL,
	    "region 0: page_size 0 is not supported");
	BAD("[{\"base_host_virt_addr\":0,\"size\":1073741824," F_OFF ",\"page_size\":1073741824}]",
	    -EINVAL, "page_size 1073741824 is not supported");
}

static void bad_alignment(void)
{
	BAD("[{\"base_host_virt_addr\":140000000001," F_SIZE "," F_OFF "," F_PS "}]", -EINVAL,
	    "region 0: field \"base_host_virt_addr\" is 0x2098a67801, not a multiple of page_size "
	    "4096");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":8192," F_SIZE ",\"offset\":4096," F_PS "},"
	    "{\"base_host_virt_addr\":16384,\"size\":4097,\"offset\":8192," F_PS "}]",
	    -EINVAL, "region 2: field \"size\" is 4097, not a multiple of page_size 4096");
	BAD("[{" F_BASE "," F_SIZE ",\"offset\":512," F_PS "}]", -EINVAL,
	    "region 0: field \"offset\" is 512, not a multiple of page_size 4096");
	/* 4 KiB-aligned is not enough for 2 MiB pages. */
	BAD("[{\"base_host_virt_addr\":4096,\"size\":2097152," F_OFF ",\"page_size\":2097152}]",
	    -EINVAL,
	    "field \"base_host_virt_addr\" is 0x1000, not a multiple of page_size 2097152");
	BAD("[{\"base_host_virt_addr\":0,\"size\":4096," F_OFF ",\"page_size\":2097152}]", -EINVAL,
	    "field \"size\" is 4096, not a multiple of page_size 2097152");
	BAD("[{\"base_host_virt_addr\":0,\"size\":2097152,\"offset\":1048576,"
	    "\"page_size_kib\":2097152}]",
	    -EINVAL, "field \"offset\" is 1048576, not a multiple of page_size 2097152");
}

static void bad_sizes_and_overflow(void)
{
	BAD("[{" F_BASE ",\"size\":0," F_OFF "," F_PS "}]", -EINVAL,
	    "region 0: field \"size\" is 0 (an empty region)");
	BAD("[{\"base_host_virt_addr\":18446744073709547520,\"size\":8192," F_OFF "," F_PS "}]",
	    -EINVAL,
	    "region 0: base_host_virt_addr 0xfffffffffffff000 + size 0x2000 overflows 64 bits");
	BAD("[{" F_BASE ",\"size\":8192,\"offset\":18446744073709547520," F_PS "}]", -EINVAL,
	    "region 0: offset 18446744073709547520 + size 8192 overflows 64 bits");
	BAD("[{\"base_host_virt_addr\":18446744073709547520," F_SIZE "," F_OFF "," F_PS "}]",
	    -EINVAL, "region 0: base_host_virt_addr 0xfffffffffffff000 + size 0x1000 overflows");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF ",\"gpa_start\":18446744073709547520}]", -EINVAL,
	    "region 0: gpa_start 0xfffffffffffff000 + size 0x1000 overflows 64 bits");
	/* Checked before the file size, so the file size cannot hide it. */
	BAD_FILE("[{" F_BASE ",\"size\":8192,\"offset\":18446744073709547520," F_PS "}]", 4096,
	         -EINVAL, "overflows 64 bits");
}

static void bad_beyond_file(void)
{
	BAD_FILE("[{" F_BASE ",\"size\":8192," F_OFF "," F_PS "}]", 4096, -EINVAL,
	         "region 0: file range [offset, offset+size) = [0, 8192) ends beyond the memory "
	         "file (4096 bytes)");
	BAD_FILE("[{" F_BASE "," F_SIZE ",\"offset\":4096," F_PS "}]", 4096, -EINVAL,
	         "[4096, 8192) ends beyond the memory file (4096 bytes)");
	BAD_FILE("[{" F_BASE ",\"size\":8192," F_OFF "," F_PS "}]", 8191, -EINVAL,
	         "ends beyond the memory file (8191 bytes)");
}

static void bad_overlaps(void)
{
	BAD("[{\"base_host_virt_addr\":4096,\"size\":8192," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":8192," F_PS "}]",
	    -EINVAL, "region 1 [0x2000, 0x3000) overlaps region 0 [0x1000, 0x3000)");
	BAD("[{\"base_host_virt_addr\":1048576,\"size\":4096," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":1044480,\"size\":8192,\"offset\":4096," F_PS "}]",
	    -EINVAL, "region 1 [0xff000, 0x101000) overlaps region 0 [0x100000, 0x101000)");
	BAD("[{\"base_host_virt_addr\":65536,\"size\":4096," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":4096," F_PS "},"
	    "{\"base_host_virt_addr\":16384,\"size\":4096,\"offset\":8192," F_PS "},"
	    "{\"base_host_virt_addr\":61440,\"size\":8192,\"offset\":12288," F_PS "}]",
	    -EINVAL, "region 3 [0xf000, 0x11000) overlaps region 0 [0x10000, 0x11000)");
	BAD("[{\"base_host_virt_addr\":0,\"size\":4194304," F_OFF ",\"page_size\":2097152},"
	    "{\"base_host_virt_addr\":2101248,\"size\":4096,\"offset\":4194304," F_PS "}]",
	    -EINVAL, "region 1 [0x201000, 0x202000) overlaps region 0 [0x0, 0x400000)");
	BAD("[{" F_BASE ",\"size\":8192," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":65536," F_SIZE ",\"offset\":4096," F_PS "}]",
	    -EINVAL,
	    "region 1: file range [4096, 8192) overlaps the file range [0, 8192) of region 0");
}

/* Every proper prefix of a valid message must fail cleanly: the reader hands
 * the parser whatever it has when the peer hangs up. */
static void check_prefixes_fail(const char *msg)
{
	size_t len = strlen(msg);

	for (size_t k = 0; k < len; k++) {
		char *copy = exact_copy(msg, k);
		struct fc_handshake hs = {.regions = (struct fc_region *)&hs, .nregions = 7};
		char err[256] = "";
		int rc = fc_handshake_parse(copy, k, 0, &hs, err, sizeof(err));

		free(copy);
		if (rc != -EINVAL || hs.regions || hs.nregions || !err[0]) {
			fprintf(stderr, "  prefix of %zu bytes: rc %d, error \"%s\"\n", k, rc, err);
			CHECK(0);
		}
		if (k && !strstr(err, "truncated JSON")) {
			fprintf(stderr, "  prefix of %zu bytes: \"%s\"\n", k, err);
			CHECK(0);
		}
	}
}

static void bad_truncated_everywhere(void)
{
	check_prefixes_fail(ONE);
	check_prefixes_fail(TWO);
	check_prefixes_fail("[{\"base_host_virt_addr\":4096,\"si\\u007ae\":4096,\"offset\":0,"
	                    "\"page\\u005fsize\":4096}]");
	check_prefixes_fail(
	    " \n[ { \"size\" : 4096 ,\t\"offset\" : 0 , \"base_host_virt_addr\" : 0 ,"
	    " \"page_size_kib\" : 2097152 } ]");
}

static void bad_error_buffer_edge_cases(void)
{
	struct fc_handshake hs;
	char err[8], big[128];
	int rc;

	memset(err, 'X', sizeof(err));
	rc = fc_handshake_parse("[]", 2, 0, &hs, err, sizeof(err));
	CHECK_EQ(rc, -EINVAL);
	CHECK(memchr(err, '\0', sizeof(err)) != NULL);
	CHECK(strncmp(err, "handsha", 7) == 0);
	memset(err, 'X', sizeof(err));
	CHECK_EQ(fc_handshake_parse("[]", 2, 0, &hs, err, 1), -EINVAL);
	CHECK_EQ(err[0], '\0');
	CHECK_EQ(err[1], 'X');
	CHECK_EQ(fc_handshake_parse("[]", 2, 0, &hs, NULL, 0), -EINVAL);
	CHECK_EQ(fc_handshake_parse(ONE, strlen(ONE), 0, NULL, err, sizeof(err)), -EINVAL);
	CHECK_EQ(fc_handshake_parse(NULL, 5, 0, &hs, err, sizeof(err)), -EINVAL);
	CHECK_EQ(fc_handshake_parse(NULL, 0, 0, &hs, big, sizeof(big)), -EINVAL);
	CHECK(strcmp(big, "empty handshake (0 bytes)") == 0);
	CHECK_EQ(fc_handshake_parse(ONE, 0, 0, &hs, big, sizeof(big)), -EINVAL);
	CHECK(strcmp(big, "empty handshake (0 bytes)") == 0);
	CHECK(hs.regions == NULL && hs.nregions == 0);
	strcpy(err, "stale");
	CHECK_OK(fc_handshake_parse(ONE, strlen(ONE), 0, &hs, err, sizeof(err)));
	CHECK_EQ(err[0], '\0');
	fc_handshake_free(&hs);
}

static void complete_basic(void)
{
	CHECK_EQ(COMPLETE(ONE), 1);
	CHECK_EQ(COMPLETE(ONE "\n"), 1);
	CHECK_EQ(COMPLETE(" \t\r\n" ONE " \t\r\n"), 1);
	CHECK_EQ(COMPLETE(TWO), 1);
	CHECK_EQ(COMPLETE("[]"), 1);
	CHECK_EQ(COMPLETE("{}"), 1);
	CHECK_EQ(COMPLETE("[1, -2.5e+3, 0, 0.0, 1E9, true, false, null, \"s\", {\"a\": [{}]}]"), 1);
	CHECK_EQ(COMPLETE("\"x\""), 1);
	CHECK_EQ(COMPLETE("true"), 0); /* json-c waits for what follows a literal too */
	CHECK_EQ(COMPLETE("true "), 1);
	CHECK_EQ(COMPLETE("123"), 0); /* more digits may follow */
	CHECK_EQ(COMPLETE("123 "), 1);
}

static void complete_incomplete(void)
{
	CHECK_EQ(COMPLETE(""), 0);
	CHECK_EQ(COMPLETE(" \n\t\r"), 0);
	CHECK_EQ(COMPLETE("["), 0);
	CHECK_EQ(COMPLETE("[{"), 0);
	CHECK_EQ(COMPLETE("[{\"size\""), 0);
	CHECK_EQ(COMPLETE("[{\"size\":"), 0);
	CHECK_EQ(COMPLETE("[{\"size\":1"), 0);
	CHECK_EQ(COMPLETE("[{\"size\":1}"), 0);
	CHECK_EQ(COMPLETE("[{\"size\":1},"), 0);
	CHECK_EQ(COMPLETE("tru"), 0);
	CHECK_EQ(COMPLETE("\"\\u12"), 0);
}

static void complete_garbage(void)
{
	CHECK_EQ(COMPLETE("x"), -EINVAL);
	CHECK_EQ(COMPLETE("]"), -EINVAL);
	CHECK_EQ(COMPLETE("}"), -EINVAL);
	CHECK_EQ(COMPLETE("[}"), -EINVAL);
	CHECK_EQ(COMPLETE("[1,]"), -EINVAL);
	CHECK_EQ(COMPLETE("{\"a\" 1}"), -EINVAL);
	CHECK_EQ(COMPLETE("[1 2]"), -EINVAL);
	CHECK_EQ(COMPLETE("[01]"), -EINVAL);
	CHECK_EQ(COMPLETE(ONE "x"), -EINVAL); /* complete, then not white space */
}

/* The stream: one value after another, each found where it ends. */
static void next_stream(void)
{
	static const char two[] = ONE "{\"vcpu\":1,\"offset\":4096,\"flags\":0,\"gpa\":null}";
	size_t end;

	CHECK_EQ(fc_json_next(two, sizeof(two) - 1, &end), 1);
	CHECK_EQ(end, strlen(ONE));
	CHECK_EQ(fc_json_next(two + end, sizeof(two) - 1 - end, &end), 1);
	CHECK_EQ(end, sizeof(two) - 1 - strlen(ONE));
	CHECK_EQ(fc_json_next(two, 10, &end), 0);
	CHECK_EQ(fc_json_next("]", 1, &end), -EINVAL);
	CHECK_EQ(fc_json_next(NULL, 0, &end), 0);
}

static void complete_strings_hide_structure(void)
{
	CHECK_EQ(COMPLETE("[\"]}\"]"), 1);
	CHECK_EQ(COMPLETE("[\"]}\""), 0);
	CHECK_EQ(COMPLETE("{\"}\":\"{\"}"), 1);
	CHECK_EQ(COMPLETE("[\"\\\"]\"]"), 1);
	CHECK_EQ(COMPLETE("[\"\\\"]"), 0);
	CHECK_EQ(COMPLETE("[\"\\\\\"]"), 1);
}

static void complete_depth_limit(void)
{
	char buf[200];

	/* json-c's own bound on nesting: deep input is refused, never recursed into
	 * without limit. */
	memset(buf, '[', 200);
	CHECK_EQ(complete(buf, 200), -EINVAL);
	memset(buf, '[', 16);
	memset(buf + 16, ']', 16);
	CHECK_EQ(complete(buf, 32), 1);
}

static void fault_request(void)
{
	struct fc_fault_request q;
	char err[200], out[256];
	static const char req[] = "{\"vcpu\":1,\"offset\":8192,\"flags\":3,\"gpa\":4096}";
	static const char no_gpa[] = "{\"vcpu\":0,\"offset\":0,\"flags\":0,\"gpa\":null,\"new\":1}";

	CHECK_EQ(fc_fault_request_parse(req, sizeof(req) - 1, &q, err, sizeof(err)), 1);
	CHECK(q.vcpu == 1 && q.offset == 8192 && q.flags == 3 && q.has_gpa && q.gpa == 4096);
	CHECK(fc_fault_reply_format(&q, 8192, 4096, false, out, sizeof(out)) > 0);
	CHECK(strcmp(out, "{\"vcpu\":1,\"offset\":8192,\"len\":4096,\"flags\":3,\"gpa\":4096,"
	                  "\"zero\":false}") == 0);
	CHECK_EQ(fc_fault_request_parse(no_gpa, sizeof(no_gpa) - 1, &q, err, sizeof(err)), 1);
	CHECK(!q.has_gpa);
	CHECK(fc_fault_reply_format(&q, 0, 4096, true, out, sizeof(out)) > 0);
	CHECK(strstr(out, "\"gpa\":null,\"zero\":true}") != NULL);
	/* The JSON protocol's requests carried "token", which comes back. */
	CHECK_EQ(fc_fault_request_parse("{\"vcpu\":2,\"offset\":0,\"flags\":1,\"token\":7}", 41, &q,
	                                err, sizeof(err)),
	         1);
	CHECK(q.has_token && q.token == 7 && !q.has_gpa);
	CHECK(fc_fault_reply_format(&q, 0, 4096, false, out, sizeof(out)) > 0);
	CHECK(strcmp(out, "{\"vcpu\":2,\"offset\":0,\"len\":4096,\"flags\":1,\"token\":7,"
	                  "\"zero\":false}") == 0);
	CHECK_EQ(fc_fault_request_parse("[1]", 3, &q, err, sizeof(err)), 0);
	CHECK(strstr(err, "not a fault request (an array)") != NULL);
	CHECK_EQ(fc_fault_request_parse("{\"offset\":1,\"flags\":0}", 22, &q, err, sizeof(err)),
	         -EINVAL);
	CHECK(strstr(err, "fault request without \"vcpu\"") != NULL);
	CHECK_EQ(fc_fault_request_parse("{\"vcpu\":4294967296,\"offset\":1,\"flags\":0}", 40, &q,
	                                err, sizeof(err)),
	         -EINVAL);
	CHECK(strstr(err, "not a u32") != NULL);
	CHECK_EQ(fc_fault_reply_format(&q, 0, 4096, true, out, 10), -ENOSPC);
	CHECK_EQ(out[0], '\0');
}

static void format_example(void)
{
	static const char want[] = "[{\"base_host_virt_addr\":140000000000,\"size\":4096,"
	                           "\"offset\":0,\"page_size\":4096,\"page_size_kib\":4096}]";
	struct fc_region r = {
	    .base_host_virt_addr = 140000000000ull, .size = 4096, .page_size = 4096};
	char buf[256];
	int len = fc_handshake_format(&r, 1, FC_SHAPE_V1_12, buf, sizeof(buf));

	/* The writer copies, it does not judge: that base is not page-aligned. */
	CHECK_EQ(len, strlen(want));
	CHECK(strcmp(buf, want) == 0);
	r.base_host_virt_addr = 139999997952ull;
	CHECK_EQ(fc_handshake_format(&r, 1, FC_SHAPE_V1_12, buf, sizeof(buf)), strlen(ONE));
	CHECK(strcmp(buf, ONE) == 0);
	CHECK_EQ(fc_handshake_format(NULL, 0, FC_SHAPE_V1_12, buf, sizeof(buf)), 2);
	CHECK(strcmp(buf, "[]") == 0);
	CHECK_EQ(fc_handshake_format(NULL, 1, FC_SHAPE_V1_12, buf, sizeof(buf)), -EINVAL);
}

static void format_enospc(void)
{
	struct fc_region r[2] = {
	    {.base_host_virt_addr = 4096, .size = 4096, .page_size = 4096},
	    {.base_host_virt_addr = 8192, .size = 2097152, .offset = 4096, .page_size = 2097152}};
	char buf[512];
	int len = fc_handshake_format(r, 2, FC_SHAPE_V1_12, buf, sizeof(buf));

	CHECK(len > 0);
	/* Exactly enough room includes the NUL; one byte less is -ENOSPC, at
	 * every size, and the buffer is left an empty string. */
	CHECK_EQ(fc_handshake_format(r, 2, FC_SHAPE_V1_12, buf, (size_t)len + 1), len);
	for (size_t cap = 1; cap <= (size_t)len; cap++) {
		memset(buf, 'X', sizeof(buf));
		CHECK_EQ(fc_handshake_format(r, 2, FC_SHAPE_V1_12, buf, cap), -ENOSPC);
		CHECK_EQ(buf[0], '\0');
		CHECK_EQ(buf[cap], 'X');
	}
	CHECK_EQ(fc_handshake_format(r, 2, FC_SHAPE_V1_12, buf, 0), -ENOSPC);
	CHECK_EQ(fc_handshake_format(r, 2, FC_SHAPE_V1_12, NULL, 100), -ENOSPC);
}

TEST_MAIN(TEST(good_one_region), TEST(good_several_regions), TEST(good_only_page_size),
          TEST(good_only_page_size_kib), TEST(good_any_field_order),
          TEST(good_whitespace_everywhere), TEST(good_escaped_keys), TEST(good_2m_pages),
          TEST(good_mixed_page_sizes_and_max_values), TEST(good_file_size_zero_is_unchecked),
          TEST(good_exact_fit_at_end_of_file), TEST(good_overlap_boundaries),
          TEST(good_format_parse_round_trip), TEST(good_max_regions), TEST(good_max_bytes),
          TEST(good_v1_4_no_page_size), TEST(good_unknown_fields), TEST(good_secret_hiding),
          TEST(good_every_shape), TEST(bad_oversized), TEST(bad_shape), TEST(bad_trailing_garbage),
          TEST(bad_values), TEST(bad_missing_fields), TEST(bad_page_sizes), TEST(bad_alignment),
          TEST(bad_sizes_and_overflow), TEST(bad_beyond_file), TEST(bad_overlaps),
          TEST(bad_truncated_everywhere), TEST(bad_error_buffer_edge_cases), TEST(complete_basic),
          TEST(complete_incomplete), TEST(complete_garbage), TEST(next_stream),
          TEST(complete_strings_hide_structure), TEST(complete_depth_limit), TEST(fault_request),
          TEST(format_example), TEST(format_enospc))
