/* MP table (MultiProcessor Specification 1.4, chapter 4): a floating pointer
 * structure, a configuration table header and its entries. */
#include "mptable.h"

#include <errno.h>
#include <string.h>

#define FP_LEN      16
#define HDR_LEN     44
#define PROC_LEN    20
#define SMALL_LEN   8 /* bus, IOAPIC, I/O and local interrupt entries */
#define NR_ISA_IRQS 16
#define ENT_PROC    0
#define ENT_BUS     1
#define ENT_IOAPIC  2
#define ENT_IOINT   3
#define ENT_LINT    4
#define INT_INT     0
#define INT_NMI     1
#define INT_EXTINT  3

size_t mptable_size(unsigned ncpus)
{
	return FP_LEN + HDR_LEN + (size_t)ncpus * PROC_LEN +
	       (2 + NR_ISA_IRQS + 2) * (size_t)SMALL_LEN;
}

static uint8_t checksum(const uint8_t *p, size_t len)
{
	uint8_t sum = 0;

	while (len--)
		sum = (uint8_t)(sum + *p++);
	return (uint8_t)-sum;
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

/* An interrupt entry: irq type, flags 0 (conforming to the bus), source bus
 * 0 and IRQ, destination APIC and its pin (I/O) or LINT (local). */
static uint8_t *int_entry(uint8_t *e, uint8_t kind, uint8_t irqtype, uint8_t srcirq, uint8_t dst,
                          uint8_t pin)
{
	e[0] = kind;
	e[1] = irqtype;
	e[5] = srcirq;
	e[6] = dst;
	e[7] = pin;
	return e + SMALL_LEN;
}

int mptable_write(void *dst, size_t room, uint32_t gpa, unsigned ncpus)
{
	size_t len = mptable_size(ncpus);
	uint8_t *fp = dst, *ct = fp + FP_LEN, *e = ct + HDR_LEN;
	uint8_t ioapic_id = (uint8_t)ncpus;

	if (ncpus == 0 || ncpus > 254)
		return -EINVAL;
	if (room < len)
		return -ENOSPC;
	memset(dst, 0, len);

	memcpy(fp, "_MP_", 4);
	put32(fp + 4, gpa + FP_LEN); /* the configuration table */
	fp[8] = 1;                   /* length in 16-byte units */
	fp[9] = 4;                   /* spec revision 1.4 */
	/* feature bytes 0: a configuration table is present, virtual wire mode */
	fp[10] = checksum(fp, FP_LEN);

	for (unsigned i = 0; i < ncpus; i++, e += PROC_LEN) {
		e[0] = ENT_PROC;
		e[1] = (uint8_t)i;                   /* local APIC id */
		e[2] = 0x14;                         /* local APIC version: integrated */
		e[3] = (uint8_t)(1 | (i == 0) << 1); /* enabled; the BSP */
		put32(e + 4, 0x600);                 /* signature: family 6 */
		put32(e + 8, 0x201);                 /* features: FPU, APIC */
	}
	e[0] = ENT_BUS; /* bus 0 */
	memcpy(e + 2, "ISA   ", 6);
	e += SMALL_LEN;
	e[0] = ENT_IOAPIC;
	e[1] = ioapic_id;
	e[2] = 0x11; /* version */
	e[3] = 1;    /* enabled */
	put32(e + 4, MPTABLE_IOAPIC_GPA);
	e += SMALL_LEN;
	for (uint8_t irq = 0; irq < NR_ISA_IRQS; irq++)
		e = int_entry(e, ENT_IOINT, INT_INT, irq, ioapic_id, irq);
	e = int_entry(e, ENT_LINT, INT_EXTINT, 0, 0xff, 0);
	int_entry(e, ENT_LINT, INT_NMI, 0, 0xff, 1);

	memcpy(ct, "PCMP", 4);
	put16(ct + 4, (uint16_t)(len - FP_LEN));
	ct[6] = 4;
	memcpy(ct + 8, "LAZYVM  ", 8);
	memcpy(ct + 16, "LINUX GUEST ", 12);
	put16(ct + 34, (uint16_t)(ncpus + 2 + NR_ISA_IRQS + 2));
	put32(ct + 36, MPTABLE_LAPIC_GPA);
	ct[7] = checksum(ct, len - FP_LEN);
	return (int)len;
}
