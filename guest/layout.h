/* Constants shared by the guest's assembly and C (and, by hand, linker.ld).
 *
 * Only #defines: the .S files include this, and they cannot include
 * lazyvm/guest_abi.h (it holds C structs). main.c checks every value that has
 * a twin in guest_abi.h with a _Static_assert, so the two cannot drift apart.
 */
#ifndef GUEST_LAYOUT_H
#define GUEST_LAYOUT_H

#define LAYOUT_KERNEL_CS 0x08 /* GUEST_CS_SELECTOR */
#define LAYOUT_KERNEL_DS 0x10 /* GUEST_DS_SELECTOR */
#define LAYOUT_MAX_VCPUS 8    /* GUEST_MAX_VCPUS */

/* Each vCPU's boot stack, later its idle task's stack (and the stack its
 * interrupts run on while it idles). */
#define LAYOUT_BOOT_STACK_SHIFT 14
#define LAYOUT_BOOT_STACK_SIZE  (1 << LAYOUT_BOOT_STACK_SHIFT)

#define LAYOUT_NR_VECTORS 256
#define LAYOUT_VEC_YIELD  0x21 /* VEC_YIELD: never raised by the CPU, see isr.S */

#endif
