/* A lazyvm snapshot's page checksums and zero-page map as a checksum file
 * (`lazyvm checksum --from-snapshot DIR`), for fc-handler to serve the
 * snapshot's memory file with. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/csumfile.h"
#include "lazyvm/fdio.h"
#include "lazyvm/source.h"
#include "lazyvm/vmm.h"
#include "snapshot.h"

/* The whole of DIR/name, at most max bytes, malloc'd. */
static int read_whole(const char *dir, const char *name, size_t max, void **buf, size_t *len,
                      char *why, size_t whylen)
{
	char path[4096];
	struct stat st;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if ((fd = lv_open_input(path, 0, &st, why, whylen)) < 0)
		return fd;
	if (st.st_size <= 0 || (uint64_t)st.st_size > max) {
		close(fd);
		snprintf(why, whylen, "%s: %lld bytes is not a plausible size", path,
		         (long long)st.st_size);
		return -EINVAL;
	}
	*len = (size_t)st.st_size;
	*buf = malloc(*len);
	if (!*buf) {
		close(fd);
		return -ENOMEM;
	}
	for (size_t got = 0; got < *len;) {
		ssize_t n = pread(fd, (char *)*buf + got, *len - got, (off_t)got);
		if (n <= 0) {
			snprintf(why, whylen, "reading %s: %s", path,
			         n < 0 ? strerror(errno) : "file shrank");
			close(fd);
			free(*buf);
			return n < 0 ? -errno : -EIO;
		}
		got += (size_t)n;
	}
	close(fd);
	return 0;
}

int vmm_snapshot_checksums(const char *dir, const char *out_path, uint64_t *mem_size,
                           uint64_t *zero_pages, char *why, size_t whylen)
{
	struct snap_reader rd;
	void *state = NULL, *crcs = NULL;
	size_t state_len, crcs_len;
	const uint32_t *chunks;
	const uint64_t *zero;
	uint64_t *zero_map = NULL, len, npages, nchunks, words;
	int r;

	r = read_whole(dir, "state", SNAP_STATE_MAX, &state, &state_len, why, whylen);
	if (r < 0)
		return r;
	if (snap_reader_init(&rd, state, state_len, why, whylen) < 0) {
		r = -EINVAL;
		goto out;
	}
	npages = rd.hdr.mem_size / SNAP_PAGE_SIZE;
	nchunks = (npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;
	words = (npages + 63) / 64;
	chunks = snap_find(&rd, SNAP_CSUM_CHUNKS, 0, &len);
	if (!chunks || len != nchunks * 4) {
		snprintf(why, whylen, "%s/state: no checksum chunk table of the right length", dir);
		r = -EINVAL;
		goto out;
	}
	r = read_whole(dir, "checksums", npages * 4, &crcs, &crcs_len, why, whylen);
	if (r < 0)
		goto out;
	if (crcs_len != npages * 4) {
		snprintf(why, whylen,
		         "%s/checksums is %zu bytes; the snapshot's %llu pages need %llu", dir,
		         crcs_len, (unsigned long long)npages, (unsigned long long)(npages * 4));
		r = -EINVAL;
		goto out;
	}
	/* The page checksums are what the state vouches for: chunk by chunk. */
	for (uint64_t c = 0; c < nchunks; c++) {
		uint64_t n = npages - c * CSUM_CHUNK_PAGES;
		if (crc32c(0, (uint32_t *)crcs + c * CSUM_CHUNK_PAGES,
		           (n < CSUM_CHUNK_PAGES ? n : CSUM_CHUNK_PAGES) * 4) != chunks[c]) {
			snprintf(
			    why, whylen,
			    "%s/checksums: chunk %llu is damaged (not the CRC the state records)",
			    dir, (unsigned long long)c);
			r = -EINVAL;
			goto out;
		}
	}
	zero_map = calloc(words ? words : 1, 8);
	if (!zero_map) {
		r = -ENOMEM;
		goto out;
	}
	/* Optional in the format: without it no page is known to be zero. */
	zero = snap_find(&rd, SNAP_ZERO_PAGES, 0, &len);
	if (zero && len == words * 8)
		memcpy(zero_map, zero, len);
	*zero_pages = 0;
	for (uint64_t w = 0; w < words; w++)
		*zero_pages += (uint64_t)__builtin_popcountll(zero_map[w]);
	*mem_size = rd.hdr.mem_size;
	r = csumfile_write(out_path, rd.hdr.mem_size, crcs, zero_map, why, whylen);
out:
	free(state);
	free(crcs);
	free(zero_map);
	return r;
}
