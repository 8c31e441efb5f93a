/* Which process is the VM? The one whose memory the userfaultfd serves, which
 * need not be the one that connected: a process can connect and fork, or pass
 * the userfaultfd on, and SO_PEERCRED names only the connector. Killing the
 * connector on such a hand-off kills a bystander and leaves the VM hanging.
 *
 * The proof, done once per hand-off before serving:
 *   1. the pidfd must come from SO_PEERPIDFD (the connector itself, with no
 *      pid-reuse race); a pidfd_open(pid) fallback proves nothing;
 *   2. /proc/PID/mem is opened, then the pidfd is checked to be still alive:
 *      a live pidfd means PID named its process the whole time, so the opened
 *      address space is the pidfd's process's;
 *   3. the handler installs a page of the memory file that is not all zeros
 *      with UFFDIO_COPY (success means the handler put it there just now, into
 *      the userfaultfd's address space), and reads the same address through
 *      that /proc/PID/mem. Equal bytes: the process holds the pages the
 *      handler installs, so it is the VM. A process that connected for another
 *      one holds nothing there (or zeros, or a missing page it cannot fault
 *      in here), since its pages were never given the installed one.
 * The installed page is the snapshot's own content, so the guest sees exactly
 * what it would have seen.
 *
 * Why /proc/PID/mem and not process_vm_readv: /proc/PID/mem reads do not wait
 * for a userfaultfd (the kernel reads without FAULT_FLAG_ALLOW_RETRY and a
 * missing registered page gives EIO at once, measured here), while
 * process_vm_readv would sleep in the fault until someone serves it: the event
 * loop must never sleep on a peer.
 *
 * Anything else (no SO_PEERPIDFD, no permission to read the process, no
 * /proc at all as in a jail, every candidate page zero or already present)
 * leaves the VM unproven: it is then never killed, and its end is seen from
 * its memory, not its pid (fc_uffd_mm_alive, which needs no /proc). Serving
 * never depends on the proof. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fc_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/fc_handshake.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"

/* Candidate pages: the first few of the first few regions; a guest's first
 * pages are rarely all zero, and the proof must stay cheap. */
#define PROOF_REGIONS 4
#define PROOF_PAGES   8

static bool all_zero(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

/* Tries one page: 1 proven, 0 disproven, 2 try another page, -1 give up. */
static int prove_with_page(const struct fc_owner_query *q, int mem, uint64_t addr, uint64_t off,
                           uint64_t ps, unsigned char *buf, char *why, size_t whylen)
{
	int r = source_read(q->src, buf, off, ps);
	ssize_t n;

	if (r < 0) {
		snprintf(why, whylen, "reading memory file offset 0x%" PRIx64 ": %s", off,
		         strerror(-r));
		return -1;
	}
	if (all_zero(buf, ps))
		return 2; /* an untouched page of any process reads the same */
	r = uffd_copy(q->uffd, addr, buf, ps);
	if (r == -EEXIST || r == -EAGAIN)
		return 2; /* not installed by us just now: proves nothing */
	if (r < 0) {
		snprintf(why, whylen, "installing the page at 0x%" PRIx64 " failed: %s", addr,
		         r == -ESRCH ? "the VM's memory is already gone" : strerror(-r));
		return -1;
	}
	(*q->installed)++;
	n = pread(mem, buf + ps, ps, (off_t)addr);
	if (n == (ssize_t)ps && memcmp(buf, buf + ps, ps) == 0) {
		snprintf(why, whylen, "process %d holds the page installed at 0x%" PRIx64,
		         (int)q->pid, addr);
		return 1;
	}
	snprintf(why, whylen,
	         "process %d, which connected, does not hold the page installed at 0x%" PRIx64
	         " (%s): the userfaultfd serves another process",
	         (int)q->pid, addr, n < 0 ? strerror(errno) : "different bytes");
	return 0;
}

int fc_owner_prove(const struct fc_owner_query *q, char *why, size_t whylen)
{
	uint64_t max_ps = 4096;
	unsigned char *buf;
	char path[64];
	int mem, r;

	*q->installed = 0;
	if (!q->race_free || q->pidfd < 0) {
		snprintf(why, whylen,
		         "the connecting process was found by its pid (no SO_PEERPIDFD on this "
		         "kernel), which another process may have taken over");
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/%d/mem", (int)q->pid);
	mem = open(path, O_RDONLY | O_CLOEXEC);
	if (mem < 0 && access("/proc/self", F_OK) < 0) {
		/* A jail: its chroot has no /proc. The proof needs one (see above:
		 * no other read of the peer's memory stays off its faults), so
		 * the VM stays unproven and is never killed. */
		snprintf(why, whylen,
		         "there is no /proc here (a jail?) to read the VM's memory through");
		return 0;
	}
	if (mem < 0 && (errno == ENOENT || errno == ESRCH)) {
		snprintf(why, whylen, "process %d, which connected, has exited", (int)q->pid);
		return 0;
	}
	if (mem < 0) {
		snprintf(why, whylen, "cannot read the memory of process %d (%s: %s)", (int)q->pid,
		         path, strerror(errno));
		return 0;
	}
	if (syscall(SYS_pidfd_send_signal, q->pidfd, 0, NULL, 0) < 0) {
		snprintf(why, whylen, "process %d, which connected, has exited", (int)q->pid);
		close(mem);
		return 0;
	}
	for (size_t i = 0; i < q->hs->nregions; i++)
		if (q->hs->regions[i].page_size > max_ps)
			max_ps = q->hs->regions[i].page_size;
	buf = mmap(NULL, 2 * max_ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		snprintf(why, whylen, "out of memory for the proof");
		close(mem);
		return 0;
	}
	snprintf(why, whylen,
	         "no page among the first %u of each region is both non-zero and missing",
	         PROOF_PAGES);
	for (size_t i = 0; i < q->hs->nregions && i < PROOF_REGIONS; i++) {
		const struct fc_region *g = &q->hs->regions[i];

		for (uint64_t j = 0; j < PROOF_PAGES && j * g->page_size < g->size; j++) {
			r = prove_with_page(q, mem, g->base_host_virt_addr + j * g->page_size,
			                    g->offset + j * g->page_size, g->page_size, buf, why,
			                    whylen);
			if (r != 2)
				goto done;
		}
	}
	r = 0;
done:
	munmap(buf, 2 * max_ps);
	close(mem);
	return r == 1;
}

int fc_uffd_mm_alive(int uffd, uint64_t addr, const void *unreadable)
{
	/* A UFFDIO_COPY whose source the kernel cannot read never installs
	 * anything, but the kernel looks for the address space first: ESRCH
	 * when it is gone; EFAULT, ENOENT, EEXIST, EINVAL or EAGAIN (events
	 * pending) while it lives. */
	struct uffdio_copy c = {
	    .dst = addr & ~4095ull, .src = (uint64_t)(uintptr_t)unreadable, .len = 4096};

	if (ioctl(uffd, UFFDIO_COPY, &c) == 0)
		return 1;
	return errno != ESRCH;
}
