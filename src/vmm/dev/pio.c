/* The port I/O table (pio.h). */
#include "pio.h"

#include <errno.h>
#include <string.h>

void pio_init(struct pio_table *t, bool strict)
{
	memset(t, 0, sizeof(*t));
	t->strict = strict;
}

int pio_add(struct pio_table *t, uint16_t first, uint16_t last, const char *name, pio_fn fn,
            void *ctx)
{
	if (first > last)
		return -EINVAL;
	for (unsigned i = 0; i < t->n; i++)
		if (first <= t->r[i].last && t->r[i].first <= last)
			return -EEXIST;
	if (t->n == PIO_MAX_RANGES)
		return -ENOSPC;
	t->r[t->n++] = (struct pio_range){first, last, name, fn, ctx};
	return 0;
}

const struct pio_range *pio_find(const struct pio_table *t, uint16_t port)
{
	for (unsigned i = 0; i < t->n; i++)
		if (port >= t->r[i].first && port <= t->r[i].last)
			return &t->r[i];
	return NULL;
}

int pio_dispatch(const struct pio_table *t, struct vcpu *v, uint16_t port, bool out, unsigned size,
                 unsigned count, uint8_t *data)
{
	const struct pio_range *r = pio_find(t, port);

	if (!r && t->strict)
		return -ENOENT;
	for (unsigned i = 0; i < count; i++) {
		uint8_t *d = data + (size_t)i * size;
		int rc;

		if (!r || !r->fn) {
			if (!out)
				memset(d, 0xff, size);
			continue;
		}
		if ((rc = r->fn(r->ctx, v, port, out, d, size)) < 0)
			return rc;
	}
	return 0;
}
