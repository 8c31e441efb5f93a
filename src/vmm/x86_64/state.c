/* Saving and loading one vCPU's architectural state as snapshot sections.
 *
 * The load order is what KVM needs (docs/SNAPSHOT.md, "Load order"):
 *   1. CPUID, the snapshot's own entries: KVM checks CR4, XCR0, the xsave
 *      area and which MSRs exist against the guest's CPUID.
 *   2. The TSC frequency, before the TSC itself is written.
 *   3. Special registers: EFER, CR4 and the APIC base (xAPIC or x2APIC
 *      mode decides how the LAPIC's ID register is read).
 *   4. The LAPIC, before the MSRs: KVM drops a write of
 *      MSR_IA32_TSC_DEADLINE unless the LAPIC timer is in TSC-deadline mode
 *      (measured, tests/unit/test_state.c), and a tickless Linux whose
 *      deadline is lost never wakes.
 *   5. The MSRs, but for three held back: MSR_KVM_ASYNC_PF_INT, then
 *      MSR_KVM_ASYNC_PF_EN (enabling async PF makes KVM send a "page ready
 *      all" at the vector already set), then MSR_IA32_TSC_DEADLINE last
 *      (a deadline in the guest's TSC, which must be in place by then).
 *   6. General, FPU, xsave, XCR and debug registers; MP state and pending
 *      events last. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "../snapshot.h"
#include "../vmm.h"

#define MSR_BATCH             64
#define MSR_IA32_TSC_DEADLINE 0x6e0u

/* Held back from the MSR batch and written afterwards, in this order. */
static const uint32_t late_msrs[] = {MSR_KVM_ASYNC_PF_INT, MSR_KVM_ASYNC_PF_EN,
                                     MSR_IA32_TSC_DEADLINE};

static bool is_late_msr(uint32_t index)
{
	for (unsigned i = 0; i < sizeof(late_msrs) / sizeof(late_msrs[0]); i++)
		if (late_msrs[i] == index)
			return true;
	return false;
}

static int save_msrs(struct vcpu *v, struct snap_writer *w)
{
	const struct kvm_sys *sys = v->vm->sys;
	struct snap_msr *out = calloc(sys->nmsrs, sizeof(*out));
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[MSR_BATCH];
	} batch;
	unsigned n = 0;

	if (!out)
		return -ENOMEM;
	/* One MSR at a time for the few KVM lists but cannot read in this
	 * configuration; in batches otherwise (KVM stops a batch at the first
	 * failure and returns how many it did). */
	for (unsigned i = 0; i < sys->nmsrs;) {
		unsigned cnt = sys->nmsrs - i < MSR_BATCH ? sys->nmsrs - i : MSR_BATCH;

		memset(&batch, 0, sizeof(batch));
		batch.hdr.nmsrs = cnt;
		for (unsigned k = 0; k < cnt; k++)
			batch.e[k].index = sys->msr_index[i + k];
		int got = ioctl(v->fd, KVM_GET_MSRS, &batch);
		if (got < 0) {
			free(out);
			return -errno;
		}
		for (int k = 0; k < got; k++)
			out[n++] =
			    (struct snap_msr){.index = batch.e[k].index, .data = batch.e[k].data};
		i += (unsigned)got < cnt ? (unsigned)got + 1 : cnt; /* skip the unreadable one */
	}
	snap_put(w, SNAP_MSRS, v->index, out, n * sizeof(*out));
	free(out);
	return 0;
}

/* The entries this vCPU was given (KVM_SET_CPUID2), as KVM holds them. */
static int save_cpuid(struct vcpu *v, struct snap_writer *w)
{
	const struct kvm_cpuid2 *sup = v->vm->sys->cpuid;
	unsigned cap = sup && sup->nent ? sup->nent : 64;

	for (;;) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + cap * sizeof(c->entries[0]));

		if (!c)
			return -ENOMEM;
		c->nent = cap;
		if (ioctl(v->fd, KVM_GET_CPUID2, c) == 0) {
			snap_put(w, SNAP_CPUID, v->index, c->entries,
			         (uint64_t)c->nent * sizeof(c->entries[0]));
			free(c);
			return 0;
		}
		int e = errno;
		free(c);
		if (e != E2BIG || cap >= 4096)
			return -e;
		cap *= 2;
	}
}

