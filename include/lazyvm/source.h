/* Page sources: where the bytes of a missing page come from.
 *
 * A source is a read-only byte range [0, size). Every read returns all the bytes
 * asked for or fails; a short read is never passed off as success and a missing
 * byte is never replaced by zeros. Sources are safe to call from several threads
 * at once. Kinds: a snapshot memory file (pread, or io_uring for batches), zeros,
 * and a wrapper that adds latency to stand for remote storage. A network source
 * plugs in through the same ops. */
#ifndef LAZYVM_SOURCE_H
#define LAZYVM_SOURCE_H

#include <stddef.h>
#include <stdint.h>

struct source;

/* One read in a batch. `result` is 0 or -errno after source_read_batch. */
struct source_req {
	void *buf;
	uint64_t off;
	size_t len;
	int result;
};

struct source_ops {
	const char *kind;
	/* Reads len bytes at off into buf: 0 or -errno. */
	int (*read)(struct source *src, void *buf, uint64_t off, size_t len);
	/* Optional: all requests of a batch in flight together. NULL: one by one. */
	int (*read_batch)(struct source *src, struct source_req *reqs, unsigned n);
	/* Optional: words for a failed read's -errno into buf, where the kind
	 * knows more than strerror; returns 1 when it wrote them, else 0. */
	int (*explain)(struct source *src, int err, char *buf, size_t len);
	void (*destroy)(struct source *src);
};

struct source {
	const struct source_ops *ops;
	uint64_t size;
	char desc[256]; /* for messages: "file /path/mem (io_uring)" */
};

#define SOURCE_BATCH_MAX 256u

/* Reads [off, off + len): -ERANGE when the range is not inside the source, else
 * the kind's result. */
int source_read(struct source *src, void *buf, uint64_t off, size_t len);

/* Runs n <= SOURCE_BATCH_MAX requests; each gets its own result. Returns 0 when
 * every request succeeded, else the first failure's -errno. */
int source_read_batch(struct source *src, struct source_req *reqs, unsigned n);

static inline uint64_t source_size(const struct source *src)
{
	return src->size;
}
static inline const char *source_describe(const struct source *src)
{
	return src->desc;
}

/* Words for the -errno a read of src failed with, for messages: strerror's,
 * or the source's own where it knows more (a memory file that shrank after it
 * was opened names itself and both sizes). Goes through wrappers to the
 * source that failed. Returns buf. */
const char *source_strerror(struct source *src, int err, char *buf, size_t len);

void source_destroy(struct source *src);

enum {
	SOURCE_FILE_IO_URING = 1u << 0, /* batches go through io_uring (probed at open) */
};

/* Opens a snapshot memory file (a regular file or a block device) read-only,
 * through lv_open_input: a FIFO, directory, socket or character device is
 * refused at once, never waited on. With SOURCE_FILE_IO_URING and no io_uring
 * on this kernel, returns -ENOSYS (the caller decides whether that is fatal;
 * lazyvm's CLI says so and stops). On failure `why` (may be NULL) names the
 * path and the reason. A read past the end the file had when it was opened is
 * -ENODATA, which source_strerror explains. */
int source_file_open(const char *path, unsigned flags, struct source **out, char *why,
                     size_t whylen);

/* An NBD export (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH, any
 * URI libnbd takes) as a source: reads in flight together; every wait for the
 * server (connect and handshake included) ends after `timeout_ns` without
 * progress (0: SOURCE_NBD_TIMEOUT_NS); a failed attempt is retried on a new
 * connection with back-off, 6 attempts in all, so a read the server never
 * answers fails within 6 * timeout + 1.55 s, with -ETIMEDOUT (the server went
 * silent) or -EIO (refused, reset, NBD errors) and the reason logged; after
 * that every read fails at once. Opening makes one attempt: -ETIMEDOUT or
 * -ECONNREFUSED with `why` when it fails. */
#define SOURCE_NBD_TIMEOUT_NS (5000ull * 1000 * 1000)
int source_nbd_open(const char *uri, uint64_t timeout_ns, struct source **out, char *why,
                    size_t whylen);

/* A source of `size` zero bytes. */
int source_zero_create(uint64_t size, struct source **out);

/* Wraps `inner` (taking ownership) so that every read, and every batch as a
 * whole, first waits `delay_ns`: remote storage with that latency and unlimited
 * parallelism. */
int source_latency_wrap(struct source *inner, uint64_t delay_ns, struct source **out);

/* Page checksums kept beside a memory file: a file of CRC-32C values, one u32
 * per page, read lazily in chunks of CSUM_CHUNK_PAGES entries, each chunk
 * itself checked against `chunk_crcs` (CRC-32C of each 4 KiB chunk of the
 * checksum file, from the snapshot's state file). So opening costs the same
 * for any memory size; each chunk is read once, when a page it covers is
 * first fetched. */
#define CSUM_CHUNK_PAGES 1024u

/* Wraps `inner` (taking ownership) so that every page read is checked: a page
 * whose CRC-32C differs from its checksum, or whose checksum chunk is damaged,
 * fails the read with -EBADMSG (and a logged message naming it), so a corrupt
 * page is never installed. `csum_fd` is duplicated; `chunk_crcs` is borrowed
 * and must outlive the source; the page CRCs start at csum_off in csum_fd.
 * Reads must be page-aligned whole pages. */
int source_checked_wrap(struct source *inner, int csum_fd, uint64_t csum_off,
                        const uint32_t *chunk_crcs, uint64_t npages, uint32_t page_size,
                        struct source **out);

/* Checks bytes already read at source offset `off` against the checksums of a
 * source made by source_checked_wrap (eager loading). 0 or -EBADMSG. */
int source_checked_verify(struct source *src, const void *buf, uint64_t off, size_t len);
/* Checks that the pages of [off, off + len), which something else claims are
 * zero (a snapshot's zero-page map), have the checksum of a zero page, so the
 * claim and the checksums agree before any page is installed unread.
 * 0 or -EBADMSG (logged, naming the first page that disagrees). */
int source_checked_verify_zero(struct source *src, uint64_t off, size_t len);

#endif
