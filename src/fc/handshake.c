/* Firecracker's UFFD hand-off: reading it (json-c does the JSON, this file
 * the rules of fc_handshake.h) and writing each release's shape of it.
 *
 * The message comes from another process and is untrusted. json-c parses
 * exactly the bytes given (buf is not NUL-terminated) and bounds nesting;
 * every value lazyvm uses is then checked for its type and range here, in a
 * fixed order, so the error names the first problem a reader of the text
 * would see. */
#include "lazyvm/fc_handshake.h"

#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fc_json.h"

#define PAGE_4K 4096ull
#define PAGE_2M (2ull * 1024 * 1024)

enum field { F_BASE, F_SIZE, F_OFFSET, F_PAGE_SIZE, F_PAGE_SIZE_KIB, F_GPA, F_MEMFD, F_COUNT };

static const char *const field_names[F_COUNT] = {
    "base_host_virt_addr", "size",      "offset",         "page_size",
    "page_size_kib",       "gpa_start", "is_guest_memfd",
};

static const unsigned field_has[F_COUNT] = {
    [F_PAGE_SIZE] = FC_HAS_PAGE_SIZE,
    [F_PAGE_SIZE_KIB] = FC_HAS_PAGE_SIZE_KIB,
    [F_GPA] = FC_HAS_GPA_START,
    [F_MEMFD] = FC_HAS_GUEST_MEMFD,
};

/* One region as written, before its values are checked against each other. */
struct raw_region {
	uint64_t v[F_COUNT];
	unsigned present; /* bit (1 << field) per field seen */
};