int arch_vcpu_save(struct vcpu *v, struct snap_writer *w)
{
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_fpu fpu;
	struct kvm_xcrs xcrs;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_mp_state mp;
	struct kvm_debugregs dbg;
	int xsize = v->vm->sys->xsave2_size > 4096 ? v->vm->sys->xsave2_size : 4096;
	void *xsave = calloc(1, (size_t)xsize);
	unsigned i = v->index;
	int r = 0;

	if (!xsave)
		return -ENOMEM;
	if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0 || ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0 ||
	    ioctl(v->fd, KVM_GET_FPU, &fpu) < 0 ||
	    ioctl(v->fd, xsize > 4096 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, xsave) < 0 ||
	    ioctl(v->fd, KVM_GET_XCRS, &xcrs) < 0 || ioctl(v->fd, KVM_GET_LAPIC, &lapic) < 0 ||
	    ioctl(v->fd, KVM_GET_VCPU_EVENTS, &events) < 0 ||
	    ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0 || ioctl(v->fd, KVM_GET_DEBUGREGS, &dbg) < 0) {
		r = -errno;
		goto out;
	}
	snap_put(w, SNAP_REGS, i, &regs, sizeof(regs));
	snap_put(w, SNAP_SREGS, i, &sregs, sizeof(sregs));
	snap_put(w, SNAP_FPU, i, &fpu, sizeof(fpu));
	snap_put(w, SNAP_XSAVE, i, xsave, (uint64_t)xsize);
	snap_put(w, SNAP_XCRS, i, &xcrs, sizeof(xcrs));
	snap_put(w, SNAP_LAPIC, i, &lapic, sizeof(lapic));
	snap_put(w, SNAP_EVENTS, i, &events, sizeof(events));
	snap_put(w, SNAP_MP_STATE, i, &mp, sizeof(mp));
	snap_put(w, SNAP_DEBUGREGS, i, &dbg, sizeof(dbg));
	if ((r = save_msrs(v, w)) < 0 || (r = save_cpuid(v, w)) < 0)
		goto out;
	int khz = ioctl(v->fd, KVM_GET_TSC_KHZ, 0);
	if (khz <= 0) {
		r = khz < 0 ? -errno : -EINVAL;
		goto out;
	}
	struct snap_tsc tsc = {.khz = (uint32_t)khz};
	snap_put(w, SNAP_TSC_KHZ, i, &tsc, sizeof(tsc));
out:
	free(xsave);
	return r;
}

/* Finds a section of exactly `len` bytes (or at least, for XSAVE). */
static const void *need(struct snap_reader *r, uint32_t type, unsigned i, uint64_t len, bool exact,
                        char *why, size_t whylen)
{
	uint64_t got;
	const void *p = snap_find(r, type, i, &got);

	if (!p || (exact ? got != len : got < len)) {
		snprintf(why, whylen, "vCPU %u: state section %u %s (%llu bytes, want %llu)", i,
		         type, p ? "has the wrong size" : "is missing",
		         (unsigned long long)(p ? got : 0), (unsigned long long)len);
		return NULL;
	}
	return p;
}

/* KVM_SET_MSRS of n entries in batches; KVM stops a batch at the first MSR
 * it refuses and says how many it took. */
