// SPDX-License-Identifier: GPL-2.0-only
/*
 * apf_test's exitful cases (KVM_CAP_ASYNC_PF_USERFAULT, KVM_ASYNC_PF): a
 * userfault exit with KVM_MEMORY_EXIT_FLAG_APF, ACCEPT and READY, the
 * 64-outstanding limit, the guest turning async PF off, and a VM destroyed
 * with async PFs outstanding.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#include "apf_test.h"

void case_exitful(void)
{
	struct vm vm;
	struct runner rn;
	uint64_t token;
	double t0, t1;

	CASE("cap off: a plain userfault exit, no APF flag; the guest runs once the page is in");
	vm_create(&vm);
	guest_apf_on(&vm);
	command(&vm, CMD_TOUCH, page(0), 1);
	run_userfault(&vm, page(0), KVM_MEMORY_EXIT_FLAG_USERFAULT, "cap off");
	fill_page(&vm, 0);
	run_port(&vm, PORT_DONE, "page 0 in");
	expect_guest(&vm, 1, 1, 0, 0, "cap off");
	TEST_ASSERT(vm.mb->wakeall == 1, "guest took %llu wake-all ready, want 1 (from enabling)",
	            (unsigned long long)vm.mb->wakeall);
	TEST_ASSERT(apf_req(&vm, page(0), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "ACCEPT after a plain exit");
	OK();

	CASE("KVM_ENABLE_CAP(246) arguments");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 2, 0) == -EINVAL, "args[0] = 2");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 1, 1) == -EINVAL, "args[1] = 1");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 1, 0) == 0, "on");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 0, 0) == 0, "off");
	TEST_ASSERT(enable_cap(&vm, KVM_CAP_ASYNC_PF_USERFAULT, 1, 0) == 0, "on again");
	OK();

	CASE("cap on: USERFAULT|APF; resolve and re-enter injects nothing");
	command(&vm, CMD_TOUCH, page(1), 1);
	run_userfault(&vm, page(1), KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
	              "cap on");
	fill_page(&vm, 1);
	run_port(&vm, PORT_DONE, "page 1 in");
	expect_guest(&vm, 1, 2, 0, 0, "resolved and re-entered");
	TEST_ASSERT(apf_req(&vm, page(1), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "ACCEPT after re-entry");
	OK();

	CASE("bad requests: EINVAL / ENOENT, and nothing changes");
	command(&vm, CMD_TOUCH, page(2), 1);
	run_userfault(&vm, page(2), KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
	              "page 2");
	TEST_ASSERT(apf_req(&vm, page(3), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "ACCEPT for a gpa that did not fault");
	TEST_ASSERT(apf_req(&vm, page(2) + 8, KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
	            "gpa not page aligned");
	TEST_ASSERT(apf_req(&vm, page(2), 0, 0, 0, 0) == -EINVAL, "op 0");
	TEST_ASSERT(apf_req(&vm, page(2), 3, 0, 0, 0) == -EINVAL, "op 3");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 1, 0, 0) == -EINVAL, "flags 1");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 1, 0) == -EINVAL, "reserved[0]");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 0, 1) == -EINVAL, "reserved[1]");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT,
	            "READY before ACCEPT");
	TEST_ASSERT(apf_req(&vm, page(7), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT,
	            "READY for an unknown gpa");
	OK();

	CASE("ACCEPT: the guest takes 'not present' and runs on; READY from another thread "
	     "during KVM_RUN returns at once; the guest takes 'page ready' with the same token");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0, "ACCEPT");
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL, "ACCEPT twice");
	run_port(&vm, PORT_NP, "after ACCEPT");
	token = vm.mb->last_np;
	TEST_ASSERT(vm.mb->np == 1 && token != 0 && token <= 0xffffffffu,
	            "guest took np %llu, token 0x%llx", (unsigned long long)vm.mb->np,
	            (unsigned long long)token);
	runner_start(&rn, &vm);
	sleep_ms(200); /* the guest halts in its #PF handler: KVM_RUN does not return */
	TEST_ASSERT(atomic_load(&rn.in_run) == 1, "KVM_RUN returned (port 0x%x) before READY",
	            rn.port);
	fill_page(&vm, 2);
	t0 = now_ms();
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_READY, 0, 0, 0) == 0, "READY");
	t1 = now_ms();
	TEST_ASSERT(pthread_join(rn.t, NULL) == 0, "pthread_join");
	TEST_ASSERT(rn.port == PORT_DONE, "vCPU thread: port 0x%x", rn.port);
	printf("apf_test: READY took %.3f ms while the vCPU was in KVM_RUN; KVM_RUN returned "
	       "(the guest done) %.3f ms after READY was called\n",
	       t1 - t0, rn.returned_ms - t0);
	TEST_ASSERT(t1 - t0 < 100, "READY took %.1f ms", t1 - t0);
	TEST_ASSERT(vm.mb->ready == 1 && vm.mb->last_ready == token,
	            "guest took ready %llu, token 0x%llx, want 0x%llx",
	            (unsigned long long)vm.mb->ready, (unsigned long long)vm.mb->last_ready,
	            (unsigned long long)token);
	TEST_ASSERT(vm.mb->touched == 1 && vm.mb->sum == 3, "guest read %llu pages, sum %llu",
	            (unsigned long long)vm.mb->touched, (unsigned long long)vm.mb->sum);
	TEST_ASSERT(apf_req(&vm, page(2), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT, "READY twice");
	printf("apf_test: token 0x%llx, guest np %llu ready %llu dropped %llu\n",
	       (unsigned long long)token, (unsigned long long)vm.mb->np,
	       (unsigned long long)vm.mb->ready, (unsigned long long)vm.mb->dropped);
	OK();

	CASE("64 outstanding (the guest skips each page): the 65th exit has no APF flag; "
	     "64 READYs, 64 'page ready' with the 64 tokens");
	{
		uint64_t np0 = vm.mb->np, rd0 = vm.mb->ready;
		const unsigned base = 10, n = 64;

		vm.mb->pf_mode = PF_MODE_SKIP;
		command(&vm, CMD_TOUCH, page(base), n + 1);
		for (unsigned i = 0; i < n; i++) {
			run_userfault(&vm, page(base + i),
			              KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
			              "outstanding");
			TEST_ASSERT(apf_req(&vm, page(base + i), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0,
			            "ACCEPT %u", i);
		}
		run_userfault(&vm, page(base + n), KVM_MEMORY_EXIT_FLAG_USERFAULT, "65th");
		TEST_ASSERT(apf_req(&vm, page(base + n), KVM_APF_OP_ACCEPT, 0, 0, 0) == -EINVAL,
		            "ACCEPT of the plain 65th exit");
		fill_page(&vm, base + n);
		run_port(&vm, PORT_DONE, "65 touched");
		TEST_ASSERT(vm.mb->np - np0 == n && vm.mb->touched == 1,
		            "guest took np %llu, read %llu pages",
		            (unsigned long long)(vm.mb->np - np0),
		            (unsigned long long)vm.mb->touched);
		for (unsigned i = 0; i < n; i++) {
			fill_page(&vm, base + i);
			TEST_ASSERT(apf_req(&vm, page(base + i), KVM_APF_OP_READY, 0, 0, 0) == 0,
			            "READY %u", i);
		}
		command(&vm, CMD_WAIT, rd0 + n, 0);
		run_port(&vm, PORT_DONE, "wait for 64 ready");
		for (unsigned i = 0; i < n; i++) {
			uint64_t t = vm.mb->np_tokens[(np0 + i) % 64];
			unsigned found = 0;

			for (unsigned j = 0; j < n; j++)
				found += vm.mb->ready_tokens[(rd0 + j) % 64] == t;
			TEST_ASSERT(found == 1, "token 0x%llx readied %u times",
			            (unsigned long long)t, found);
		}
		vm.mb->pf_mode = PF_MODE_WAIT;
	}
	OK();

	CASE("the guest disables async PF with one outstanding: dropped, READY gives ENOENT");
	vm.mb->pf_mode = PF_MODE_SKIP;
	command(&vm, CMD_TOUCH, page(80), 1);
	run_userfault(&vm, page(80), KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
	              "page 80");
	TEST_ASSERT(apf_req(&vm, page(80), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0, "ACCEPT");
	run_port(&vm, PORT_DONE, "skipped page 80");
	command(&vm, CMD_APF_MSRS, APF_VECTOR, 0);
	run_port(&vm, PORT_DONE, "async PF off");
	TEST_ASSERT(apf_req(&vm, page(80), KVM_APF_OP_READY, 0, 0, 0) == -ENOENT,
	            "READY after the guest disabled async PF");
	command(&vm, CMD_TOUCH, page(81), 1);
	run_userfault(&vm, page(81), KVM_MEMORY_EXIT_FLAG_USERFAULT,
	              "async PF off in the guest: no APF flag");
	fill_page(&vm, 81);
	run_port(&vm, PORT_DONE, "page 81 in");
	OK();

	CASE("VM destroyed with accepted async PFs outstanding");
	command(&vm, CMD_APF_MSRS, APF_VECTOR, GUEST_APF | APF_EN_BITS);
	run_port(&vm, PORT_DONE, "async PF on again");
	command(&vm, CMD_TOUCH, page(90), 4);
	for (unsigned i = 0; i < 4; i++) {
		run_userfault(&vm, page(90 + i),
		              KVM_MEMORY_EXIT_FLAG_USERFAULT | KVM_MEMORY_EXIT_FLAG_APF,
		              "outstanding at destroy");
		TEST_ASSERT(apf_req(&vm, page(90 + i), KVM_APF_OP_ACCEPT, 0, 0, 0) == 0, "ACCEPT");
	}
	run_port(&vm, PORT_DONE, "4 skipped");
	/* two of them ready but never delivered, two still waiting */
	fill_page(&vm, 90);
	fill_page(&vm, 91);
	TEST_ASSERT(apf_req(&vm, page(90), KVM_APF_OP_READY, 0, 0, 0) == 0, "READY");
	TEST_ASSERT(apf_req(&vm, page(91), KVM_APF_OP_READY, 0, 0, 0) == 0, "READY");
	vm_destroy(&vm);
	OK();
}
