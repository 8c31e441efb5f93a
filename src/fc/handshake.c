/* Firecracker's UFFD hand-off message: a strict reader for exactly the shape
 * Firecracker sends, a scanner that tells a stream reader when the message has
 * ended, and the writer the tests and the demo client use.
 *
 * The message comes from another process and is untrusted. Every read is
 * bounded by len (the buffer is not NUL-terminated), and the reader never
 * recurses: the top level is an array of flat objects, so a nested value is
 * refused where it starts instead of being descended into.
 *
 * Errors are checked in a fixed order so the message names the first problem
 * a reader of the text would see: first the JSON and its shape in document
 * order (syntax, unknown, duplicate and missing fields, value types), then
 * each region's values in region order, then overlaps between regions. */
#include "lazyvm/fc_handshake.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_4K 4096ull
#define PAGE_2M (2ull * 1024 * 1024)

/* Containers deeper than this make fc_handshake_complete give up: a real
 * handshake is two deep, and the scanner's stack is one bit per level. */
#define SCAN_MAX_DEPTH 64

/* Decoded bytes of a key kept for the error message; every field name is
 * shorter, so a longer key is unknown and only needs quoting. */
#define KEY_KEEP 40

/* Digits of an over-long number quoted in the error message. */
#define NUM_KEEP 40

enum field { F_BASE, F_SIZE, F_OFFSET, F_PAGE_SIZE, F_PAGE_SIZE_KIB, F_COUNT };

static const char *const field_names[F_COUNT] = {
    "base_host_virt_addr", "size", "offset", "page_size", "page_size_kib",
};

/* One region as written, before its values are checked against each other. */
struct raw_region {
	uint64_t v[F_COUNT];
	unsigned int present; /* bit (1 << field) per field seen */
};

struct parser {
	const char *buf;
	size_t len;
	size_t pos;
	char *err;
	size_t errlen;
};

struct key {
	char s[KEY_KEEP];
	size_t len; /* decoded length; may exceed KEY_KEEP, then s holds the start */
	size_t at;  /* offset of the opening quote */
};