static int set_msrs(struct vcpu *v, const struct snap_msr *m, uint64_t n, char *why, size_t whylen)
{
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[MSR_BATCH];
	} batch;

	for (uint64_t i = 0; i < n;) {
		unsigned cnt = n - i < MSR_BATCH ? (unsigned)(n - i) : MSR_BATCH;

		memset(&batch, 0, sizeof(batch));
		batch.hdr.nmsrs = cnt;
		for (unsigned k = 0; k < cnt; k++) {
			batch.e[k].index = m[i + k].index;
			batch.e[k].data = m[i + k].data;
		}
		int set = ioctl(v->fd, KVM_SET_MSRS, &batch);
		if (set < 0 || (unsigned)set < cnt) {
			unsigned bad = set < 0 ? 0 : (unsigned)set;

			snprintf(why, whylen, "vCPU %u: KVM_SET_MSRS refused MSR 0x%x = 0x%llx",
			         v->index, batch.e[bad].index,
			         (unsigned long long)batch.e[bad].data);
			return -EINVAL;
		}
		i += cnt;
	}
	return 0;
}

/* Every MSR but the late ones, then those in late_msrs' order. */
static int load_msrs(struct vcpu *v, struct snap_reader *r, char *why, size_t whylen)
{
	uint64_t len, n, k = 0;
	const struct snap_msr *m = snap_find(r, SNAP_MSRS, v->index, &len);
	struct snap_msr *early;
	int ret;

	if (!m || len % sizeof(*m)) {
		snprintf(why, whylen, "vCPU %u: MSR section missing or malformed", v->index);
		return -EINVAL;
	}
	n = len / sizeof(*m);
	if (!(early = calloc(n ? n : 1, sizeof(*early))))
		return -ENOMEM;
	for (uint64_t i = 0; i < n; i++)
		if (!is_late_msr(m[i].index))
			early[k++] = m[i];
	ret = set_msrs(v, early, k, why, whylen);
	free(early);
	for (unsigned l = 0; !ret && l < sizeof(late_msrs) / sizeof(late_msrs[0]); l++)
		for (uint64_t i = 0; i < n && !ret; i++)
			if (m[i].index == late_msrs[l])
				ret = set_msrs(v, &m[i], 1, why, whylen);
	return ret;
}

/* KVM_SET_CPUID2 with the snapshot's entries, exactly: a guest that has
 * looked at its CPUID must find the same features after a restore (a
 * recomputed set differs on another host or another KVM). */
static int load_cpuid(struct vcpu *v, struct snap_reader *r, char *why, size_t whylen)
{
	uint64_t len;
	const struct kvm_cpuid_entry2 *e = snap_find(r, SNAP_CPUID, v->index, &len);
	struct kvm_cpuid2 *c;
	int ret = 0;

	if (!e || !len || len % sizeof(*e) || len / sizeof(*e) > 4096) {
		snprintf(why, whylen, "vCPU %u: CPUID section missing or malformed (%llu bytes)",
		         v->index, (unsigned long long)len);
		return -EINVAL;
	}
	if (!(c = calloc(1, sizeof(*c) + len)))
		return -ENOMEM;
	c->nent = (uint32_t)(len / sizeof(*e));
	memcpy(c->entries, e, len);
	if (ioctl(v->fd, KVM_SET_CPUID2, c) < 0) {
		ret = -errno;
		snprintf(why, whylen, "vCPU %u: KVM_SET_CPUID2 with the snapshot's %u entries: %s",
		         v->index, c->nent, strerror(errno));
	}
	free(c);
	return ret;
}

/* The guest's TSC runs at the snapshot's rate: KVM scales it when this
 * host's differs, or the restore is refused (the guest's clocks would run
 * wrong by the ratio). */