int fc_err(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	va_list ap;

	if (err && errlen) {
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

const char *fc_json_kind(const struct json_object *o)
{
	switch (json_object_get_type(o)) {
	case json_type_null: return "null";
	case json_type_boolean: return "a boolean";
	case json_type_double: return "a number that is not an integer";
	case json_type_int: return "an integer";
	case json_type_object: return "an object";
	case json_type_array: return "an array";
	case json_type_string: return "a string";
	}
	return "a value of unknown type";
}

/* json-c keeps a number's text for doubles; the message says what is wrong. */
static const char *not_integer_why(const struct json_object *o)
{
	const char *text =
	    json_object_to_json_string_ext((struct json_object *)o, JSON_C_TO_STRING_PLAIN);

	return strpbrk(text, "eE") && !strchr(text, '.') ? "has an exponent" : "has a fraction";
}

int fc_json_u64(const struct json_object *o, const char *name, const char *where, uint64_t *out,
                char *err, size_t errlen)
{
	int64_t s;
	uint64_t v;

	if (json_object_get_type(o) == json_type_double)
		return fc_err(err, errlen, -EINVAL,
		              "field \"%s\" %s %s (%s); only plain integers are allowed", name,
		              where, not_integer_why(o),
		              json_object_to_json_string_ext((struct json_object *)o,
		                                             JSON_C_TO_STRING_PLAIN));
	if (json_object_get_type(o) != json_type_int)
		return fc_err(err, errlen, -EINVAL,
		              "field \"%s\" %s is %s, not a non-negative integer", name, where,
		              fc_json_kind(o));
	s = json_object_get_int64(o);
	if (s < 0)
		return fc_err(err, errlen, -EINVAL, "field \"%s\" %s is negative (%" PRId64 ")",
		              name, where, s);
	v = json_object_get_uint64(o);
	/* json-c saturates a number too big for 64 bits at UINT64_MAX, so that
	 * value cannot be told from an overflow; no field lazyvm reads can hold
	 * it (it is neither page-aligned nor a vCPU number). */
	if (v == UINT64_MAX)
		return fc_err(err, errlen, -EINVAL,
		              "field \"%s\" %s is 18446744073709551615 or more, which does not fit "
		              "in 64 bits",
		              name, where);
	*out = v;
	return 0;
}

int fc_json_next(const char *buf, size_t len, size_t *end)
{
	struct json_tokener *tok;
	struct json_object *o;
	enum json_tokener_error e;

	*end = 0;
	if (!buf || !len)
		return 0;
	if (len > INT_MAX)
		return -EINVAL;
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
	o = json_tokener_parse_ex(tok, buf, (int)len);
	e = json_tokener_get_error(tok);
	*end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	json_object_put(o);
	if (e == json_tokener_continue)
		return 0;
	return e == json_tokener_success ? 1 : -EINVAL;
}

int fc_json_parse_one(const char *buf, size_t len, const char *what, struct json_object **out,
                      char *err, size_t errlen)
{
	struct json_tokener *tok;
	enum json_tokener_error e;
	size_t end;

	*out = NULL;
	if (len == 0)
		return fc_err(err, errlen, -EINVAL, "empty %s (0 bytes)", what);
	tok = json_tokener_new();
	if (!tok)
		return fc_err(err, errlen, -ENOMEM, "out of memory reading the %s", what);
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_ALLOW_TRAILING_CHARS);
	*out = json_tokener_parse_ex(tok, buf, (int)len);
	e = json_tokener_get_error(tok);
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	if (e == json_tokener_continue)
		return fc_err(err, errlen, -EINVAL, "truncated JSON: the %s ends at byte %zu", what,
		              len);
	if (e != json_tokener_success)
		return fc_err(err, errlen, -EINVAL, "invalid JSON at byte %zu: %s", end,
		              json_tokener_error_desc(e));
	while (end < len && strchr(" \t\r\n", buf[end]) && buf[end])
		end++;
	if (end < len) {
		json_object_put(*out);
		*out = NULL;
		return fc_err(err, errlen, -EINVAL, "trailing data at byte %zu after the %s", end,
		              what);
	}
	return 0;
}

static enum field lookup_field(const char *key)
{
	for (int f = 0; f < F_COUNT; f++)
		if (strcmp(key, field_names[f]) == 0)
			return (enum field)f;
	return F_COUNT;
}

static void note_unknown(struct fc_handshake *hs, const char *key)
{
	size_t used, klen;

	if (!key[0])
		key = "\"\""; /* the empty name, shown as such */
	used = strlen(hs->unknown);
	klen = strlen(key);

	hs->unknown_fields++;
	/* Each name once: every region of a newer release has the same ones. */
	for (const char *p = hs->unknown; (p = strstr(p, key)); p += klen)
		if ((p == hs->unknown || p[-1] == ' ') && (p[klen] == ',' || !p[klen]))
			return;
	if (used + klen + 3 < sizeof(hs->unknown))
		snprintf(hs->unknown + used, sizeof(hs->unknown) - used, "%s%s", used ? ", " : "",
		         key);
}

/* One region object: its fields by name, typed. */
static int read_region(struct json_object *o, size_t idx, struct raw_region *raw,
                       struct fc_handshake *hs, char *err, size_t errlen)
{
	static const enum field required[] = {F_BASE, F_SIZE, F_OFFSET};
	char where[32];

	memset(raw, 0, sizeof(*raw));
	snprintf(where, sizeof(where), "in region %zu", idx);
	json_object_object_foreach(o, key, val)
	{
		enum field f = lookup_field(key);
		int rc;

		if (f == F_COUNT) {
			note_unknown(hs, key);
			continue;
		}
		if (f == F_MEMFD) {
			if (json_object_get_type(val) != json_type_boolean)
				return fc_err(err, errlen, -EINVAL,
				              "field \"%s\" %s is %s, not a boolean",
				              field_names[f], where, fc_json_kind(val));
			raw->v[f] = json_object_get_boolean(val);
		} else {
			rc = fc_json_u64(val, field_names[f], where, &raw->v[f], err, errlen);
			if (rc)
				return rc;
		}
		raw->present |= 1u << f;
	}
	for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
		if (!(raw->present & 1u << required[i]))
			return fc_err(err, errlen, -EINVAL, "missing field \"%s\" in region %zu",
			              field_names[required[i]], idx);
	return 0;
}

static int check_aligned(size_t idx, enum field f, uint64_t v, uint64_t ps, char *err,
                         size_t errlen)
{
	if (v % ps == 0)
		return 0;
	if (f == F_BASE)
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: field \"%s\" is 0x%" PRIx64
		              ", not a multiple of page_size %" PRIu64,
		              idx, field_names[f], v, ps);
	return fc_err(err, errlen, -EINVAL,
	              "region %zu: field \"%s\" is %" PRIu64
	              ", not a multiple of page_size %" PRIu64,
	              idx, field_names[f], v, ps);
}

