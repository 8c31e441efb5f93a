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
	struct fc_handshake hs = {(struct fc_region *)&hs, 99};
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

static int complete(const char *s, size_t len)
{
	char *copy = exact_copy(s, len);
	int rc = fc_handshake_complete(copy, len);

	free(copy);
	return rc;
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
	len = fc_handshake_format(r, n, buf, cap);
	CHECK(len > 0);
	CHECK_EQ(strlen(buf), len);
	CHECK_EQ(complete(buf, (size_t)len), 1);
	CHECK(parses(buf, (size_t)len, file_size, &hs));
	CHECK_EQ(hs.nregions, n);
	CHECK(memcmp(hs.regions, r, n * sizeof(*r)) == 0);
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
	len = fc_handshake_format(r, n, buf, cap);
	CHECK(len > 0 && (size_t)len <= FC_HANDSHAKE_MAX_BYTES);
	CHECK(parses(buf, (size_t)len, 0, &hs));
	CHECK_EQ(hs.nregions, n);
	fc_handshake_free(&hs);

	len = fc_handshake_format(r, n + 1, buf, cap);
	CHECK(len > 0 && (size_t)len <= FC_HANDSHAKE_MAX_BYTES);
	CHECK(fails_with(buf, (size_t)len, 0, -E2BIG, "more than 1024 regions"));
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
	BAD("", -EINVAL, "empty handshake");
	BAD("   \n", -EINVAL, "truncated JSON at byte 4: expected '['");
	BAD("{\"size\":4096}", -EINVAL, "invalid JSON at byte 0: expected '['");
	BAD("4096", -EINVAL, "expected '[' (the handshake is a JSON array of regions), found '4'");
	BAD("[]", -EINVAL, "no regions");
	BAD(" [ \n ] ", -EINVAL, "no regions");
	BAD("[1]", -EINVAL, "region 0 is a number, not a JSON object");
	BAD("[-1]", -EINVAL, "region 0 is a number, not a JSON object");
	BAD("[\"x\"]", -EINVAL, "region 0 is a string, not a JSON object");
	BAD("[null]", -EINVAL, "region 0 is null, not a JSON object");
	BAD("[[]]", -EINVAL, "region 0 is an array, not a JSON object");
	BAD("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096},true]",
	    -EINVAL, "region 1 is a boolean, not a JSON object");
	BAD("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096},]",
	    -EINVAL, "invalid JSON at byte 70: expected '{' (a region object), found ']'");
	BAD("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096}}",
	    -EINVAL, "expected ',' or ']', found '}'");
	BAD("[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"page_size\":4096,}]",
	    -EINVAL, "expected '\"' (a field name), found '}'");
	BAD("[{\"base_host_virt_addr\" 4096}]", -EINVAL, "expected ':', found '4'");
	BAD("[{\"base_host_virt_addr\":4096 \"size\":4096}]", -EINVAL,
	    "expected ',' or '}', found '\"'");
	BAD("[{base_host_virt_addr:4096}]", -EINVAL, "expected '\"' (a field name), found 'b'");
	BAD("[{'size':4096}]", -EINVAL, "found '''");
	BAD("[{}]", -EINVAL, "missing field \"base_host_virt_addr\" in region 0");
}

static void bad_trailing_garbage(void)
{
	BAD(ONE "x", -EINVAL, "trailing data at byte 99 after the JSON array");
	BAD(ONE " \n" ONE, -EINVAL, "trailing data at byte 101");
	BAD(ONE "\0", -EINVAL, "trailing data");
	BAD(ONE "]", -EINVAL, "trailing data");
}

