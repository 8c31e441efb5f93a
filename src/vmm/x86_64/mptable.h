/* The Intel MultiProcessor Specification 1.4 table: how a Linux guest without
 * ACPI learns its processors, its IOAPIC and how ISA interrupts reach it, so
 * that it starts the application processors with INIT/SIPI. */
#ifndef LAZYVM_MPTABLE_H
#define LAZYVM_MPTABLE_H

#include <stddef.h>
#include <stdint.h>

#define MPTABLE_IOAPIC_GPA 0xfec00000u
#define MPTABLE_LAPIC_GPA  0xfee00000u

/* Bytes the table takes for n processors. */
size_t mptable_size(unsigned ncpus);

/* Writes the floating pointer ("_MP_") and right after it the configuration
 * table ("PCMP") into dst, which the guest sees at gpa: one processor entry
 * per vCPU (APIC id = its index, vCPU 0 the BSP), the ISA bus, one IOAPIC
 * (id ncpus) and ISA IRQs 0-15 to its pins 0-15 (KVM's default routing),
 * ExtINT to LINT0 and NMI to LINT1. Both checksums make their bytes sum to 0.
 * Returns the bytes written, or -ENOSPC when room is too small, -EINVAL for
 * 0 or more than 254 processors. */
int mptable_write(void *dst, size_t room, uint32_t gpa, unsigned ncpus);

#endif
