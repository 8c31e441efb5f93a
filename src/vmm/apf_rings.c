#include "apf_rings.h"

#include <string.h>

void apf_rings_init(struct apf_rings_page *p)
{
	memset(p, 0, sizeof(*p));
	p->version = APF_RINGS_VERSION;
	p->ring_size = APF_RING_ENTRIES;
	p->entry_size = sizeof(struct apf_ring_entry);
}

uint32_t apf_ring_count(struct apf_ring *r)
{
	return atomic_load_explicit(&r->tail, memory_order_acquire) -
	       atomic_load_explicit(&r->head, memory_order_acquire);
}

bool apf_ring_empty(struct apf_ring *r)
{
	return apf_ring_count(r) == 0;
}

bool apf_ring_push(struct apf_ring *r, const struct apf_ring_entry *e)
{
	uint32_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);

	if (tail - atomic_load_explicit(&r->head, memory_order_acquire) >= APF_RING_ENTRIES)
		return false;
	r->e[tail % APF_RING_ENTRIES] = *e;
	/* The entry is written before the consumer can see the new tail. */
	atomic_store_explicit(&r->tail, tail + 1, memory_order_release);
	return true;
}

bool apf_ring_pop(struct apf_ring *r, struct apf_ring_entry *e)
{
	uint32_t head = atomic_load_explicit(&r->head, memory_order_relaxed);

	if (head == atomic_load_explicit(&r->tail, memory_order_acquire))
		return false;
	*e = r->e[head % APF_RING_ENTRIES];
	atomic_store_explicit(&r->head, head + 1, memory_order_release);
	return true;
}

bool apf_rings_need_wakeup(struct apf_rings_page *p)
{
	/* Full barrier: the push above must be visible before we read the flag,
	 * pairing with the consumer's arm-then-recheck (otherwise both could miss
	 * each other and the consumer sleep on a non-empty ring). */
	atomic_thread_fence(memory_order_seq_cst);
	if (!(atomic_load_explicit(&p->flags, memory_order_relaxed) & APF_RINGS_NOTIFY_ARMED))
		return false;
	return atomic_fetch_and(&p->flags, ~APF_RINGS_NOTIFY_ARMED) & APF_RINGS_NOTIFY_ARMED;
}