static void bad_values(void)
{
	BAD("[{\"size\":{}}]", -EINVAL,
	    "field \"size\" in region 0 is an object, not a non-negative integer (at byte 9)");
	BAD("[{\"size\":{\"size\":{\"size\":{}}}}]", -EINVAL, "is an object");
	BAD("[{\"size\":[4096]}]", -EINVAL, "field \"size\" in region 0 is an array");
	BAD("[{\"size\":\"4096\"}]", -EINVAL, "field \"size\" in region 0 is a string");
	BAD("[{\"offset\":true}]", -EINVAL, "field \"offset\" in region 0 is a boolean");
	BAD("[{\"offset\":false}]", -EINVAL, "field \"offset\" in region 0 is a boolean");
	BAD("[{\"offset\":null}]", -EINVAL, "field \"offset\" in region 0 is null");
	BAD("[{\"offset\":nul}]", -EINVAL, "expected a number, found 'n'");
	BAD("[{\"offset\":}]", -EINVAL, "expected a number, found '}'");
	BAD("[{\"size\":-4096}]", -EINVAL, "field \"size\" in region 0 is negative");
	BAD("[{\"size\":-0}]", -EINVAL, "field \"size\" in region 0 is negative");
	BAD("[{\"size\":-x}]", -EINVAL, "expected a number, found '-'");
	BAD("[{\"size\":+4096}]", -EINVAL, "expected a number, found '+'");
	BAD("[{\"size\":4096.0}]", -EINVAL, "field \"size\" in region 0 has a fraction");
	BAD("[{\"size\":4096.}]", -EINVAL, "has a fraction");
	BAD("[{\"size\":.5}]", -EINVAL, "expected a number, found '.'");
	BAD("[{\"size\":4e3}]", -EINVAL, "field \"size\" in region 0 has an exponent");
	BAD("[{\"size\":4096E0}]", -EINVAL, "has an exponent");
	BAD("[{\"size\":01}]", -EINVAL, "field \"size\" in region 0 has a leading zero");
	BAD("[{\"size\":00}]", -EINVAL, "has a leading zero");
	BAD("[{\"size\":0x1000}]", -EINVAL, "expected ',' or '}', found 'x'");
	BAD("[{\"size\":18446744073709551616}]", -EINVAL,
	    "field \"size\" in region 0 is 18446744073709551616, which does not fit in 64 bits");
	BAD("[{\"size\":99999999999999999999999999999999999999999999999999999}]", -EINVAL,
	    "is 9999999999999999999999999999999999999999..., which does not fit");
	BAD("[{\"size\":Infinity}]", -EINVAL, "expected a number, found 'I'");
	/* The largest u64 itself is fine as a number (it fails later: unaligned). */
	BAD("[{\"base_host_virt_addr\":0,\"size\":18446744073709551615,\"offset\":0,"
	    "\"page_size\":4096}]",
	    -EINVAL,
	    "region 0: field \"size\" is 18446744073709551615, not a multiple of page_size");
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
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "}]", -EINVAL,
	    "missing field \"page_size\" (or \"page_size_kib\") in region 0");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":8192," F_SIZE ",\"offset\":4096," F_PS "},"
	    "{\"base_host_virt_addr\":12288," F_SIZE ",\"offset\":8192," F_PS "},"
	    "{\"base_host_virt_addr\":16384," F_SIZE "," F_PS "}]",
	    -EINVAL, "missing field \"offset\" in region 3");
}

static void bad_duplicate_and_unknown_fields(void)
{
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS "," F_SIZE "}]", -EINVAL,
	    "duplicate field \"size\" in region 0 at byte 69");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS "," F_KIB "," F_KIB "}]", -EINVAL,
	    "duplicate field \"page_size_kib\" in region 0");
	/* A duplicate spelled differently is still the same field. */
	BAD("[{" F_BASE "," F_SIZE ",\"si\\u007ae\":4096}]", -EINVAL,
	    "duplicate field \"size\" in region 0");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS ",\"foo\":1}]", -EINVAL,
	    "unknown field \"foo\" in region 0");
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS "},{\"Size\":4096}]", -EINVAL,
	    "unknown field \"Size\" in region 1");
	BAD("[{\"\":1}]", -EINVAL, "unknown field \"\" in region 0");
	BAD("[{\"size \":1}]", -EINVAL, "unknown field \"size \" in region 0");
	/* Keys are matched on their decoded bytes: a NUL inside does not truncate. */
	BAD("[{\"size\\u0000\":1}]", -EINVAL, "unknown field \"size\\x00\" in region 0");
	BAD("[{\"a\\\"b\\\\c\\n\":1}]", -EINVAL, "unknown field \"a\\\"b\\\\c\\x0a\"");
	BAD("[{\"\\u00e9t\\u00e9\":1}]", -EINVAL, "unknown field \"\\xc3\\xa9t\\xc3\\xa9\"");
	BAD("[{\"\\ud83d\\ude00\":1}]", -EINVAL, "unknown field \"\\xf0\\x9f\\x98\\x80\"");
	BAD("[{\"\\u20AC\":1}]", -EINVAL, "unknown field \"\\xe2\\x82\\xac\"");
	BAD("[{\"base_host_virt_addr_and_then_some_more_text_to_be_long\":1}]", -EINVAL,
	    "unknown field \"base_host_virt_addr_and_then_some_more_t...\" in region 0");
	/* An unknown field is refused even when its value is not a number. */
	BAD("[{\"nested\":{\"a\":[1,2]}}]", -EINVAL, "unknown field \"nested\" in region 0");
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
	/* A range ending exactly at 2^64 has an end that does not fit either. */
	BAD("[{\"base_host_virt_addr\":18446744073709547520," F_SIZE "," F_OFF "," F_PS "}]",
	    -EINVAL, "region 0: base_host_virt_addr 0xfffffffffffff000 + size 0x1000 overflows");
	BAD("[{" F_BASE "," F_SIZE ",\"offset\":18446744073709547520," F_PS "}]", -EINVAL,
	    "region 0: offset 18446744073709547520 + size 4096 overflows 64 bits");
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
	/* A file size that is not a page multiple: the last partial page is unusable. */
	BAD_FILE("[{" F_BASE ",\"size\":8192," F_OFF "," F_PS "}]", 8191, -EINVAL,
	         "ends beyond the memory file (8191 bytes)");
}

