/* Checksum files (`lazyvm checksum MEMFILE`): what a page server needs to
 * check a memory file page by page, and to know its zero pages (holes and
 * all-zero pages) without reading them. One file, little-endian:
 *
 *   header (64 bytes, struct csumfile_header)
 *   chunk CRCs   u32 CRC-32C of each 4 KiB chunk of the page CRCs
 *   zero map     u64 words, bit i set = page i is all zeros
 *   page CRCs    u32 CRC-32C of every 4 KiB page, at a 4 KiB-aligned offset
 *
 * The header carries its own CRC and the zero map's, so damage anywhere is
 * found: in the header and the zero map when the file is opened, in a chunk
 * of page CRCs when a page it covers is first read (source_checked). */
#ifndef LAZYVM_CSUMFILE_H
#define LAZYVM_CSUMFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CSUMFILE_MAGIC     "LZVMSUM1"
#define CSUMFILE_VERSION   1
#define CSUMFILE_PAGE_SIZE 4096u

struct csumfile_header {
	char magic[8];
	uint32_t version;
	uint32_t page_size;
	uint64_t mem_size; /* bytes of the memory file it describes */
	uint64_t npages;
	uint64_t chunks_off, zero_off, crcs_off;
	uint32_t zero_crc;   /* CRC-32C of the zero map */
	uint32_t header_crc; /* CRC-32C of this header with header_crc 0 */
};

struct csumfile {
	int fd;
	struct csumfile_header h;
	uint32_t *chunk_crcs; /* nchunks entries */
	uint64_t *zero_map;   /* (npages + 63) / 64 words */
	uint64_t nchunks, zero_pages;
	uint32_t tag; /* the content's identity (CRC-32C of the chunk CRCs) */
};

/* Writes a checksum file for page CRCs and a zero map already computed (from
 * a scan, or a lazyvm snapshot's checksums): to a temporary name, then renamed
 * into place. 0 or -errno with why. */
int csumfile_write(const char *path, uint64_t mem_size, const uint32_t *crcs,
                   const uint64_t *zero_map, char *why, size_t whylen);

struct csumfile_scan {
	uint64_t pages, zero_pages, hole_pages; /* hole_pages: found by SEEK_HOLE, not read */
	uint64_t bytes_read;
};

/* Reads the memory file (fd, mem_size bytes, a multiple of 4 KiB) and fills
 * crcs (npages) and zero_map (zeroed by the caller). Holes are found with
 * SEEK_DATA/SEEK_HOLE and never read. `progress` (may be NULL) is called
 * about once a second with bytes done. 0 or -errno with why. */
int csumfile_scan(int fd, uint64_t mem_size, uint32_t *crcs, uint64_t *zero_map,
                  struct csumfile_scan *st, void (*progress)(uint64_t done, uint64_t total),
                  char *why, size_t whylen);

/* Opens and checks a checksum file against a memory file of mem_size bytes:
 * magic, version, page size, size, the header's and the zero map's CRCs.
 * 0 or -errno with why naming what is wrong. */
int csumfile_open(const char *path, uint64_t mem_size, struct csumfile **out, char *why,
                  size_t whylen);
void csumfile_close(struct csumfile *cf);

static inline bool csumfile_is_zero(const struct csumfile *cf, uint64_t page)
{
	return page < cf->h.npages && (cf->zero_map[page / 64] >> (page % 64) & 1);
}

struct source;
/* Wraps inner (taking ownership) so that every page read is checked against
 * cf's page CRCs; cf must outlive the source. 0 or -errno. */
int csumfile_wrap(struct csumfile *cf, struct source *inner, struct source **out);

#endif
