/* A source wrapper that verifies every page against the snapshot's checksums. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"

struct checked_source {
	struct source base;
	struct source *inner;
	const uint32_t *crcs; /* borrowed */
	uint64_t npages;
	uint32_t page_size;
};

static int verify(struct checked_source *cs, const void *buf, uint64_t off, size_t len)
{
	if (off % cs->page_size || len % cs->page_size)
		return -EINVAL;
	for (size_t done = 0; done < len; done += cs->page_size) {
		uint64_t page = (off + done) / cs->page_size;
		uint32_t got = crc32c(0, (const char *)buf + done, cs->page_size);

		if (page >= cs->npages || got != cs->crcs[page]) {
			lv_err("%s: page %llu (offset 0x%llx) fails its checksum: crc32c 0x%08x, "
			       "snapshot says 0x%08x",
			       cs->base.desc, (unsigned long long)page,
			       (unsigned long long)(off + done), got,
			       page < cs->npages ? cs->crcs[page] : 0);
			return -EBADMSG;
		}
	}
	return 0;
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

static void checked_destroy(struct source *src)
{
	struct checked_source *cs = (struct checked_source *)src;

	source_destroy(cs->inner);
	free(cs);
}

static const struct source_ops checked_ops = {
    .kind = "checked",
    .read = checked_read,
    .read_batch = checked_read_batch,
    .destroy = checked_destroy,
};

int source_checked_wrap(struct source *inner, const uint32_t *crcs, uint64_t npages,
                        uint32_t page_size, struct source **out)
{
	struct checked_source *cs;

	if (!page_size || npages * page_size != inner->size)
		return -EINVAL;
	cs = calloc(1, sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	cs->crcs = crcs;
	cs->base.ops = &checked_ops;
	cs->base.size = inner->size;
	snprintf(cs->base.desc, sizeof(cs->base.desc), "%.220s, checksummed", inner->desc);
	cs->inner = inner;
	cs->npages = npages;
	cs->page_size = page_size;
	*out = &cs->base;
	return 0;
}
