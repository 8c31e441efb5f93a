/* Working-set files (REAP): the pages a VM touched, in the order it touched
 * them, so that later VMs of the same snapshot can have them installed first.
 * On disk: a header naming the snapshot they belong to (its memory size and a
 * tag: the state file's CRC for a lazyvm snapshot, the checksum file's
 * content tag or the memory file's first pages' CRC for fc-handler), then the
 * source page numbers (4 KiB units, u64), and in a packed file (magic
 * LZYVMWS2, as REAP keeps them) the pages' bytes after that, so that a replay
 * is one read of one file instead of a fetch a page. A file that is missing,
 * damaged or from another snapshot costs only a warning: the caller goes on
 * without. */
#ifndef LAZYVM_WORKSET_H
#define LAZYVM_WORKSET_H

#include <stddef.h>
#include <stdint.h>

struct ws_id {
	uint64_t mem_size;
	uint32_t tag;
};

/* contents: NULL (an unpacked file), or page i's bytes at contents + i * 4096.
 * 0 or -errno with why. */
int ws_save(const char *path, const struct ws_id *id, const uint64_t *pages, uint64_t n,
            const void *contents, char *why, size_t whylen);

/* 0 with a malloc'd *pages of *n entries; -ENOENT (cannot open), -EINVAL (not a
 * working-set file, or truncated, or a page beyond mem_size), -ESTALE (made
 * for another snapshot), each with why. */
int ws_load(const char *path, const struct ws_id *id, uint64_t **pages, uint64_t *n, char *why,
            size_t whylen);
/* The same, and for a packed file its pages' bytes in a malloc'd *contents
 * (NULL for an unpacked one). */
int ws_load_packed(const char *path, const struct ws_id *id, uint64_t **pages, uint64_t *n,
                   void **contents, char *why, size_t whylen);

#endif