static void bad_overlaps(void)
{
	BAD("[{\"base_host_virt_addr\":4096,\"size\":8192," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":8192," F_PS "}]",
	    -EINVAL, "region 1 [0x2000, 0x3000) overlaps region 0 [0x1000, 0x3000)");
	/* Region 1 lies below region 0 in the address space: found by sorting. */
	BAD("[{\"base_host_virt_addr\":1048576,\"size\":4096," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":1044480,\"size\":8192,\"offset\":4096," F_PS "}]",
	    -EINVAL, "region 1 [0xff000, 0x101000) overlaps region 0 [0x100000, 0x101000)");
	/* Far apart in the array, and the overlap is with a region further down. */
	BAD("[{\"base_host_virt_addr\":65536,\"size\":4096," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":8192,\"size\":4096,\"offset\":4096," F_PS "},"
	    "{\"base_host_virt_addr\":16384,\"size\":4096,\"offset\":8192," F_PS "},"
	    "{\"base_host_virt_addr\":61440,\"size\":8192,\"offset\":12288," F_PS "}]",
	    -EINVAL, "region 3 [0xf000, 0x11000) overlaps region 0 [0x10000, 0x11000)");
	/* Identical ranges. */
	BAD("[{" F_BASE "," F_SIZE "," F_OFF "," F_PS "},{" F_BASE "," F_SIZE
	    ",\"offset\":4096," F_PS "}]",
	    -EINVAL, "region 1 [0x1000, 0x2000) overlaps region 0 [0x1000, 0x2000)");
	/* One range inside a bigger one, mixing page sizes. */
	BAD("[{\"base_host_virt_addr\":0,\"size\":4194304," F_OFF ",\"page_size\":2097152},"
	    "{\"base_host_virt_addr\":2101248,\"size\":4096,\"offset\":4194304," F_PS "}]",
	    -EINVAL, "region 1 [0x201000, 0x202000) overlaps region 0 [0x0, 0x400000)");
	BAD("[{" F_BASE ",\"size\":8192," F_OFF "," F_PS "},"
	    "{\"base_host_virt_addr\":65536," F_SIZE ",\"offset\":4096," F_PS "}]",
	    -EINVAL,
	    "region 1: file range [4096, 8192) overlaps the file range [0, 8192) of region 0");
	BAD("[{\"base_host_virt_addr\":65536," F_SIZE ",\"offset\":8192," F_PS "},"
	    "{" F_BASE ",\"size\":12288," F_OFF "," F_PS "}]",
	    -EINVAL,
	    "region 1: file range [0, 12288) overlaps the file range [8192, 12288) of region 0");
}

