/* Firecracker's UFFD hand-off message (released Firecracker versions).
 *
 * On `PUT /snapshot/load` with the Uffd memory backend, Firecracker connects to
 * the handler's unix socket and sends ONE message: a JSON array with one object
 * per guest memory region
 *   {"base_host_virt_addr": u64, "size": u64, "offset": u64,
 *    "page_size": u64, "page_size_kib": u64}
 * and the userfaultfd as SCM_RIGHTS. `offset` is the region's position in the
 * memory file (the sum of the sizes before it); `page_size_kib` is deprecated
 * and, despite its name, carries the same value in bytes. Nothing else is sent.
 *
 * Everything in the message is untrusted: the parser validates it completely
 * and explains the first problem it finds. */
#ifndef LAZYVM_FC_HANDSHAKE_H
#define LAZYVM_FC_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

/* Bigger messages are refused (-E2BIG): 1024 regions of ~170 bytes fit easily. */
#define FC_HANDSHAKE_MAX_BYTES   (256u * 1024u)
#define FC_HANDSHAKE_MAX_REGIONS 1024u

struct fc_region {
	uint64_t base_host_virt_addr;
	uint64_t size;
	uint64_t offset;
	uint64_t page_size; /* bytes: 4096 or 2 MiB (hugetlbfs) */
};

struct fc_handshake {
	struct fc_region *regions; /* malloc'd, nregions entries */
	size_t nregions;
};

/* Tells whether buf[0..len) holds a complete top-level JSON value, so a reader
 * knows when to stop reading a stream socket. Returns 1 when complete (trailing
 * white space allowed), 0 when more bytes are needed, -EINVAL when the bytes
 * cannot start or continue any JSON value (e.g. trailing garbage after the
 * value, or a first byte that is not JSON). Never reads past len.
 * It recognises the full JSON grammar (any value shape, containers nested at
 * most 64 deep); a top-level number counts as complete only once white space
 * follows it, since more digits could still arrive. */
int fc_handshake_complete(const char *buf, size_t len);

/* Parses and validates a handshake. `file_size` is the size of the memory file
 * the regions must fit in (0: not checked). On success returns 0 and fills
 * *out (release with fc_handshake_free). On failure returns -EINVAL (malformed
 * or invalid), -E2BIG (too large / too many regions) or -ENOMEM, leaves *out
 * empty, and writes one human-readable sentence naming the problem (with the
 * region index, field and value where there is one) into err[0..errlen).
 *
 * Rules: the top level is a non-empty array of at most FC_HANDSHAKE_MAX_REGIONS
 * objects; each object has exactly the fields above, each at most once, each a
 * non-negative integer without sign, fraction or exponent that fits in u64;
 * `page_size` and/or `page_size_kib` must be present and equal when both are;
 * unknown fields are refused; page_size is 4096 or 2097152; base, size and
 * offset are multiples of page_size; size > 0; base + size and offset + size do
 * not overflow; host ranges do not overlap; file ranges do not overlap; every
 * file range ends within file_size when file_size != 0. JSON strings may use
 * escapes (\" \\ \/ \b \f \n \r \t \uXXXX, surrogates only in pairs) in keys.
 *
 * "First problem" means: the JSON and its shape in document order (syntax,
 * unknown, duplicate and missing fields, value types), then each region's
 * values in region order, then host overlaps, then file overlaps. Byte
 * positions in messages are 0-based offsets into buf. err may be NULL (with
 * errlen 0); on success it is set to "". */
int fc_handshake_parse(const char *buf, size_t len, uint64_t file_size, struct fc_handshake *out,
                       char *err, size_t errlen);

void fc_handshake_free(struct fc_handshake *hs);

/* Writes the JSON Firecracker would send for these regions (both page_size
 * fields, in Firecracker's field order) into buf, NUL-terminated. Returns the
 * length, or -ENOSPC when buf is too small (buf is then ""). The regions are
 * written as given, not validated; n == 0 writes "[]". */
int fc_handshake_format(const struct fc_region *regions, size_t n, char *buf, size_t len);

#endif