static int load_tsc_khz(struct vcpu *v, struct snap_reader *r, char *why, size_t whylen)
{
	uint64_t len;
	const struct snap_tsc *t = snap_find(r, SNAP_TSC_KHZ, v->index, &len);
	int cur;

	if (!t || len != sizeof(*t) || !t->khz) {
		snprintf(why, whylen, "vCPU %u: TSC frequency section missing or malformed",
		         v->index);
		return -EINVAL;
	}
	cur = ioctl(v->fd, KVM_GET_TSC_KHZ, 0);
	if (cur < 0) {
		int e = errno;

		snprintf(why, whylen, "vCPU %u: KVM_GET_TSC_KHZ: %s", v->index, strerror(e));
		return -e;
	}
	if ((uint32_t)cur == t->khz)
		return 0;
	if (ioctl(v->fd, KVM_SET_TSC_KHZ, (unsigned long)t->khz) < 0) {
		int e = errno;

		snprintf(why, whylen,
		         "vCPU %u: the snapshot's TSC runs at %u kHz, this host's at %d kHz, and "
		         "KVM refused to scale it (KVM_SET_TSC_KHZ: %s)",
		         v->index, t->khz, cur, strerror(e));
		return -e;
	}
	return 0;
}

int arch_vcpu_load(struct vcpu *v, struct snap_reader *r, char *why, size_t whylen)
{
	unsigned i = v->index;
	int xsize = v->vm->sys->xsave2_size > 4096 ? v->vm->sys->xsave2_size : 4096;
	const void *regs = need(r, SNAP_REGS, i, sizeof(struct kvm_regs), true, why, whylen);
	const void *sregs = need(r, SNAP_SREGS, i, sizeof(struct kvm_sregs), true, why, whylen);
	const void *fpu = need(r, SNAP_FPU, i, sizeof(struct kvm_fpu), true, why, whylen);
	const void *xsave = need(r, SNAP_XSAVE, i, 4096, false, why, whylen);
	const void *xcrs = need(r, SNAP_XCRS, i, sizeof(struct kvm_xcrs), true, why, whylen);
	const void *lapic =
	    need(r, SNAP_LAPIC, i, sizeof(struct kvm_lapic_state), true, why, whylen);
	const void *events =
	    need(r, SNAP_EVENTS, i, sizeof(struct kvm_vcpu_events), true, why, whylen);
	const void *mp = need(r, SNAP_MP_STATE, i, sizeof(struct kvm_mp_state), true, why, whylen);
	const void *dbg =
	    need(r, SNAP_DEBUGREGS, i, sizeof(struct kvm_debugregs), true, why, whylen);
	uint64_t xlen = 0;
	void *xbuf;
	int ret;

	if (!regs || !sregs || !fpu || !xsave || !xcrs || !lapic || !events || !mp || !dbg)
		return -EINVAL;
	snap_find(r, SNAP_XSAVE, i, &xlen);
	xbuf = calloc(1, (size_t)(xlen > (uint64_t)xsize ? xlen : (uint64_t)xsize));
	if (!xbuf)
		return -ENOMEM;
	memcpy(xbuf, xsave, xlen);
#define SET(ioc, p, name)                                                                          \
	if (ioctl(v->fd, ioc, p) < 0) {                                                            \
		ret = -errno;                                                                      \
		snprintf(why, whylen, "vCPU %u: %s: %s", i, name, strerror(errno));                \
		goto out;                                                                          \
	}
	/* The order is the one at the top of this file. */
	if ((ret = load_cpuid(v, r, why, whylen)) < 0 ||
	    (ret = load_tsc_khz(v, r, why, whylen)) < 0)
		goto out;
	SET(KVM_SET_SREGS, sregs, "KVM_SET_SREGS");
	SET(KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC");
	if ((ret = load_msrs(v, r, why, whylen)) < 0)
		goto out;
	SET(KVM_SET_REGS, regs, "KVM_SET_REGS");
	SET(KVM_SET_FPU, fpu, "KVM_SET_FPU");
	SET(KVM_SET_XSAVE, xbuf, "KVM_SET_XSAVE");
	SET(KVM_SET_XCRS, xcrs, "KVM_SET_XCRS");
	SET(KVM_SET_DEBUGREGS, dbg, "KVM_SET_DEBUGREGS");
	SET(KVM_SET_MP_STATE, mp, "KVM_SET_MP_STATE");
	SET(KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS");
#undef SET
	ret = 0;
out:
	free(xbuf);
	return ret;
}
