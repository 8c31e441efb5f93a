/* Saving and loading one vCPU's architectural state as snapshot sections.
 * Load order follows what KVM needs: special registers and MSRs (APIC base,
 * EFER) before the LAPIC, events and MP state last. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "../snapshot.h"
#include "../vmm.h"

#define MSR_BATCH 64

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
	r = save_msrs(v, w);
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

static int load_msrs(struct vcpu *v, struct snap_reader *r, char *why, size_t whylen)
{
	uint64_t len;
	const struct snap_msr *m = snap_find(r, SNAP_MSRS, v->index, &len);
	struct {
		struct kvm_msrs hdr;
		struct kvm_msr_entry e[MSR_BATCH];
	} batch;

	if (!m || len % sizeof(*m)) {
		snprintf(why, whylen, "vCPU %u: MSR section missing or malformed", v->index);
		return -EINVAL;
	}
	for (uint64_t i = 0, n = len / sizeof(*m); i < n;) {
		unsigned cnt = n - i < MSR_BATCH ? (unsigned)(n - i) : MSR_BATCH;

		memset(&batch, 0, sizeof(batch));
		batch.hdr.nmsrs = cnt;
		for (unsigned k = 0; k < cnt; k++) {
			batch.e[k].index = m[i + k].index;
			batch.e[k].data = m[i + k].data;
		}
		int set = ioctl(v->fd, KVM_SET_MSRS, &batch);
		if (set < 0 || (unsigned)set < cnt) {
			snprintf(
			    why, whylen, "vCPU %u: KVM_SET_MSRS refused MSR 0x%x = 0x%llx",
			    v->index, set < 0 ? batch.e[0].index : batch.e[set].index,
			    (unsigned long long)(set < 0 ? batch.e[0].data : batch.e[set].data));
			return -EINVAL;
		}
		i += cnt;
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
	SET(KVM_SET_SREGS, sregs, "KVM_SET_SREGS");
	if ((ret = load_msrs(v, r, why, whylen)) < 0)
		goto out;
	SET(KVM_SET_REGS, regs, "KVM_SET_REGS");
	SET(KVM_SET_FPU, fpu, "KVM_SET_FPU");
	SET(KVM_SET_XSAVE, xbuf, "KVM_SET_XSAVE");
	SET(KVM_SET_XCRS, xcrs, "KVM_SET_XCRS");
	SET(KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC");
	SET(KVM_SET_DEBUGREGS, dbg, "KVM_SET_DEBUGREGS");
	SET(KVM_SET_MP_STATE, mp, "KVM_SET_MP_STATE");
	SET(KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS");
#undef SET
	ret = 0;
out:
	free(xbuf);
	return ret;
}
