/* Checksum files: see include/lazyvm/csumfile.h for the layout. */
#include "lazyvm/csumfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/fdio.h"
#include "lazyvm/source.h"
#include "lazyvm/units.h"

#define PAGE       CSUMFILE_PAGE_SIZE
#define CHUNK_SIZE (CSUM_CHUNK_PAGES * sizeof(uint32_t))
#define SCAN_BUF   (1u << 20)

_Static_assert(sizeof(struct csumfile_header) == 64, "the header is 64 bytes on disk");

static uint64_t zero_words(uint64_t npages)
{
	return (npages + 63) / 64;
}

/* Where each part goes, from the page count alone. */
static void layout(struct csumfile_header *h, uint64_t npages)
{
	uint64_t nchunks = (npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;

	h->npages = npages;
	h->chunks_off = sizeof(*h);
	h->zero_off = (h->chunks_off + nchunks * sizeof(uint32_t) + 7) / 8 * 8;
	h->crcs_off = (h->zero_off + zero_words(npages) * 8 + PAGE - 1) / PAGE * PAGE;
}

static uint32_t header_crc(const struct csumfile_header *h)
{
	struct csumfile_header c = *h;

	c.header_crc = 0;
	return crc32c(0, &c, sizeof(c));
}

int csumfile_write(const char *path, uint64_t mem_size, const uint32_t *crcs,
                   const uint64_t *zero_map, char *why, size_t whylen)
{
	struct csumfile_header h = {.magic = CSUMFILE_MAGIC,
	                            .version = CSUMFILE_VERSION,
	                            .page_size = PAGE,
	                            .mem_size = mem_size};
	uint64_t npages = mem_size / PAGE, nchunks;
	char tmp[4200];
	uint32_t *chunks;
	int fd, r = 0;

	if (mem_size % PAGE) {
		snprintf(why, whylen, "%llu bytes is not a whole number of 4 KiB pages",
		         (unsigned long long)mem_size);
		return -EINVAL;
	}
	layout(&h, npages);
	nchunks = (npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;
	chunks = calloc(nchunks ? nchunks : 1, sizeof(*chunks));
	if (!chunks)
		return -ENOMEM;
	for (uint64_t c = 0; c < nchunks; c++) {
		uint64_t n = npages - c * CSUM_CHUNK_PAGES;

		chunks[c] =
		    crc32c(0, crcs + c * CSUM_CHUNK_PAGES,
		           (n < CSUM_CHUNK_PAGES ? n : CSUM_CHUNK_PAGES) * sizeof(uint32_t));
	}
	h.zero_crc = crc32c(0, zero_map, zero_words(npages) * 8);
	h.header_crc = header_crc(&h);
	if (snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof(tmp)) {
		free(chunks);
		snprintf(why, whylen, "path too long: %s", path);
		return -ENAMETOOLONG;
	}
	fd = lv_open_output(tmp, 0644, why, whylen);
	if (fd < 0) {
		free(chunks);
		return fd;
	}
	const struct {
		const void *buf;
		size_t len;
		uint64_t off;
	} parts[] = {{&h, sizeof(h), 0},
	             {chunks, nchunks * 4, h.chunks_off},
	             {zero_map, zero_words(npages) * 8, h.zero_off},
	             {crcs, npages * 4, h.crcs_off}};
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]) && !r; i++) {
		ssize_t n = pwrite(fd, parts[i].buf, parts[i].len, (off_t)parts[i].off);

		/* A short write sets no errno: say what it was, not a stale one. */
		if (n != (ssize_t)parts[i].len)
			r = n < 0 ? -errno : -ENOSPC;
	}
	if (!r && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && !r)
		r = -errno;
	if (!r && rename(tmp, path) < 0)
		r = -errno;
	if (r) {
		snprintf(why, whylen, "writing %s: %s", path, strerror(-r));
		unlink(tmp);
	}
	free(chunks);
	return r;
}

static bool all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i += 8) {
		uint64_t w;

		memcpy(&w, p + i, 8);
		if (w)
			return false;
	}
	return true;
}

int csumfile_scan(int fd, uint64_t mem_size, uint32_t *crcs, uint64_t *zero_map,
                  struct csumfile_scan *st, void (*progress)(uint64_t done, uint64_t total),
                  char *why, size_t whylen)
{
	unsigned char *buf = malloc(SCAN_BUF), zeros[PAGE] = {0};
	uint32_t zero_crc = crc32c(0, zeros, PAGE);
	uint64_t off = 0, next_report = lv_now_ns() + 1000000000ull;
	int r = 0;

	memset(st, 0, sizeof(*st));
	if (!buf)
		return -ENOMEM;
	while (off < mem_size && !r) {
		/* A hole (SEEK_DATA jumps over it) is zeros nobody needs to read. */
		off_t data = lseek(fd, (off_t)off, SEEK_DATA);
		uint64_t hole_end = data < 0 ? mem_size : (uint64_t)data / PAGE * PAGE;

		if (hole_end > mem_size)
			hole_end = mem_size;
		for (; off < hole_end; off += PAGE) {
			crcs[off / PAGE] = zero_crc;
			zero_map[off / PAGE / 64] |= 1ull << (off / PAGE % 64);
			st->zero_pages++;
			st->hole_pages++;
		}
		if (off >= mem_size)
			break;
		off_t hole = lseek(fd, (off_t)off, SEEK_HOLE);
		uint64_t data_end = hole < 0 ? mem_size : ((uint64_t)hole + PAGE - 1) / PAGE * PAGE;

		if (data_end > mem_size || data_end <= off)
			data_end = mem_size;
		while (off < data_end && !r) {
			size_t len =
			    data_end - off < SCAN_BUF ? (size_t)(data_end - off) : SCAN_BUF;
			ssize_t n = pread(fd, buf, len, (off_t)off);

			if (n != (ssize_t)len) {
				r = n < 0 ? -errno : -EIO;
				snprintf(
				    why, whylen, "reading offset %llu: %s", (unsigned long long)off,
				    n < 0 ? strerror(errno) : "the file is shorter than it was");
				break;
			}
			st->bytes_read += len;
			for (size_t p = 0; p < len; p += PAGE, off += PAGE) {
				crcs[off / PAGE] = crc32c(0, buf + p, PAGE);
				if (all_zero(buf + p, PAGE)) {
					zero_map[off / PAGE / 64] |= 1ull << (off / PAGE % 64);
					st->zero_pages++;
				}
			}
			if (progress && lv_now_ns() >= next_report) {
				progress(off, mem_size);
				next_report = lv_now_ns() + 1000000000ull;
			}
		}
	}
	st->pages = mem_size / PAGE;
	free(buf);
	return r;
}