/* The rules one region must meet on its own. */
static int check_region(size_t idx, const struct raw_region *raw, uint64_t file_size,
                        struct fc_region *r, char *err, size_t errlen)
{
	bool has_ps = raw->present & 1u << F_PAGE_SIZE;
	bool has_kib = raw->present & 1u << F_PAGE_SIZE_KIB;
	uint64_t ps = has_ps ? raw->v[F_PAGE_SIZE] : has_kib ? raw->v[F_PAGE_SIZE_KIB] : PAGE_4K;
	uint64_t base = raw->v[F_BASE], size = raw->v[F_SIZE], off = raw->v[F_OFFSET];
	int rc;

	if (has_ps && has_kib && raw->v[F_PAGE_SIZE] != raw->v[F_PAGE_SIZE_KIB])
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: page_size (%" PRIu64 ") and page_size_kib (%" PRIu64
		              ") disagree",
		              idx, raw->v[F_PAGE_SIZE], raw->v[F_PAGE_SIZE_KIB]);
	if (ps != PAGE_4K && ps != PAGE_2M)
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: %s %" PRIu64 " is not supported (only 4096 or 2097152)",
		              idx, has_ps ? "page_size" : "page_size_kib", ps);
	rc = check_aligned(idx, F_BASE, base, ps, err, errlen);
	if (!rc)
		rc = check_aligned(idx, F_SIZE, size, ps, err, errlen);
	if (!rc)
		rc = check_aligned(idx, F_OFFSET, off, ps, err, errlen);
	if (rc)
		return rc;
	if (size == 0)
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: field \"size\" is 0 (an empty region)", idx);
	if (base > UINT64_MAX - size)
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: base_host_virt_addr 0x%" PRIx64 " + size 0x%" PRIx64
		              " overflows 64 bits",
		              idx, base, size);
	if (off > UINT64_MAX - size)
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: offset %" PRIu64 " + size %" PRIu64 " overflows 64 bits",
		              idx, off, size);
	if ((raw->present & 1u << F_GPA) && raw->v[F_GPA] > UINT64_MAX - size)
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: gpa_start 0x%" PRIx64 " + size 0x%" PRIx64
		              " overflows 64 bits",
		              idx, raw->v[F_GPA], size);
	if (file_size && off + size > file_size)
		return fc_err(err, errlen, -EINVAL,
		              "region %zu: file range [offset, offset+size) = [%" PRIu64
		              ", %" PRIu64 ") ends beyond the memory file (%" PRIu64 " bytes)",
		              idx, off, off + size, file_size);
	*r = (struct fc_region){.base_host_virt_addr = base,
	                        .size = size,
	                        .offset = off,
	                        .page_size = ps,
	                        .gpa_start = raw->v[F_GPA],
	                        .guest_memfd = raw->v[F_MEMFD] != 0};
	for (int f = 0; f < F_COUNT; f++)
		if (raw->present & 1u << f)
			r->has |= field_has[f];
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
static int check_overlaps(const struct fc_region *r, size_t n, bool file, char *err, size_t errlen)
{
	struct span *s;
	int rc = 0;

	if (n < 2)
		return 0;
	s = malloc(n * sizeof(*s));
	if (!s)
		return fc_err(err, errlen, -ENOMEM,
		              "out of memory checking %zu regions for overlaps", n);
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
			rc =
			    fc_err(err, errlen, -EINVAL,
			           "region %zu: file range [%" PRIu64 ", %" PRIu64 ") overlaps the "
			           "file range [%" PRIu64 ", %" PRIu64 ") of region %zu",
			           a->idx, a->start, a->end, b->start, b->end, b->idx);
		else
			rc = fc_err(err, errlen, -EINVAL,
			            "region %zu [0x%" PRIx64 ", 0x%" PRIx64
			            ") overlaps region %zu [0x%" PRIx64 ", 0x%" PRIx64 ")",
			            a->idx, a->start, a->end, b->idx, b->start, b->end);
	}
	free(s);
	return rc;
}

