/* Working-set files: see include/lazyvm/workset.h. */
#include "lazyvm/workset.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lazyvm/fdio.h"

#define WS_MAGIC        "LZYVMWS1"
#define WS_MAGIC_PACKED "LZYVMWS2"

struct ws_header {
	char magic[8];
	uint64_t mem_size;
	uint32_t tag; /* was state_crc: the same field, more owners */
	uint32_t reserved;
	uint64_t count;
};

int ws_save(const char *path, const struct ws_id *id, const uint64_t *pages, uint64_t n,
            const void *contents, char *why, size_t whylen)
{
	struct ws_header h = {.mem_size = id->mem_size, .tag = id->tag, .count = n};
	int fd, r;

	/* Never blocks on a FIFO, refuses a directory or device with its name. */
	memcpy(h.magic, contents ? WS_MAGIC_PACKED : WS_MAGIC, 8);
	if ((fd = lv_open_output(path, 0644, why, whylen)) < 0)
		return fd;
	if ((r = lv_write_all(fd, &h, sizeof(h))) == 0)
		r = lv_write_all(fd, pages, n * sizeof(*pages));
	if (r == 0 && contents)
		r = lv_write_all(fd, contents, n * 4096);
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		snprintf(why, whylen, "writing %s: %s", path, strerror(-r));
	return r;
}

int ws_load(const char *path, const struct ws_id *id, uint64_t **pages, uint64_t *n, char *why,
            size_t whylen)
{
	return ws_load_packed(path, id, pages, n, NULL, why, whylen);
}

int ws_load_packed(const char *path, const struct ws_id *id, uint64_t **pages, uint64_t *n,
                   void **contents, char *why, size_t whylen)
{
	void *data = NULL;
	bool packed;
	uint64_t max = id->mem_size / 4096;
	struct ws_header h;
	uint64_t *p = NULL;
	int fd = lv_open_input(path, 0, NULL, why, whylen), r = -EINVAL;
	FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");

	*pages = NULL;
	*n = 0;
	if (contents)
		*contents = NULL;
	if (fd < 0)
		return -ENOENT;
	if (!f || fread(&h, sizeof(h), 1, f) != 1 ||
	    (memcmp(h.magic, WS_MAGIC, 8) != 0 && memcmp(h.magic, WS_MAGIC_PACKED, 8) != 0) ||
	    h.count > max * 4) {
		snprintf(why, whylen, "%s is not a working-set file", path);
		goto out;
	}
	if (h.mem_size != id->mem_size || h.tag != id->tag) {
		snprintf(why, whylen, "%s was recorded for another snapshot (stale)", path);
		r = -ESTALE;
		goto out;
	}
	p = malloc((h.count ? h.count : 1) * sizeof(*p));
	if (!p || fread(p, sizeof(*p), h.count, f) != h.count) {
		snprintf(why, whylen, "%s is truncated", path);
		goto out;
	}
	for (uint64_t i = 0; i < h.count; i++)
		if (p[i] >= max) {
			snprintf(why, whylen, "%s names page %llu of a %llu-page memory (damaged)",
			         path, (unsigned long long)p[i], (unsigned long long)max);
			goto out;
		}
	packed = memcmp(h.magic, WS_MAGIC_PACKED, 8) == 0;
	if (packed && contents) {
		data = malloc(h.count ? h.count * 4096 : 1);
		if (!data || fread(data, 4096, h.count, f) != h.count) {
			snprintf(why, whylen, "%s is truncated (its pages' bytes)", path);
			free(data);
			goto out;
		}
		*contents = data;
	}
	*pages = p;
	*n = h.count;
	p = NULL;
	r = 0;
out:
	if (f)
		fclose(f);
	else if (fd >= 0)
		close(fd);
	free(p);
	return r;
}
