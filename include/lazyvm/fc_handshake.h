/* Firecracker's UFFD hand-off and the messages that may follow it.
 *
 * On `PUT /snapshot/load` with the Uffd memory backend, Firecracker connects to
 * the handler's unix socket and sends a JSON array with one object per guest
 * memory region, and the userfaultfd (SCM_RIGHTS). What each release puts in an
 * object (docs/SNAPSHOT.md has the table, read from Firecracker's source):
 *   v1.4-v1.6   base_host_virt_addr, size, offset (4 KiB pages implied)
 *   v1.7-v1.11  + page_size_kib, which holds BYTES despite its name
 *   v1.12+      + page_size (bytes); page_size_kib kept, deprecated
 *   secret-hiding branch: + gpa_start, is_guest_memfd; more fds (guest_memfd,
 *               a bitmap memfd) and the socket stays open: Firecracker may send
 *               fault requests {"vcpu","offset","flags","gpa"} and waits for
 *               fault replies {"vcpu","offset","len","flags","gpa","zero"}.
 * `offset` is where the region's bytes are in the memory file. Messages follow
 * each other on the stream with nothing between them (a serde_json stream).
 *
 * Everything is untrusted. Unknown fields are accepted (as serde does and as
 * Firecracker's own handlers do) and reported to the caller, who logs them;
 * every field lazyvm uses is validated completely and the first problem is
 * named. The JSON itself is read by json-c. */
#ifndef LAZYVM_FC_HANDSHAKE_H
#define LAZYVM_FC_HANDSHAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Bigger messages are refused (-E2BIG): 1024 regions of ~200 bytes fit easily. */
#define FC_HANDSHAKE_MAX_BYTES   (256u * 1024u)
#define FC_HANDSHAKE_MAX_REGIONS 1024u

/* Which page-size fields a region carried, and the secret-hiding ones. */
enum {
	FC_HAS_PAGE_SIZE = 1u << 0,
	FC_HAS_PAGE_SIZE_KIB = 1u << 1,
	FC_HAS_GPA_START = 1u << 2,
	FC_HAS_GUEST_MEMFD = 1u << 3, /* the field, whatever its value */
};

struct fc_region {
	uint64_t base_host_virt_addr;
	uint64_t size;
	uint64_t offset;
	uint64_t page_size; /* bytes: 4096 (also when no field says) or 2 MiB */
	uint64_t gpa_start; /* 0 unless FC_HAS_GPA_START */
	bool guest_memfd;   /* is_guest_memfd: true */
	unsigned has;       /* FC_HAS_* */
};

struct fc_handshake {
	struct fc_region *regions; /* malloc'd, nregions entries */
	size_t nregions;
	unsigned has;          /* FC_HAS_* of any region */
	size_t unknown_fields; /* fields lazyvm does not know, over all regions */
	char unknown[96];      /* their distinct names, comma-separated, as many as fit */
};

/* Where the first JSON value in buf[0..len) ends, for a reader of a stream
 * of messages. Returns 1 with *end set (the value's bytes are buf[0..*end),
 * leading white space included), 0 when more bytes are needed (a top-level
 * number counts only once something follows it), or -EINVAL when the bytes
 * cannot be JSON, with *end at the offending byte. */
int fc_json_next(const char *buf, size_t len, size_t *end);

/* Parses and validates a hand-off. `file_size` is the size of the memory file
 * the regions must fit in (0: not checked). On success returns 0 and fills
 * *out (release with fc_handshake_free). On failure returns -EINVAL (malformed
 * or invalid), -E2BIG (too large / too many regions) or -ENOMEM, leaves *out
 * empty, and writes one sentence naming the problem (with the region index,
 * field and value where there is one) into err[0..errlen).
 *
 * Rules: buf holds one JSON value and white space; it is a non-empty array of
 * at most FC_HANDSHAKE_MAX_REGIONS objects; base_host_virt_addr, size and
 * offset are required; page_size, page_size_kib and gpa_start are optional;
 * each is a non-negative integer that fits in u64 (no fraction or exponent);
 * is_guest_memfd is optional and a boolean; page_size and page_size_kib are
 * equal when both are present; the page size (4096 when neither is) is 4096
 * or 2097152; base, size and offset are multiples of it; size > 0; no range
 * end overflows; host ranges do not overlap; file ranges do not overlap; file
 * ranges end within file_size when file_size != 0. Other fields are counted in
 * out->unknown_fields, whatever their values. A field given twice counts once,
 * with its last value (json-c keeps the last).
 *
 * "First problem": the JSON, then the array's shape, then each region in order
 * (fields, then values), then host overlaps, then file overlaps. Byte
 * positions are 0-based offsets into buf. err may be NULL (errlen 0); on
 * success it is "". */
int fc_handshake_parse(const char *buf, size_t len, uint64_t file_size, struct fc_handshake *out,
                       char *err, size_t errlen);

void fc_handshake_free(struct fc_handshake *hs);

/* The shapes fc-client can send: what one Firecracker release writes. */
enum fc_shape {
	FC_SHAPE_V1_4,          /* base_host_virt_addr, size, offset */
	FC_SHAPE_V1_7,          /* + page_size_kib (bytes) */
	FC_SHAPE_V1_12,         /* + page_size, page_size_kib: v1.12 to v1.16 and main */
	FC_SHAPE_SECRET_HIDING, /* + gpa_start, page_size, is_guest_memfd, page_size_kib */
};

/* Writes the array Firecracker of that shape would send for these regions,
 * in its field order, NUL-terminated. Returns the length, or -ENOSPC when buf
 * is too small (buf is then ""). Not validated; n == 0 writes "[]". */
int fc_handshake_format(const struct fc_region *regions, size_t n, enum fc_shape shape, char *buf,
                        size_t len);

/* A fault request in JSON (the secret-hiding branch before it moved to
 * bitcode frames): Firecracker asks for the bytes at `offset`, e.g. after a
 * KVM userfault exit. `token` (that protocol) and `gpa` are optional. */
struct fc_fault_request {
	uint32_t vcpu;
	uint64_t offset;
	uint64_t flags;
	uint64_t gpa, token;
	bool has_gpa, has_token;
};

/* What kind of message buf[0..len) (one JSON value) is after the hand-off:
 * 1 a fault request (parsed into *req), 0 something else lazyvm does not
 * know (named in err), -EINVAL a fault request with a bad field (named). */
int fc_fault_request_parse(const char *buf, size_t len, struct fc_fault_request *req, char *err,
                           size_t errlen);

/* The reply: the request's vcpu, flags and token (or gpa) copied back, with the range
 * [offset, offset + len) that was populated and whether it was zeros.
 * NUL-terminated; returns the length or -ENOSPC. */
int fc_fault_reply_format(const struct fc_fault_request *req, uint64_t offset, uint64_t len,
                          bool zero, char *buf, size_t buflen);

#endif