int csumfile_open(const char *path, uint64_t mem_size, struct csumfile **out, char *why,
                  size_t whylen)
{
	struct csumfile *cf = calloc(1, sizeof(*cf));
	struct csumfile_header want = {0};
	struct stat st;
	size_t zlen;
	int r = -EINVAL;

	if (!cf)
		return -ENOMEM;
	cf->fd = lv_open_input(path, 0, &st, why, whylen);
	if (cf->fd < 0) {
		r = cf->fd;
		free(cf);
		return r;
	}
	if (pread(cf->fd, &cf->h, sizeof(cf->h), 0) != (ssize_t)sizeof(cf->h) ||
	    memcmp(cf->h.magic, CSUMFILE_MAGIC, 8) != 0) {
		snprintf(why, whylen,
		         "%s is not a lazyvm checksum file (made by `lazyvm checksum`)", path);
		goto fail;
	}
	if (cf->h.version != CSUMFILE_VERSION || cf->h.page_size != PAGE) {
		snprintf(why, whylen,
		         "%s: version %u with %u-byte pages; this lazyvm reads version %u "
		         "with 4096-byte pages",
		         path, cf->h.version, cf->h.page_size, CSUMFILE_VERSION);
		goto fail;
	}
	if (header_crc(&cf->h) != cf->h.header_crc) {
		snprintf(why, whylen, "%s: its header is damaged (CRC-32C mismatch)", path);
		goto fail;
	}
	if (cf->h.mem_size != mem_size) {
		snprintf(why, whylen,
		         "%s was made for a %llu-byte memory file; this one is %llu bytes (another "
		         "snapshot?)",
		         path, (unsigned long long)cf->h.mem_size, (unsigned long long)mem_size);
		goto fail;
	}
	layout(&want, mem_size / PAGE);
	if (cf->h.npages != want.npages || cf->h.chunks_off != want.chunks_off ||
	    cf->h.zero_off != want.zero_off || cf->h.crcs_off != want.crcs_off ||
	    (uint64_t)st.st_size < cf->h.crcs_off + cf->h.npages * 4) {
		snprintf(why, whylen,
		         "%s: its layout does not match its size (truncated or damaged)", path);
		goto fail;
	}
	cf->nchunks = (cf->h.npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;
	zlen = zero_words(cf->h.npages) * 8;
	cf->chunk_crcs = calloc(cf->nchunks ? cf->nchunks : 1, 4);
	cf->zero_map = calloc(zlen ? zlen / 8 : 1, 8);
	if (!cf->chunk_crcs || !cf->zero_map) {
		r = -ENOMEM;
		snprintf(why, whylen, "out of memory reading %s", path);
		goto fail;
	}
	if (pread(cf->fd, cf->chunk_crcs, cf->nchunks * 4, (off_t)cf->h.chunks_off) !=
	        (ssize_t)(cf->nchunks * 4) ||
	    pread(cf->fd, cf->zero_map, zlen, (off_t)cf->h.zero_off) != (ssize_t)zlen) {
		snprintf(why, whylen, "%s: short read", path);
		goto fail;
	}
	if (crc32c(0, cf->zero_map, zlen) != cf->h.zero_crc) {
		snprintf(why, whylen, "%s: its zero-page map is damaged (CRC-32C mismatch)", path);
		goto fail;
	}
	for (uint64_t w = 0; w < zlen / 8; w++)
		cf->zero_pages += (uint64_t)__builtin_popcountll(cf->zero_map[w]);
	cf->tag = crc32c(0, cf->chunk_crcs, cf->nchunks * 4);
	*out = cf;
	return 0;
fail:
	csumfile_close(cf);
	return r;
}

void csumfile_close(struct csumfile *cf)
{
	if (!cf)
		return;
	if (cf->fd >= 0)
		close(cf->fd);
	free(cf->chunk_crcs);
	free(cf->zero_map);
	free(cf);
}

int csumfile_wrap(struct csumfile *cf, struct source *inner, struct source **out)
{
	return source_checked_wrap(inner, cf->fd, cf->h.crcs_off, cf->chunk_crcs, cf->h.npages,
	                           PAGE, out);
}