/* The array and each region in it. */
static int read_regions(struct json_object *top, uint64_t file_size, struct fc_handshake *hs,
                        char *err, size_t errlen)
{
	size_t n;
	int rc = 0;

	if (json_object_get_type(top) != json_type_array)
		return fc_err(err, errlen, -EINVAL,
		              "the handshake is %s, not a JSON array of regions",
		              fc_json_kind(top));
	n = json_object_array_length(top);
	if (n == 0)
		return fc_err(err, errlen, -EINVAL, "handshake has no regions (an empty array)");
	if (n > FC_HANDSHAKE_MAX_REGIONS)
		return fc_err(err, errlen, -E2BIG,
		              "handshake has %zu regions, more than the %u allowed", n,
		              FC_HANDSHAKE_MAX_REGIONS);
	hs->regions = calloc(n, sizeof(*hs->regions));
	if (!hs->regions)
		return fc_err(err, errlen, -ENOMEM, "out of memory for %zu regions", n);
	for (size_t i = 0; i < n && !rc; i++) {
		struct json_object *o = json_object_array_get_idx(top, i);
		struct raw_region raw;

		if (json_object_get_type(o) != json_type_object)
			return fc_err(err, errlen, -EINVAL, "region %zu is %s, not a JSON object",
			              i, fc_json_kind(o));
		rc = read_region(o, i, &raw, hs, err, errlen);
		if (!rc)
			rc = check_region(i, &raw, file_size, &hs->regions[i], err, errlen);
		hs->has |= hs->regions[i].has;
	}
	hs->nregions = n;
	if (!rc)
		rc = check_overlaps(hs->regions, n, false, err, errlen);
	if (!rc)
		rc = check_overlaps(hs->regions, n, true, err, errlen);
	return rc;
}

int fc_handshake_parse(const char *buf, size_t len, uint64_t file_size, struct fc_handshake *out,
                       char *err, size_t errlen)
{
	struct json_object *top = NULL;
	int rc;

	if (err && errlen)
		err[0] = '\0';
	if (!out)
		return fc_err(err, errlen, -EINVAL, "no handshake to fill in");
	memset(out, 0, sizeof(*out));
	if (!buf && len)
		return fc_err(err, errlen, -EINVAL, "no buffer for a %zu-byte handshake", len);
	if (len > FC_HANDSHAKE_MAX_BYTES)
		return fc_err(err, errlen, -E2BIG,
		              "handshake is %zu bytes, more than the %u allowed", len,
		              FC_HANDSHAKE_MAX_BYTES);
	rc = fc_json_parse_one(buf, len, "handshake", &top, err, errlen);
	if (!rc)
		rc = read_regions(top, file_size, out, err, errlen);
	json_object_put(top);
	if (rc) {
		fc_handshake_free(out);
		memset(out, 0, sizeof(*out));
	}
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

/* One region in the field order of the release's struct (serde writes the
 * fields as declared). */
static int format_region(const struct fc_region *r, enum fc_shape shape, char *buf, size_t len,
                         size_t *used)
{
	int rc =
	    append(buf, len, used,
	           "{\"base_host_virt_addr\":%" PRIu64 ",\"size\":%" PRIu64 ",\"offset\":%" PRIu64,
	           r->base_host_virt_addr, r->size, r->offset);

	if (rc)
		return rc;
	switch (shape) {
	case FC_SHAPE_V1_4: break;
	case FC_SHAPE_V1_7:
		rc = append(buf, len, used, ",\"page_size_kib\":%" PRIu64, r->page_size);
		break;
	case FC_SHAPE_V1_12:
		rc = append(buf, len, used, ",\"page_size\":%" PRIu64 ",\"page_size_kib\":%" PRIu64,
		            r->page_size, r->page_size);
		break;
	case FC_SHAPE_SECRET_HIDING:
		rc = append(buf, len, used,
		            ",\"gpa_start\":%" PRIu64 ",\"page_size\":%" PRIu64
		            ",\"is_guest_memfd\":%s,\"page_size_kib\":%" PRIu64,
		            r->gpa_start, r->page_size, r->guest_memfd ? "true" : "false",
		            r->page_size);
		break;
	}
	return rc ? rc : append(buf, len, used, "}");
}

int fc_handshake_format(const struct fc_region *regions, size_t n, enum fc_shape shape, char *buf,
                        size_t len)
{
	size_t used = 0;
	int rc;

	if (!buf || !len)
		return -ENOSPC;
	if (n && !regions)
		return -EINVAL;
	rc = append(buf, len, &used, "[");
	for (size_t i = 0; i < n && !rc; i++) {
		rc = i ? append(buf, len, &used, ",") : 0;
		if (!rc)
			rc = format_region(&regions[i], shape, buf, len, &used);
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
