/* A source wrapper that verifies every page against the snapshot's checksums,
 * loading the checksum table lazily, one verified chunk at a time. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"

#define CHUNK_BYTES (CSUM_CHUNK_PAGES * sizeof(uint32_t))

struct checked_source {
	struct source base;
	struct source *inner;
	int csum_fd;
	uint64_t csum_off;          /* where the page CRCs start in csum_fd */
	const uint32_t *chunk_crcs; /* borrowed */
	uint64_t npages, nchunks;
	uint32_t page_size;
	uint32_t zero_crc;         /* of a page of zeros */
	pthread_mutex_t load_lock; /* loads are rare: one lock is plenty */
	uint32_t *_Atomic *chunks; /* nchunks pointers, NULL until loaded */
};

/* The checksum chunk covering `page`, loaded and verified on first use. */
static const uint32_t *chunk_of(struct checked_source *cs, uint64_t page, int *err)
{
	uint64_t c = page / CSUM_CHUNK_PAGES;
	uint32_t *chunk = atomic_load_explicit(&cs->chunks[c], memory_order_acquire);

	if (chunk)
		return chunk;
	pthread_mutex_lock(&cs->load_lock);
	chunk = atomic_load_explicit(&cs->chunks[c], memory_order_acquire);
	if (!chunk) {
		uint64_t entries = cs->npages - c * CSUM_CHUNK_PAGES;
		size_t len =
		    (entries < CSUM_CHUNK_PAGES ? entries : CSUM_CHUNK_PAGES) * sizeof(uint32_t);
		uint32_t *buf = calloc(1, CHUNK_BYTES);
		ssize_t n =
		    buf ? pread(cs->csum_fd, buf, len, (off_t)(cs->csum_off + c * CHUNK_BYTES))
		        : -1;

		if (!buf) {
			*err = -ENOMEM;
		} else if (n != (ssize_t)len) {
			lv_err("%s: checksum chunk %llu: %s", cs->base.desc, (unsigned long long)c,
			       n < 0 ? strerror(errno) : "the checksum file is short");
			*err = -EBADMSG;
		} else if (crc32c(0, buf, len) != cs->chunk_crcs[c]) {
			lv_err(
			    "%s: checksum chunk %llu (pages %llu..) is damaged: its CRC-32C is not "
			    "the one recorded for it",
			    cs->base.desc, (unsigned long long)c,
			    (unsigned long long)(c * CSUM_CHUNK_PAGES));
			*err = -EBADMSG;
		} else {
			chunk = buf;
			buf = NULL;
			atomic_store_explicit(&cs->chunks[c], chunk, memory_order_release);
		}
		free(buf);
	}
	pthread_mutex_unlock(&cs->load_lock);
	return chunk;
}

/* Checks [off, off + len) against the checksums: the bytes in buf, or, with
 * buf NULL, a zero page for each page (the page is claimed to be zero). */
static int verify(struct checked_source *cs, const void *buf, uint64_t off, size_t len)
{
	if (off % cs->page_size || len % cs->page_size)
		return -EINVAL;
	for (size_t done = 0; done < len; done += cs->page_size) {
		uint64_t page = (off + done) / cs->page_size;
		int err = 0;
		const uint32_t *chunk = page < cs->npages ? chunk_of(cs, page, &err) : NULL;

		if (!chunk)
			return err ? err : -ERANGE;
		uint32_t want = chunk[page % CSUM_CHUNK_PAGES];
		uint32_t got =
		    buf ? crc32c(0, (const char *)buf + done, cs->page_size) : cs->zero_crc;
		if (got != want) {
			lv_err("%s: page %llu (offset 0x%llx) %s: crc32c 0x%08x, the checksums say "
			       "0x%08x",
			       cs->base.desc, (unsigned long long)page,
			       (unsigned long long)(off + done),
			       buf ? "fails its checksum"
			           : "is marked zero, but its checksum is not a zero page's",
			       got, want);
			return -EBADMSG;
		}
	}
	return 0;
}

int source_checked_verify(struct source *src, const void *buf, uint64_t off, size_t len)
{
	return verify((struct checked_source *)src, buf, off, len);
}

int source_checked_verify_zero(struct source *src, uint64_t off, size_t len)
{
	return verify((struct checked_source *)src, NULL, off, len);
}

static int checked_read(struct source *src, void *buf, uint64_t off, size_t len)
{
	struct checked_source *cs = (struct checked_source *)src;
	int r = cs->inner->ops->read(cs->inner, buf, off, len);

	return r < 0 ? r : verify(cs, buf, off, len);
}

static int checked_read_batch(struct source *src, struct source_req *reqs, unsigned n)
{
	struct checked_source *cs = (struct checked_source *)src;

	source_read_batch(cs->inner, reqs, n);
	for (unsigned i = 0; i < n; i++)
		if (reqs[i].result == 0)
			reqs[i].result = verify(cs, reqs[i].buf, reqs[i].off, reqs[i].len);
	return 0;
}

static int checked_explain(struct source *src, int err, char *buf, size_t len)
{
	source_strerror(((struct checked_source *)src)->inner, err, buf, len);
	return 1;
}

static void checked_destroy(struct source *src)
{
	struct checked_source *cs = (struct checked_source *)src;

	for (uint64_t c = 0; c < cs->nchunks; c++)
		free(atomic_load(&cs->chunks[c]));
	free(cs->chunks);
	pthread_mutex_destroy(&cs->load_lock);
	close(cs->csum_fd);
	source_destroy(cs->inner);
	free(cs);
}

static const struct source_ops checked_ops = {
    .kind = "checked",
    .read = checked_read,
    .read_batch = checked_read_batch,
    .explain = checked_explain,
    .destroy = checked_destroy,
};

int source_checked_wrap(struct source *inner, int csum_fd, uint64_t csum_off,
                        const uint32_t *chunk_crcs, uint64_t npages, uint32_t page_size,
                        struct source **out)
{
	struct checked_source *cs;
	uint32_t zero_crc;
	void *zeros;

	if (!page_size || npages * page_size != inner->size)
		return -EINVAL;
	if (!(zeros = calloc(1, page_size)))
		return -ENOMEM;
	zero_crc = crc32c(0, zeros, page_size);
	free(zeros);
	cs = calloc(1, sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	cs->nchunks = (npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;
	cs->chunks = calloc(cs->nchunks, sizeof(*cs->chunks));
	cs->csum_fd = fcntl(csum_fd, F_DUPFD_CLOEXEC, 0);
	cs->csum_off = csum_off;
	if (!cs->chunks || cs->csum_fd < 0) {
		int err = cs->chunks ? -errno : -ENOMEM;
		if (cs->csum_fd >= 0)
			close(cs->csum_fd);
		free(cs->chunks);
		free(cs);
		return err;
	}
	pthread_mutex_init(&cs->load_lock, NULL);
	cs->base.ops = &checked_ops;
	cs->base.size = inner->size;
	snprintf(cs->base.desc, sizeof(cs->base.desc), "%.220s, checksummed", inner->desc);
	cs->inner = inner;
	cs->chunk_crcs = chunk_crcs;
	cs->npages = npages;
	cs->page_size = page_size;
	cs->zero_crc = zero_crc;
	*out = &cs->base;
	return 0;
}
