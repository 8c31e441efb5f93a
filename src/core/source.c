/* The source interface, the zero source and the latency wrapper. */
#include "lazyvm/source.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lazyvm/units.h"

static int range_ok(const struct source *src, uint64_t off, size_t len)
{
	return off <= src->size && len <= src->size - off;
}

int source_read(struct source *src, void *buf, uint64_t off, size_t len)
{
	if (!range_ok(src, off, len))
		return -ERANGE;
	return src->ops->read(src, buf, off, len);
}

int source_read_batch(struct source *src, struct source_req *reqs, unsigned n)
{
	int first = 0;

	if (n > SOURCE_BATCH_MAX)
		return -EINVAL;
	for (unsigned i = 0; i < n; i++)
		reqs[i].result = range_ok(src, reqs[i].off, reqs[i].len) ? 0 : -ERANGE;
	for (unsigned i = 0; i < n; i++)
		if (reqs[i].result)
			return reqs[i].result;
	if (src->ops->read_batch)
		src->ops->read_batch(src, reqs, n);
	else
		for (unsigned i = 0; i < n; i++)
			reqs[i].result = src->ops->read(src, reqs[i].buf, reqs[i].off, reqs[i].len);
	for (unsigned i = 0; i < n && !first; i++)
		first = reqs[i].result;
	return first;
}

const char *source_strerror(struct source *src, int err, char *buf, size_t len)
{
	if (!src || !src->ops->explain || !src->ops->explain(src, err, buf, len))
		snprintf(buf, len, "%s", strerror(err < 0 ? -err : err));
	return buf;
}

void source_destroy(struct source *src)
{
	if (src)
		src->ops->destroy(src);
}

/* --- zeros --- */

static int zero_read(struct source *src, void *buf, uint64_t off, size_t len)
{
	memset(buf, 0, len);
	return 0;
}

static void zero_destroy(struct source *src)
{
	free(src);
}

static const struct source_ops zero_ops = {
    .kind = "zero",
    .read = zero_read,
    .destroy = zero_destroy,
};

int source_zero_create(uint64_t size, struct source **out)
{
	struct source *src = calloc(1, sizeof(*src));

	if (!src)
		return -ENOMEM;
	src->ops = &zero_ops;
	src->size = size;
	snprintf(src->desc, sizeof(src->desc), "zeros (%llu bytes)", (unsigned long long)size);
	*out = src;
	return 0;
}

/* --- latency wrapper --- */

struct latency_source {
	struct source base;
	struct source *inner;
	uint64_t delay_ns;
};

static int latency_read(struct source *src, void *buf, uint64_t off, size_t len)
{
	struct latency_source *ls = (struct latency_source *)src;

	lv_sleep_ns(ls->delay_ns);
	return ls->inner->ops->read(ls->inner, buf, off, len);
}

static int latency_read_batch(struct source *src, struct source_req *reqs, unsigned n)
{
	struct latency_source *ls = (struct latency_source *)src;

	/* Requests of one batch travel together: one delay for all of them. */
	lv_sleep_ns(ls->delay_ns);
	return source_read_batch(ls->inner, reqs, n);
}

static void latency_destroy(struct source *src)
{
	struct latency_source *ls = (struct latency_source *)src;

	source_destroy(ls->inner);
	free(ls);
}

static int latency_explain(struct source *src, int err, char *buf, size_t len)
{
	source_strerror(((struct latency_source *)src)->inner, err, buf, len);
	return 1;
}

static const struct source_ops latency_ops = {
    .kind = "latency",
    .read = latency_read,
    .read_batch = latency_read_batch,
    .explain = latency_explain,
    .destroy = latency_destroy,
};

int source_latency_wrap(struct source *inner, uint64_t delay_ns, struct source **out)
{
	struct latency_source *ls = calloc(1, sizeof(*ls));

	if (!ls)
		return -ENOMEM;
	ls->base.ops = &latency_ops;
	ls->base.size = inner->size;
	snprintf(ls->base.desc, sizeof(ls->base.desc), "%.200s + %llu us latency", inner->desc,
	         (unsigned long long)(delay_ns / 1000));
	ls->inner = inner;
	ls->delay_ns = delay_ns;
	*out = &ls->base;
	return 0;
}