static int fail(struct parser *p, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct parser *p, int rc, const char *fmt, ...)
{
	va_list ap;

	if (p->err && p->errlen) {
		va_start(ap, fmt);
		vsnprintf(p->err, p->errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

static int peek(const struct parser *p)
{
	return p->pos < p->len ? (unsigned char)p->buf[p->pos] : -1;
}

static int peek_at(const struct parser *p, size_t off)
{
	return off < p->len - p->pos ? (unsigned char)p->buf[p->pos + off] : -1;
}

static bool is_ws(int c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static bool is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static void skip_ws(struct parser *p)
{
	while (is_ws(peek(p)))
		p->pos++;
}

/* The one message for "the JSON is not what the grammar allows here", so that
 * a cut-off message always reads "truncated" and never blames a byte. */
static int syntax_error(struct parser *p, const char *expected)
{
	int c = peek(p);

	if (c < 0)
		return fail(p, -EINVAL, "truncated JSON at byte %zu: expected %s", p->pos,
		            expected);
	if (c >= 0x20 && c < 0x7f)
		return fail(p, -EINVAL, "invalid JSON at byte %zu: expected %s, found '%c'", p->pos,
		            expected, c);
	return fail(p, -EINVAL, "invalid JSON at byte %zu: expected %s, found byte 0x%02x", p->pos,
	            expected, c);
}

static int hex_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static void key_put(struct key *k, char c)
{
	if (k->len < KEY_KEEP)
		k->s[k->len] = c;
	k->len++;
}

static void key_put_utf8(struct key *k, uint32_t cp)
{
	if (cp < 0x80) {
		key_put(k, (char)cp);
	} else if (cp < 0x800) {
		key_put(k, (char)(0xc0 | cp >> 6));
		key_put(k, (char)(0x80 | (cp & 0x3f)));
	} else if (cp < 0x10000) {
		key_put(k, (char)(0xe0 | cp >> 12));
		key_put(k, (char)(0x80 | (cp >> 6 & 0x3f)));
		key_put(k, (char)(0x80 | (cp & 0x3f)));
	} else {
		key_put(k, (char)(0xf0 | cp >> 18));
		key_put(k, (char)(0x80 | (cp >> 12 & 0x3f)));
		key_put(k, (char)(0x80 | (cp >> 6 & 0x3f)));
		key_put(k, (char)(0x80 | (cp & 0x3f)));
	}
}

/* Reads the four hex digits of a \u escape; pos is on the first. */
static int parse_hex4(struct parser *p, uint32_t *cp)
{
	uint32_t v = 0;

	for (int i = 0; i < 4; i++) {
		int d = hex_value(peek(p));

		if (d < 0)
			return syntax_error(p, "a hex digit of a \\u escape");
		v = v << 4 | (uint32_t)d;
		p->pos++;
	}
	*cp = v;
	return 0;
}

/* A \u escape; pos is on the 'u'. UTF-16 surrogates must come in proper
 * pairs: a lone one names no character, and strict means refusing it. */
static int parse_unicode_escape(struct parser *p, struct key *k)
{
	size_t at = p->pos - 1;
	uint32_t hi, lo;
	int rc;

	p->pos++;
	rc = parse_hex4(p, &hi);
	if (rc)
		return rc;
	if (hi >= 0xdc00 && hi <= 0xdfff)
		return fail(p, -EINVAL,
		            "invalid JSON at byte %zu: unpaired surrogate \\u%04" PRIx32, at, hi);
	if (hi < 0xd800 || hi > 0xdbff) {
		key_put_utf8(k, hi);
		return 0;
	}
	if (peek(p) != '\\' || peek_at(p, 1) != 'u') {
		if (peek(p) < 0 || (peek(p) == '\\' && peek_at(p, 1) < 0))
			return fail(p, -EINVAL,
			            "truncated JSON at byte %zu: expected the low half of the "
			            "surrogate pair \\u%04" PRIx32,
			            p->len, hi);
		return fail(p, -EINVAL,
		            "invalid JSON at byte %zu: unpaired surrogate \\u%04" PRIx32, at, hi);
	}
	p->pos += 2;
	rc = parse_hex4(p, &lo);
	if (rc)
		return rc;
	if (lo < 0xdc00 || lo > 0xdfff)
		return fail(p, -EINVAL,
		            "invalid JSON at byte %zu: \\u%04" PRIx32 " is not the low half of a "
		            "surrogate pair after \\u%04" PRIx32,
		            p->pos - 6, lo, hi);
	key_put_utf8(k, 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00));
	return 0;
}

/* An escape sequence; pos is on the character after the backslash. */
static int parse_escape(struct parser *p, struct key *k)
{
	static const char from[] = "\"\\/bfnrt";
	static const char to[] = "\"\\/\b\f\n\r\t";
	int c = peek(p);
	const char *hit;

	if (c < 0)
		return syntax_error(p, "an escape character after '\\'");
	if (c == 'u')
		return parse_unicode_escape(p, k);
	hit = c ? strchr(from, c) : NULL;
	if (!hit) {
		if (c >= 0x20 && c < 0x7f)
			return fail(p, -EINVAL, "invalid JSON at byte %zu: invalid escape '\\%c'",
			            p->pos - 1, c);
		return syntax_error(p, "an escape character after '\\'");
	}
	key_put(k, to[hit - from]);
	p->pos++;
	return 0;
}

/* A string; pos is on the opening quote. Only keys are strings here. */
static int parse_key(struct parser *p, struct key *k)
{
	k->len = 0;
	k->at = p->pos++;
	for (;;) {
		int c = peek(p);

		if (c < 0)
			return fail(p, -EINVAL,
			            "truncated JSON at byte %zu: unterminated string (opened at "
			            "byte %zu)",
			            p->pos, k->at);
		if (c == '"') {
			p->pos++;
			return 0;
		}
		if (c < 0x20)
			return fail(p, -EINVAL,
			            "invalid JSON at byte %zu: control character 0x%02x inside a "
			            "string (it must be escaped)",
			            p->pos, c);
		p->pos++;
		if (c == '\\') {
			int rc = parse_escape(p, k);

			if (rc)
				return rc;
		} else {
			key_put(k, (char)c);
		}
	}
}

/* Quotes a decoded key for a message: printable ASCII as is, the rest as \xNN,
 * so that whatever the peer sent cannot garble the log line. */
static const char *quote_key(const struct key *k, char *out, size_t outlen)
{
	size_t kept = k->len < KEY_KEEP ? k->len : KEY_KEEP;
	size_t o = 0;

	for (size_t i = 0; i < kept && o + 5 < outlen; i++) {
		unsigned char c = (unsigned char)k->s[i];

		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c >= 0x20 && c < 0x7f) {
			out[o++] = (char)c;
		} else {
			o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
		}
	}
	if (k->len > kept && o + 4 < outlen) {
		memcpy(out + o, "...", 3);
		o += 3;
	}
	out[o] = '\0';
	return out;
}

static enum field lookup_field(const struct key *k)
{
	for (int f = 0; f < F_COUNT; f++)
		if (k->len == strlen(field_names[f]) && memcmp(k->s, field_names[f], k->len) == 0)
			return (enum field)f;
	return F_COUNT;
}

/* True when the literal word lit is at pos (without reading past len). */
static bool literal_at(const struct parser *p, const char *lit)
{
	size_t n = strlen(lit);

	return p->len - p->pos >= n && memcmp(p->buf + p->pos, lit, n) == 0;
}

/* What kind of JSON value starts with c, for "is an object" style messages;
 * NULL when c cannot start a value (the JSON is broken there). */
static const char *value_kind(const struct parser *p, int c)
{
	switch (c) {
	case '"': return "a string";
	case '{': return "an object";
	case '[': return "an array";
	case 't': return literal_at(p, "true") ? "a boolean" : NULL;
	case 'f': return literal_at(p, "false") ? "a boolean" : NULL;
	case 'n': return literal_at(p, "null") ? "null" : NULL;
	default: return NULL;
	}
}

/* A field's value: a plain decimal u64; pos is on its first byte. */
static int parse_u64(struct parser *p, size_t idx, enum field f, uint64_t *out)
{
	const char *name = field_names[f];
	int c = peek(p);
	const char *kind = value_kind(p, c);
	size_t start = p->pos;
	bool overflow = false;
	uint64_t v = 0;

	if (kind)
		return fail(p, -EINVAL,
		            "field \"%s\" in region %zu is %s, not a non-negative integer "
		            "(at byte %zu)",
		            name, idx, kind, p->pos);
	if (c == '-' && is_digit(peek_at(p, 1)))
		return fail(p, -EINVAL, "field \"%s\" in region %zu is negative (at byte %zu)",
		            name, idx, p->pos);
	if (!is_digit(c))
		return syntax_error(p, "a number");
	if (c == '0' && is_digit(peek_at(p, 1)))
		return fail(p, -EINVAL,
		            "field \"%s\" in region %zu has a leading zero (at byte %zu)", name,
		            idx, p->pos);
	while (is_digit(c = peek(p))) {
		unsigned int d = (unsigned int)(c - '0');

		if (v > (UINT64_MAX - d) / 10)
			overflow = true;
		else
			v = v * 10 + d;
		p->pos++;
	}
	if (c == '.')
		return fail(p, -EINVAL,
		            "field \"%s\" in region %zu has a fraction (at byte %zu); only "
		            "integers are allowed",
		            name, idx, p->pos);
	if (c == 'e' || c == 'E')
		return fail(p, -EINVAL,
		            "field \"%s\" in region %zu has an exponent (at byte %zu); only plain "
		            "integers are allowed",
		            name, idx, p->pos);
	if (overflow) {
		size_t n = p->pos - start;

		return fail(p, -EINVAL,
		            "field \"%s\" in region %zu is %.*s%s, which does not fit in 64 bits",
		            name, idx, (int)(n < NUM_KEEP ? n : NUM_KEEP), p->buf + start,
		            n > NUM_KEEP ? "..." : "");
	}
	*out = v;
	return 0;
}

static int check_fields_present(struct parser *p, size_t idx, const struct raw_region *raw)
{
	static const enum field required[] = {F_BASE, F_SIZE, F_OFFSET};

	for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
		if (!(raw->present & 1u << required[i]))
			return fail(p, -EINVAL, "missing field \"%s\" in region %zu",
			            field_names[required[i]], idx);
	if (!(raw->present & (1u << F_PAGE_SIZE | 1u << F_PAGE_SIZE_KIB)))
		return fail(p, -EINVAL,
		            "missing field \"page_size\" (or \"page_size_kib\") in region %zu",
		            idx);
	return 0;
}

/* One region object; pos is on its '{'. */
static int parse_object(struct parser *p, size_t idx, struct raw_region *raw)
{
	memset(raw, 0, sizeof(*raw));
	p->pos++;
	skip_ws(p);
	if (peek(p) == '}') {
		p->pos++;
		return check_fields_present(p, idx, raw);
	}
	for (;;) {
		char quoted[KEY_KEEP * 4 + 8];
		struct key k;
		enum field f;
		int rc, c;

		skip_ws(p);
		if (peek(p) != '"')
			return syntax_error(p, "'\"' (a field name)");
		rc = parse_key(p, &k);
		if (rc)
			return rc;
		f = lookup_field(&k);
		if (f == F_COUNT)
			return fail(p, -EINVAL, "unknown field \"%s\" in region %zu at byte %zu",
			            quote_key(&k, quoted, sizeof(quoted)), idx, k.at);
		if (raw->present & 1u << f)
			return fail(p, -EINVAL, "duplicate field \"%s\" in region %zu at byte %zu",
			            field_names[f], idx, k.at);
		skip_ws(p);
		if (peek(p) != ':')
			return syntax_error(p, "':'");
		p->pos++;
		skip_ws(p);
		rc = parse_u64(p, idx, f, &raw->v[f]);
		if (rc)
			return rc;
		raw->present |= 1u << f;
		skip_ws(p);
		c = peek(p);
		if (c == ',') {
			p->pos++;
		} else if (c == '}') {
			p->pos++;
			return check_fields_present(p, idx, raw);
		} else {
			return syntax_error(p, "',' or '}'");
		}
	}
}

static int grow_raw(struct parser *p, struct raw_region **raw, size_t *cap, size_t n)
{
	struct raw_region *bigger;
	size_t want;

	if (n < *cap)
		return 0;
	want = *cap ? *cap * 2 : 8;
	if (want > FC_HANDSHAKE_MAX_REGIONS)
		want = FC_HANDSHAKE_MAX_REGIONS;
	bigger = realloc(*raw, want * sizeof(**raw));
	if (!bigger)
		return fail(p, -ENOMEM, "out of memory reading region %zu", n);
	*raw = bigger;
	*cap = want;
	return 0;
}

/* The top-level array. On failure *raw may hold an allocation to free. */
static int parse_array(struct parser *p, struct raw_region **raw, size_t *n)
{
	size_t cap = 0;

	if (p->len == 0)
		return fail(p, -EINVAL, "empty handshake (0 bytes)");
	skip_ws(p);
	if (peek(p) != '[')
		return syntax_error(p, "'[' (the handshake is a JSON array of regions)");
	p->pos++;
	skip_ws(p);
	if (peek(p) == ']')
		return fail(p, -EINVAL, "handshake has no regions (an empty array)");
	for (;;) {
		const char *kind;
		int rc, c;

		skip_ws(p);
		c = peek(p);
		if (c != '{') {
			kind = value_kind(p, c);
			if (!kind && (c == '-' || is_digit(c)))
				kind = "a number";
			if (kind)
				return fail(p, -EINVAL,
				            "region %zu is %s, not a JSON object (at byte %zu)", *n,
				            kind, p->pos);
			return syntax_error(p, "'{' (a region object)");
		}
		if (*n == FC_HANDSHAKE_MAX_REGIONS)
			return fail(p, -E2BIG,
			            "handshake has more than %u regions (the %uth starts at "
			            "byte %zu)",
			            FC_HANDSHAKE_MAX_REGIONS, FC_HANDSHAKE_MAX_REGIONS + 1, p->pos);
		rc = grow_raw(p, raw, &cap, *n);
		if (rc)
			return rc;
		rc = parse_object(p, *n, &(*raw)[*n]);
		if (rc)
			return rc;
		++*n;
		skip_ws(p);
		c = peek(p);
		if (c == ']')
			break;
		if (c != ',')
			return syntax_error(p, "',' or ']'");
		p->pos++;
	}
	p->pos++;
	skip_ws(p);
	if (p->pos < p->len)
		return fail(p, -EINVAL, "trailing data at byte %zu after the JSON array", p->pos);
	return 0;
}

static int check_aligned(struct parser *p, size_t idx, enum field f, uint64_t v, uint64_t ps)
{
	if (v % ps == 0)
		return 0;
	if (f == F_BASE)
		return fail(p, -EINVAL,
		            "region %zu: field \"%s\" is 0x%" PRIx64
		            ", not a multiple of page_size %" PRIu64,
		            idx, field_names[f], v, ps);
	return fail(p, -EINVAL,
	            "region %zu: field \"%s\" is %" PRIu64 ", not a multiple of page_size %" PRIu64,
	            idx, field_names[f], v, ps);
}

/* The rules one region must meet on its own. */
static int check_region(struct parser *p, size_t idx, const struct raw_region *raw,
                        uint64_t file_size, struct fc_region *r)
{
	bool has_ps = raw->present & 1u << F_PAGE_SIZE;
	bool has_kib = raw->present & 1u << F_PAGE_SIZE_KIB;
	uint64_t ps = has_ps ? raw->v[F_PAGE_SIZE] : raw->v[F_PAGE_SIZE_KIB];
	uint64_t base = raw->v[F_BASE], size = raw->v[F_SIZE], off = raw->v[F_OFFSET];
	int rc;

	if (has_ps && has_kib && raw->v[F_PAGE_SIZE] != raw->v[F_PAGE_SIZE_KIB])
		return fail(p, -EINVAL,
		            "region %zu: page_size (%" PRIu64 ") and page_size_kib (%" PRIu64
		            ") disagree",
		            idx, raw->v[F_PAGE_SIZE], raw->v[F_PAGE_SIZE_KIB]);
	if (ps != PAGE_4K && ps != PAGE_2M)
		return fail(p, -EINVAL,
		            "region %zu: %s %" PRIu64 " is not supported (only 4096 or 2097152)",
		            idx, has_ps ? "page_size" : "page_size_kib", ps);
	rc = check_aligned(p, idx, F_BASE, base, ps);
	if (!rc)
		rc = check_aligned(p, idx, F_SIZE, size, ps);
	if (!rc)
		rc = check_aligned(p, idx, F_OFFSET, off, ps);
	if (rc)
		return rc;
	if (size == 0)
		return fail(p, -EINVAL, "region %zu: field \"size\" is 0 (an empty region)", idx);
	if (base > UINT64_MAX - size)
		return fail(p, -EINVAL,
		            "region %zu: base_host_virt_addr 0x%" PRIx64 " + size 0x%" PRIx64
		            " overflows 64 bits",
		            idx, base, size);
	if (off > UINT64_MAX - size)
		return fail(p, -EINVAL,
		            "region %zu: offset %" PRIu64 " + size %" PRIu64 " overflows 64 bits",
		            idx, off, size);
	if (file_size && off + size > file_size)
		return fail(p, -EINVAL,
		            "region %zu: file range [offset, offset+size) = [%" PRIu64 ", %" PRIu64
		            ") ends beyond the memory file (%" PRIu64 " bytes)",
		            idx, off, off + size, file_size);
	r->base_host_virt_addr = base;
	r->size = size;
	r->offset = off;
	r->page_size = ps;
	return 0;
}

struct span {
	uint64_t start, end;
	size_t idx;
};

static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	if (x->start != y->start)
		return x->start < y->start ? -1 : 1;
	/* Equal starts: the index decides, so the report does not depend on qsort. */
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Overlaps among host ranges (file == false) or file ranges, in O(n log n):
 * sorted by start, ranges are disjoint iff each ends before the next starts. */
static int check_overlaps(struct parser *p, const struct fc_region *r, size_t n, bool file)
{
	struct span *s;
	int rc = 0;

	if (n < 2)
		return 0;
	s = malloc(n * sizeof(*s));
	if (!s)
		return fail(p, -ENOMEM, "out of memory checking %zu regions for overlaps", n);
	for (size_t i = 0; i < n; i++) {
		s[i].start = file ? r[i].offset : r[i].base_host_virt_addr;
		s[i].end = s[i].start + r[i].size;
		s[i].idx = i;
	}
	qsort(s, n, sizeof(*s), cmp_span);
	for (size_t i = 1; i < n && !rc; i++) {
		const struct span *a = &s[i], *b = &s[i - 1];

		if (b->end <= a->start)
			continue;
		/* Name the later region first: it is the one that is wrong. */
		if (a->idx < b->idx) {
			a = &s[i - 1];
			b = &s[i];
		}
		if (file)
			rc = fail(p, -EINVAL,
			          "region %zu: file range [%" PRIu64 ", %" PRIu64 ") overlaps the "
			          "file range [%" PRIu64 ", %" PRIu64 ") of region %zu",
			          a->idx, a->start, a->end, b->start, b->end, b->idx);
		else
			rc = fail(p, -EINVAL,
			          "region %zu [0x%" PRIx64 ", 0x%" PRIx64
			          ") overlaps region %zu [0x%" PRIx64 ", 0x%" PRIx64 ")",
			          a->idx, a->start, a->end, b->idx, b->start, b->end);
	}
	free(s);
	return rc;
}

int fc_handshake_parse(const char *buf, size_t len, uint64_t file_size, struct fc_handshake *out,
                       char *err, size_t errlen)
{
	struct parser p = {.buf = buf, .len = len, .err = err, .errlen = errlen};
	struct raw_region *raw = NULL;
	struct fc_region *regions = NULL;
	size_t n = 0;
	int rc;

	if (err && errlen)
		err[0] = '\0';
	if (!out)
		return fail(&p, -EINVAL, "no handshake to fill in");
	out->regions = NULL;
	out->nregions = 0;
	if (!buf && len)
		return fail(&p, -EINVAL, "no buffer for a %zu-byte handshake", len);
	if (len > FC_HANDSHAKE_MAX_BYTES)
		return fail(&p, -E2BIG, "handshake is %zu bytes, more than the %u allowed", len,
		            FC_HANDSHAKE_MAX_BYTES);
	rc = parse_array(&p, &raw, &n);
	if (rc)
		goto out;
	regions = calloc(n, sizeof(*regions));
	if (!regions) {
		rc = fail(&p, -ENOMEM, "out of memory for %zu regions", n);
		goto out;
	}
	for (size_t i = 0; i < n && !rc; i++)
		rc = check_region(&p, i, &raw[i], file_size, &regions[i]);
	if (!rc)
		rc = check_overlaps(&p, regions, n, false);
	if (!rc)
		rc = check_overlaps(&p, regions, n, true);
	if (!rc) {
		out->regions = regions;
		out->nregions = n;
		regions = NULL;
	}
out:
	free(raw);
	free(regions);
	return rc;
}

void fc_handshake_free(struct fc_handshake *hs)
{
	if (!hs)
		return;
	free(hs->regions);
	hs->regions = NULL;
	hs->nregions = 0;
}

/* ---- fc_handshake_complete: where does the top-level value end? ----
 * A byte-at-a-time pushdown recogniser for the whole JSON grammar, so that it
 * answers for any value shape and refuses garbage as early as it can. Its stack
 * is a bit per open container, so depth costs no memory and no recursion. */

enum scan_state {
	S_VALUE,          /* a value must come next */
	S_VALUE_OR_CLOSE, /* just after '[': a value or ']' */
	S_KEY_OR_CLOSE,   /* just after '{': a key or '}' */
	S_KEY,            /* after ',' in an object: a key */
	S_COLON,          /* after a key */
	S_AFTER,          /* after a value inside a container: ',' or its closer */
	S_DONE,           /* the top-level value ended: only white space may follow */
	S_STR,
	S_STR_ESC,
	S_STR_HEX,
	S_NUM_MINUS, /* after '-': a digit */
	S_NUM_ZERO,  /* a leading 0: no more integer digits */
	S_NUM_INT,
	S_NUM_DOT, /* after '.': a digit */
	S_NUM_FRAC,
	S_NUM_E,     /* after 'e': a sign or a digit */
	S_NUM_ESIGN, /* after the exponent's sign: a digit */
	S_NUM_EXP,
	S_LITERAL, /* inside true, false or null */
};

struct scanner {
	enum scan_state st;
	unsigned int depth;
	uint64_t is_object; /* bit d: the container at depth d + 1 is an object */
	bool in_key;
	unsigned int hex_left;
	const char *lit; /* the rest of the literal still expected */
};

static void scan_value_done(struct scanner *s)
{
	s->st = s->depth ? S_AFTER : S_DONE;
}

static bool scan_top_is_object(const struct scanner *s)
{
	return s->is_object >> (s->depth - 1) & 1;
}

static int scan_open(struct scanner *s, bool object)
{
	if (s->depth == SCAN_MAX_DEPTH)
		return -EINVAL;
	if (object)
		s->is_object |= 1ull << s->depth;
	else
		s->is_object &= ~(1ull << s->depth);
	s->depth++;
	s->st = object ? S_KEY_OR_CLOSE : S_VALUE_OR_CLOSE;
	return 0;
}

static void scan_close(struct scanner *s)
{
	s->depth--;
	scan_value_done(s);
}

static int scan_start_value(struct scanner *s, int c)
{
	switch (c) {
	case '{': return scan_open(s, true);
	case '[': return scan_open(s, false);
	case '"':
		s->in_key = false;
		s->st = S_STR;
		return 0;
	case '-': s->st = S_NUM_MINUS; return 0;
	case '0': s->st = S_NUM_ZERO; return 0;
	case 't': s->lit = "rue"; break;
	case 'f': s->lit = "alse"; break;
	case 'n': s->lit = "ull"; break;
	default:
		if (c >= '1' && c <= '9') {
			s->st = S_NUM_INT;
			return 0;
		}
		return -EINVAL;
	}
	s->st = S_LITERAL;
	return 0;
}

static int scan_structural(struct scanner *s, int c)
{
	if (is_ws(c))
		return 0;
	switch (s->st) {
	case S_VALUE_OR_CLOSE:
		if (c == ']') {
			scan_close(s);
			return 0;
		}
		return scan_start_value(s, c);
	case S_VALUE: return scan_start_value(s, c);
	case S_KEY_OR_CLOSE:
		if (c == '}') {
			scan_close(s);
			return 0;
		}
		/* fall through */
	case S_KEY:
		if (c != '"')
			return -EINVAL;
		s->in_key = true;
		s->st = S_STR;
		return 0;
	case S_COLON:
		if (c != ':')
			return -EINVAL;
		s->st = S_VALUE;
		return 0;
	case S_AFTER:
		if (c == ',') {
			s->st = scan_top_is_object(s) ? S_KEY : S_VALUE;
			return 0;
		}
		if (c != (scan_top_is_object(s) ? '}' : ']'))
			return -EINVAL;
		scan_close(s);
		return 0;
	default: /* S_DONE */ return -EINVAL;
	}
}

static int scan_string(struct scanner *s, int c)
{
	switch (s->st) {
	case S_STR:
		if (c == '"') {
			if (s->in_key)
				s->st = S_COLON;
			else
				scan_value_done(s);
		} else if (c == '\\') {
			s->st = S_STR_ESC;
		} else if (c < 0x20) {
			return -EINVAL;
		}
		return 0;
	case S_STR_ESC:
		if (c == 'u') {
			s->hex_left = 4;
			s->st = S_STR_HEX;
			return 0;
		}
		if (!c || !strchr("\"\\/bfnrt", c))
			return -EINVAL;
		s->st = S_STR;
		return 0;
	default: /* S_STR_HEX */
		if (hex_value(c) < 0)
			return -EINVAL;
		if (--s->hex_left == 0)
			s->st = S_STR;
		return 0;
	}
}

/* Returns 1 when c ended the number without being part of it: the caller
 * feeds c again in the state after the value. */
static int scan_number(struct scanner *s, int c)
{
	bool digit = is_digit(c);

	switch (s->st) {
	case S_NUM_MINUS:
		if (!digit)
			return -EINVAL;
		s->st = c == '0' ? S_NUM_ZERO : S_NUM_INT;
		return 0;
	case S_NUM_ZERO:
	case S_NUM_INT:
		if (digit && s->st == S_NUM_INT)
			return 0;
		if (c == '.') {
			s->st = S_NUM_DOT;
			return 0;
		}
		break;
	case S_NUM_DOT:
		if (!digit)
			return -EINVAL;
		s->st = S_NUM_FRAC;
		return 0;
	case S_NUM_FRAC:
		if (digit)
			return 0;
		break;
	case S_NUM_E:
		if (c == '+' || c == '-') {
			s->st = S_NUM_ESIGN;
			return 0;
		}
		/* fall through */
	case S_NUM_ESIGN:
		if (!digit)
			return -EINVAL;
		s->st = S_NUM_EXP;
		return 0;
	default: /* S_NUM_EXP */
		if (digit)
			return 0;
		scan_value_done(s);
		return 1;
	}
	if (c == 'e' || c == 'E') {
		s->st = S_NUM_E;
		return 0;
	}
	scan_value_done(s);
	return 1;
}

static int scan_byte(struct scanner *s, int c)
{
	int rc;

	switch (s->st) {
	case S_STR:
	case S_STR_ESC:
	case S_STR_HEX: return scan_string(s, c);
	case S_NUM_MINUS:
	case S_NUM_ZERO:
	case S_NUM_INT:
	case S_NUM_DOT:
	case S_NUM_FRAC:
	case S_NUM_E:
	case S_NUM_ESIGN:
	case S_NUM_EXP: rc = scan_number(s, c); return rc == 1 ? scan_structural(s, c) : rc;
	case S_LITERAL:
		if (c != *s->lit)
			return -EINVAL;
		if (*++s->lit == '\0')
			scan_value_done(s);
		return 0;
	default: return scan_structural(s, c);
	}
}

int fc_handshake_complete(const char *buf, size_t len)
{
	struct scanner s = {.st = S_VALUE};

	if (!buf && len)
		return -EINVAL;
	for (size_t i = 0; i < len; i++) {
		int rc = scan_byte(&s, (unsigned char)buf[i]);

		if (rc)
			return rc;
	}
	/* A top-level number that has not been followed by anything may still
	 * grow, so it is not complete until white space ends it. */
	return s.st == S_DONE;
}

static int append(char *buf, size_t len, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int append(char *buf, size_t len, size_t *used, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf + *used, len - *used, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= len - *used)
		return -ENOSPC;
	*used += (size_t)n;
	return 0;
}

int fc_handshake_format(const struct fc_region *regions, size_t n, char *buf, size_t len)
{
	size_t used = 0;
	int rc;

	if (!buf || !len)
		return -ENOSPC;
	if (n && !regions)
		return -EINVAL;
	rc = append(buf, len, &used, "[");
	for (size_t i = 0; i < n && !rc; i++) {
		const struct fc_region *r = &regions[i];

		rc = append(buf, len, &used,
		            "%s{\"base_host_virt_addr\":%" PRIu64 ",\"size\":%" PRIu64
		            ",\"offset\":%" PRIu64 ",\"page_size\":%" PRIu64
		            ",\"page_size_kib\":%" PRIu64 "}",
		            i ? "," : "", r->base_host_virt_addr, r->size, r->offset, r->page_size,
		            r->page_size);
	}
	if (!rc)
		rc = append(buf, len, &used, "]");
	if (!rc && used > INT_MAX)
		rc = -ENOSPC;
	if (rc) {
		buf[0] = '\0';
		return rc;
	}
	return (int)used;
}