static void bad_strings(void)
{
	BAD("[{\"size", -EINVAL,
	    "truncated JSON at byte 7: unterminated string (opened at byte 2)");
	BAD("[{\"si\\qze\":1}]", -EINVAL, "invalid JSON at byte 5: invalid escape '\\q'");
	BAD("[{\"si\\'ze\":1}]", -EINVAL, "invalid escape '\\''");
	BAD("[{\"si\\u00g1ze\":1}]", -EINVAL, "expected a hex digit of a \\u escape, found 'g'");
	BAD("[{\"si\\u00", -EINVAL, "truncated JSON at byte 9: expected a hex digit");
	BAD("[{\"si\\", -EINVAL, "truncated JSON at byte 6: expected an escape character");
	BAD("[{\"si\\\x01", -EINVAL, "expected an escape character after '\\', found byte 0x01");
	BAD("[{\"si\nze\":1}]", -EINVAL,
	    "invalid JSON at byte 5: control character 0x0a inside a string");
	BAD("[{\"si\tze\":1}]", -EINVAL, "control character 0x09");
	BAD("[{\"si\x1fze\":1}]", -EINVAL, "control character 0x1f");
	BAD("[{\"si\0ze\":1}]", -EINVAL, "control character 0x00 inside a string");
	BAD("[{\"size\":4096\0}]", -EINVAL, "expected ',' or '}', found byte 0x00");
	BAD("\0[]", -EINVAL,
	    "expected '[' (the handshake is a JSON array of regions), found byte 0x00");
	BAD("\xef\xbb\xbf[]", -EINVAL, "found byte 0xef");
	BAD("[{\"\\udc00\":1}]", -EINVAL, "invalid JSON at byte 3: unpaired surrogate \\udc00");
	BAD("[{\"\\ud800\":1}]", -EINVAL, "unpaired surrogate \\ud800");
	BAD("[{\"\\ud800\\n\":1}]", -EINVAL, "unpaired surrogate \\ud800");
	BAD("[{\"\\ud800\\u0041\":1}]", -EINVAL, "\\u0041 is not the low half of a surrogate pair");
	BAD("[{\"\\ud800\\udcx0\":1}]", -EINVAL, "expected a hex digit of a \\u escape, found 'x'");
	BAD("[{\"\\ud800", -EINVAL, "truncated JSON");
	BAD("[{\"\\ud800\\", -EINVAL, "truncated JSON");
}

/* Every proper prefix of a valid message must fail cleanly: the reader hands
 * the parser whatever it has when the peer hangs up. */
