/* Between apf.c (tokens, the I/O side, policy), apf_lazyvm.c (lazyvm's
 * injection, the MSR filter) and apf_kvm.c (KVM's uAPI). Private to them. */
#ifndef LAZYVM_APF_INTERNAL_H
#define LAZYVM_APF_INTERNAL_H

#include "apf.h"

uint32_t apf_token_get(struct apf *a);
void apf_token_put(struct apf *a, uint32_t t);
/* Hands {vcpu, gpa, token} to the I/O workers. */
void apf_queue(struct apf *a, unsigned vcpu, uint64_t gpa, uint32_t token);

/* The page of a fault is in (lazyvm): "page ready" when the guest can take it. */
void apf_lazyvm_page_in(struct apf *a, unsigned vcpu, uint64_t gpa, uint32_t token);
/* The page of an ACCEPTed fault is in: KVM_ASYNC_PF READY on its vCPU. */
void apf_kvm_ready(struct apf *a, unsigned vcpu, uint64_t gpa);
/* The page of a fault from KVM's notify ring is in: on the complete ring. */
void apf_kvm_complete(struct apf *a, unsigned vcpu, uint64_t gpa, uint32_t token);

#endif
