/* Guest RAM: slots of host memory and the one gpa -> host translation. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "vmm.h"

#define SLOT_ALIGN (2ull << 20)

/* Anonymous RAM at a 2 MiB-aligned address, so that a fully installed 2 MiB
 * piece can become one transparent huge page (restore.c collapses them) and
 * KVM can map it with one large page. */
static void *map_aligned(uint64_t len)
{
	uint8_t *p = mmap(NULL, len + SLOT_ALIGN, PROT_READ | PROT_WRITE,
	                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint64_t head;

	if (p == MAP_FAILED)
		return p;
	head = (SLOT_ALIGN - (uintptr_t)p % SLOT_ALIGN) % SLOT_ALIGN;
	if (head)
		munmap(p, head);
	munmap(p + head + len, SLOT_ALIGN - head);
	return p + head;
}

int guest_mem_map(struct guest_mem *m, uint64_t size, unsigned nslots, enum mem_backing b, int fd)
{
	uint64_t per;

	memset(m, 0, sizeof(*m));
	if (nslots < 1 || nslots > VMM_MAX_SLOTS || size < GUEST_MEM_MIN || size > GUEST_MEM_MAX ||
	    size % SLOT_ALIGN)
		return -EINVAL;
	per = size / nslots / SLOT_ALIGN * SLOT_ALIGN;
	if (per == 0)
		return -EINVAL;
	m->size = size;
	m->file_mapped = b == MEM_FILE_PRIVATE;
	for (unsigned i = 0; i < nslots; i++) {
		struct mem_slot *s = &m->slots[i];
		uint64_t len = i == nslots - 1 ? size - per * (nslots - 1) : per;
		void *p;

		s->gpa = per * i;
		s->size = len;
		s->file_off = s->gpa; /* regions concatenated in gpa order */
		if (b == MEM_FILE_PRIVATE)
			p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd,
			         (off_t)s->file_off);
		else
			p = map_aligned(len);
		if (p == MAP_FAILED) {
			int err = errno;
			guest_mem_unmap(m);
			return -err;
		}
		s->host = p;
		m->nslots++;
	}
	return 0;
}

void guest_mem_unmap(struct guest_mem *m)
{
	for (unsigned i = 0; i < m->nslots; i++)
		munmap(m->slots[i].host, m->slots[i].size);
	m->nslots = 0;
}

void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
	for (unsigned i = 0; i < m->nslots; i++) {
		const struct mem_slot *s = &m->slots[i];

		/* Written so that no sum can overflow: gpa - s->gpa only when gpa >= s->gpa. */
		if (gpa >= s->gpa && gpa - s->gpa < s->size && len <= s->size - (gpa - s->gpa))
			return s->host + (gpa - s->gpa);
	}
	return NULL;
}