static void check_prefixes_fail(const char *msg)
{
	size_t len = strlen(msg);

	for (size_t k = 0; k < len; k++) {
		char *copy = exact_copy(msg, k);
		struct fc_handshake hs = {(struct fc_region *)&hs, 7};
		char err[256] = "";
		int rc = fc_handshake_parse(copy, k, 0, &hs, err, sizeof(err));

		free(copy);
		if (rc != -EINVAL || hs.regions || hs.nregions || !err[0]) {
			fprintf(stderr, "  prefix of %zu bytes: rc %d, error \"%s\"\n", k, rc, err);
			CHECK(0);
		}
		/* The shape is fine up to the cut, so the error must not blame a byte. */
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

	/* Tiny and absent error buffers still get a NUL-terminated message (or none). */
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
	/* A successful parse clears a stale message. */
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
	/* Scalars at the top level. */
	CHECK_EQ(COMPLETE("\"x\""), 1);
	CHECK_EQ(COMPLETE("true"), 1);
	CHECK_EQ(COMPLETE("null "), 1);
	CHECK_EQ(COMPLETE("123"), 0); /* more digits may follow */
	CHECK_EQ(COMPLETE("123 "), 1);
	CHECK_EQ(COMPLETE("0\n"), 1);
	CHECK_EQ(COMPLETE("-1.5e-7 "), 1);
	CHECK_EQ(COMPLETE("[12.345e678,0E0,-0.0]"), 1);
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
	CHECK_EQ(COMPLETE("-"), 0);
	CHECK_EQ(COMPLETE("1."), 0);
	CHECK_EQ(COMPLETE("1e"), 0);
	CHECK_EQ(COMPLETE("1e-"), 0);
	CHECK_EQ(COMPLETE("\"\\u12"), 0);
}

static void complete_garbage(void)
{
	CHECK_EQ(COMPLETE("x"), -EINVAL);
	CHECK_EQ(COMPLETE("]"), -EINVAL);
	CHECK_EQ(COMPLETE("}"), -EINVAL);
	CHECK_EQ(COMPLETE(","), -EINVAL);
	CHECK_EQ(COMPLETE("\0"), -EINVAL);
	CHECK_EQ(COMPLETE("\xef\xbb\xbf[]"), -EINVAL);
	CHECK_EQ(COMPLETE(ONE "x"), -EINVAL);
	CHECK_EQ(COMPLETE(ONE " " ONE), -EINVAL);
	CHECK_EQ(COMPLETE("[}"), -EINVAL);
	CHECK_EQ(COMPLETE("{]"), -EINVAL);
	CHECK_EQ(COMPLETE("[1}"), -EINVAL);
	CHECK_EQ(COMPLETE("{\"a\":1]"), -EINVAL);
	CHECK_EQ(COMPLETE("[1,]"), -EINVAL);
	CHECK_EQ(COMPLETE("[,1]"), -EINVAL);
	CHECK_EQ(COMPLETE("{\"a\":1,}"), -EINVAL);
	CHECK_EQ(COMPLETE("{\"a\" 1}"), -EINVAL);
	CHECK_EQ(COMPLETE("{1:2}"), -EINVAL);
	CHECK_EQ(COMPLETE("[1 2]"), -EINVAL);
	CHECK_EQ(COMPLETE("[01]"), -EINVAL);
	CHECK_EQ(COMPLETE("[+1]"), -EINVAL);
	CHECK_EQ(COMPLETE("[.5]"), -EINVAL);
	CHECK_EQ(COMPLETE("[1.e5]"), -EINVAL);
	CHECK_EQ(COMPLETE("[1e+]"), -EINVAL);
	CHECK_EQ(COMPLETE("[-]"), -EINVAL);
	CHECK_EQ(COMPLETE("[trux]"), -EINVAL);
	CHECK_EQ(COMPLETE("[nul]"), -EINVAL);
	CHECK_EQ(COMPLETE("[\"a\nb\"]"), -EINVAL);
	CHECK_EQ(COMPLETE("[\"\\x\"]"), -EINVAL);
	CHECK_EQ(COMPLETE("[\"\\u12g4\"]"), -EINVAL);
	CHECK_EQ(COMPLETE("[\"\\\0\"]"), -EINVAL);
	CHECK_EQ(COMPLETE("123 4"), -EINVAL);
	CHECK_EQ(COMPLETE("\"a\"\"b\""), -EINVAL);
}

static void complete_strings_hide_structure(void)
{
	CHECK_EQ(COMPLETE("[\"]}\"]"), 1);
	CHECK_EQ(COMPLETE("[\"]}\""), 0);
	CHECK_EQ(COMPLETE("[\"]"), 0);
	CHECK_EQ(COMPLETE("{\"}\":\"{\"}"), 1);
	CHECK_EQ(COMPLETE("[\"[[[[\"]"), 1);
	/* An escaped quote does not end the string; an escaped backslash does not
	 * escape the quote after it. */
	CHECK_EQ(COMPLETE("[\"\\\"]\"]"), 1);
	CHECK_EQ(COMPLETE("[\"\\\"]"), 0);
	CHECK_EQ(COMPLETE("[\"\\\\\"]"), 1);
	CHECK_EQ(COMPLETE("[\"\\\\\\\"]"), 0);
	CHECK_EQ(COMPLETE("[\"\\u005d\"]"), 1);
	CHECK_EQ(COMPLETE("[\"\xc3\xa9\xff\"]"), 1); /* bytes >= 0x80 pass */
}

static void complete_depth_limit(void)
{
	char buf[200];

	memset(buf, '[', 64);
	memset(buf + 64, ']', 64);
	CHECK_EQ(complete(buf, 128), 1);
	CHECK_EQ(complete(buf, 127), 0);
	memset(buf, '[', 65);
	memset(buf + 65, ']', 65);
	CHECK_EQ(complete(buf, 130), -EINVAL);
	CHECK_EQ(complete(buf, 64), 0);
	CHECK_EQ(complete(buf, 65), -EINVAL);
	/* Mixed containers keep their own closers at every level. */
	for (int i = 0; i < 32; i++)
		memcpy(buf + 5 * i, "{\"a\":", 5);
	CHECK_EQ(complete(buf, 160), 0);
	memset(buf + 160, '}', 32);
	CHECK_EQ(complete(buf, 192), -EINVAL); /* the innermost value is missing */
	buf[160] = '1';
	memset(buf + 161, '}', 32);
	CHECK_EQ(complete(buf, 193), 1);
	buf[180] = ']';
	CHECK_EQ(complete(buf, 193), -EINVAL);
	/* Many siblings are not depth. */
	{
		size_t n = 100000;
		char *wide = malloc(2 * n + 2);

		CHECK(wide != NULL);
		wide[0] = '[';
		for (size_t i = 0; i < n; i++)
			memcpy(wide + 1 + 2 * i, i + 1 < n ? "0," : "0]", 2);
		CHECK_EQ(complete(wide, 2 * n + 1), 1);
		free(wide);
	}
}

static void complete_prefixes_are_incomplete(void)
{
	const char *msgs[] = {ONE, TWO, "[{\"a\\\"}\":[1.5e-3,true,null,\"\\u00e9\"]}]"};

	for (size_t m = 0; m < sizeof(msgs) / sizeof(msgs[0]); m++) {
		size_t len = strlen(msgs[m]);

		for (size_t k = 0; k < len; k++) {
			int rc = complete(msgs[m], k);

			if (rc != 0) {
				fprintf(stderr, "  message %zu, prefix %zu: %d\n", m, k, rc);
				CHECK(0);
			}
		}
		CHECK_EQ(complete(msgs[m], len), 1);
	}
	CHECK_EQ(fc_handshake_complete(NULL, 0), 0);
	CHECK_EQ(fc_handshake_complete(ONE, 0), 0);
	CHECK_EQ(fc_handshake_complete(NULL, 1), -EINVAL);
}

static void format_example(void)
{
	static const char want[] = "[{\"base_host_virt_addr\":140000000000,\"size\":4096,"
	                           "\"offset\":0,\"page_size\":4096,\"page_size_kib\":4096}]";
	struct fc_region r = {140000000000ull, 4096, 0, 4096};
	char buf[256];
	int len = fc_handshake_format(&r, 1, buf, sizeof(buf));

	/* The writer copies, it does not judge: that base is not page-aligned. */
	CHECK_EQ(len, strlen(want));
	CHECK(strcmp(buf, want) == 0);
	r.base_host_virt_addr = 139999997952ull;
	CHECK_EQ(fc_handshake_format(&r, 1, buf, sizeof(buf)), strlen(ONE));
	CHECK(strcmp(buf, ONE) == 0);
	CHECK_EQ(fc_handshake_format(NULL, 0, buf, sizeof(buf)), 2);
	CHECK(strcmp(buf, "[]") == 0);
	CHECK_EQ(fc_handshake_format(NULL, 1, buf, sizeof(buf)), -EINVAL);
}

static void format_enospc(void)
{
	struct fc_region r[2] = {{4096, 4096, 0, 4096}, {8192, 2097152, 4096, 2097152}};
	char buf[512];
	int len = fc_handshake_format(r, 2, buf, sizeof(buf));

	CHECK(len > 0);
	/* Exactly enough room includes the NUL; one byte less is -ENOSPC, at
	 * every size, and the buffer is left an empty string. */
	CHECK_EQ(fc_handshake_format(r, 2, buf, (size_t)len + 1), len);
	for (size_t cap = 1; cap <= (size_t)len; cap++) {
		memset(buf, 'X', sizeof(buf));
		CHECK_EQ(fc_handshake_format(r, 2, buf, cap), -ENOSPC);
		CHECK_EQ(buf[0], '\0');
		CHECK_EQ(buf[cap], 'X');
	}
	CHECK_EQ(fc_handshake_format(r, 2, buf, 0), -ENOSPC);
	CHECK_EQ(fc_handshake_format(r, 2, NULL, 100), -ENOSPC);
}

TEST_MAIN(TEST(good_one_region), TEST(good_several_regions), TEST(good_only_page_size),
          TEST(good_only_page_size_kib), TEST(good_any_field_order),
          TEST(good_whitespace_everywhere), TEST(good_escaped_keys), TEST(good_2m_pages),
          TEST(good_mixed_page_sizes_and_max_values), TEST(good_file_size_zero_is_unchecked),
          TEST(good_exact_fit_at_end_of_file), TEST(good_overlap_boundaries),
          TEST(good_format_parse_round_trip), TEST(good_max_regions), TEST(good_max_bytes),
          TEST(bad_oversized), TEST(bad_shape), TEST(bad_trailing_garbage), TEST(bad_values),
          TEST(bad_missing_fields), TEST(bad_duplicate_and_unknown_fields), TEST(bad_page_sizes),
          TEST(bad_alignment), TEST(bad_sizes_and_overflow), TEST(bad_beyond_file),
          TEST(bad_overlaps), TEST(bad_strings), TEST(bad_truncated_everywhere),
          TEST(bad_error_buffer_edge_cases), TEST(complete_basic), TEST(complete_incomplete),
          TEST(complete_garbage), TEST(complete_strings_hide_structure), TEST(complete_depth_limit),
          TEST(complete_prefixes_are_incomplete), TEST(format_example), TEST(format_enospc))
