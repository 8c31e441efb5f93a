/* The Linux boot protocol from a tiny fake bzImage (linux_boot.c), the MP
 * table (mptable.c), the 16550 and i8042 models and the port table: all that
 * the outer machine can check of a Linux guest without running one. */
#include <sys/mman.h>

#include "../../src/vmm/dev/i8042.h"
#include "../../src/vmm/dev/pio.h"
#include "../../src/vmm/dev/rtc.h"
#include "../../src/vmm/dev/uart.h"
#include "../../src/vmm/x86_64/linux_boot.h"
#include "../../src/vmm/x86_64/mptable.h"
#include "test.h"

static uint32_t rd32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
	return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static void wr32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* A bzImage of protocol 2.15 with 4 setup sectors and `kernel` bytes of
 * protected-mode code (0xcc), preferred at 16 MiB. */
static uint8_t *fake_bzimage(size_t kernel, size_t *len)
{
	size_t off = 5 * 512;
	uint8_t *b = calloc(1, off + kernel);

	CHECK(b);
	b[0x1f1] = 4;
	b[0x1fe] = 0x55;
	b[0x1ff] = 0xaa;
	b[0x201] = 0x6a; /* header ends at 0x26c */
	memcpy(b + 0x202, "HdrS", 4);
	b[0x206] = 0x0f;
	b[0x207] = 0x02;
	b[0x211] = 0x01; /* LOADED_HIGH */
	wr32(b + 0x22c, 0x7fffffff);
	wr32(b + 0x230, 2u << 20);
	b[0x234] = 1;
	b[0x236] = 0x03; /* XLF_KERNEL_64 | CAN_BE_LOADED_ABOVE_4G */
	wr32(b + 0x238, 2047);
	wr32(b + 0x258, 16u << 20);
	wr32(b + 0x260, 4u << 20);
	memset(b + off, 0xcc, kernel);
	*len = off + kernel;
	return b;
}

static void map_mem(struct guest_mem *m, uint64_t size, unsigned nslots)
{
	CHECK_OK(guest_mem_map(m, size, nslots, MEM_ANON, -1));
}

static void test_image_parse(void)
{
	struct linux_image img;
	char why[256];
	size_t len;
	uint8_t *b = fake_bzimage(8192, &len);

	CHECK_OK(linux_image_parse(b, len, &img, why, sizeof(why)));
	CHECK_EQ(img.version, 0x020f);
	CHECK_EQ(img.kernel_off, 5 * 512);
	CHECK_EQ(img.kernel_len, 8192);
	CHECK_EQ(img.pref_address, 16u << 20);
	CHECK_EQ(img.init_size, 4u << 20);
	CHECK_EQ(img.hdr_len, 0x26c - 0x1f1);
	free(b);
}

static void test_bad_images_named(void)
{
	struct linux_image img;
	char why[256];
	size_t len;
	uint8_t *b = fake_bzimage(4096, &len);

	memcpy(b + 0x202, "HdrX", 4);
	CHECK_EQ(linux_image_parse(b, len, &img, why, sizeof(why)), -ENOEXEC);
	CHECK(strstr(why, "no \"HdrS\""));
	memcpy(b + 0x202, "HdrS", 4);
	b[0x206] = 0x0b; /* 2.11 */
	CHECK_EQ(linux_image_parse(b, len, &img, why, sizeof(why)), -ENOEXEC);
	CHECK(strstr(why, "2.11 is older than 2.12"));
	b[0x206] = 0x0f;
	b[0x236] = 0x02; /* no XLF_KERNEL_64 */
	CHECK_EQ(linux_image_parse(b, len, &img, why, sizeof(why)), -ENOEXEC);
	CHECK(strstr(why, "no XLF_KERNEL_64"));
	b[0x236] = 0x03;
	wr32(b + 0x258, (16u << 20) + 4096); /* not 2 MiB aligned */
	CHECK_EQ(linux_image_parse(b, len, &img, why, sizeof(why)), -EINVAL);
	CHECK(strstr(why, "preferred load address 0x1001000"));
	wr32(b + 0x258, 16u << 20);
	CHECK_EQ(linux_image_parse(b, 600, &img, why, sizeof(why)), -ENOEXEC);    /* truncated */
	CHECK_EQ(linux_image_parse(b, 5 * 512, &img, why, sizeof(why)), -EINVAL); /* no kernel */
	CHECK(strstr(why, "past the file"));
	free(b);
}

static void test_e820_from_memslots(void)
{
	struct guest_mem m;
	uint8_t e[20 * 8];

	map_mem(&m, 256ull << 20, 2);
	CHECK_EQ(linux_e820_build(&m, e, 8), 3);
	CHECK_EQ(rd64(e + 0), 0);
	CHECK_EQ(rd64(e + 8), LINUX_EBDA_GPA);
	CHECK_EQ(rd32(e + 16), E820_RAM);
	CHECK_EQ(rd64(e + 20), LINUX_EBDA_GPA);
	CHECK_EQ(rd64(e + 28), (1u << 20) - LINUX_EBDA_GPA);
	CHECK_EQ(rd32(e + 36), E820_RESERVED);
	/* two slots that touch: one RAM entry from 1 MiB to the end */
	CHECK_EQ(rd64(e + 40), 1u << 20);
	CHECK_EQ(rd64(e + 48), (256ull << 20) - (1u << 20));
	CHECK_EQ(rd32(e + 56), E820_RAM);
	CHECK_EQ(linux_e820_build(&m, e, 2), -ENOSPC);
	guest_mem_unmap(&m);
	/* RAM into the hole below 4 GiB is refused (the IOAPIC would be RAM) */
	map_mem(&m, 4ull << 30, 2);
	CHECK_EQ(linux_e820_build(&m, e, 8), -ERANGE);
	guest_mem_unmap(&m);
}

static void test_zero_page(void)
{
	struct guest_mem m;
	char why[256];
	size_t len;
	uint8_t *b = fake_bzimage(8192, &len), initrd[10000];
	const char *cmd = "console=ttyS0 reboot=k";

	memset(initrd, 0x5a, sizeof(initrd));
	map_mem(&m, 64ull << 20, 1);
	CHECK_OK(linux_boot_load(&m, b, len, initrd, sizeof(initrd), cmd, why, sizeof(why)));
	uint8_t *zp = guest_mem_ptr(&m, LINUX_ZERO_PAGE_GPA, 4096);
	CHECK(zp);
	CHECK(memcmp(zp + 0x202, "HdrS", 4) == 0);
	CHECK_EQ(zp[0x210], 0xff); /* type_of_loader */
	CHECK_EQ(rd32(zp + 0x228), LINUX_CMDLINE_GPA);
	CHECK(strcmp(guest_mem_ptr(&m, LINUX_CMDLINE_GPA, 64), cmd) == 0);
	/* the initrd as high as it goes, page aligned, its bytes there */
	uint32_t ia = rd32(zp + 0x218);
	CHECK_EQ(rd32(zp + 0x21c), sizeof(initrd));
	CHECK_EQ(ia % 4096, 0);
	CHECK(ia + sizeof(initrd) <= 64u << 20 && ia + sizeof(initrd) + 4096 > 64u << 20);
	CHECK(memcmp(guest_mem_ptr(&m, ia, sizeof(initrd)), initrd, sizeof(initrd)) == 0);
	/* the kernel at pref_address */
	CHECK_EQ(*(uint8_t *)guest_mem_ptr(&m, 16u << 20, 1), 0xcc);
	CHECK_EQ(zp[0x1e8], 3); /* e820 entries */
	CHECK_EQ(rd64(zp + 0x2d0 + 40 + 8), (64ull << 20) - (1u << 20));
	/* the identity map of the 64-bit entry */
	uint64_t *pd = guest_mem_ptr(&m, LINUX_PD_GPA, 4096);
	CHECK_EQ(pd[8], (8ull << 21) | 0x83);

	/* too little RAM for the kernel's init_size, too long a command line */
	wr32(b + 0x260, 60u << 20);
	CHECK_EQ(linux_boot_load(&m, b, len, NULL, 0, cmd, why, sizeof(why)), -ENOSPC);
	CHECK(strstr(why, "give more --mem"));
	wr32(b + 0x260, 4u << 20);
	char longcmd[3000];
	memset(longcmd, 'a', sizeof(longcmd) - 1);
	longcmd[sizeof(longcmd) - 1] = '\0';
	CHECK_EQ(linux_boot_load(&m, b, len, NULL, 0, longcmd, why, sizeof(why)), -E2BIG);
	CHECK(strstr(why, "this kernel takes 2047"));
	guest_mem_unmap(&m);
	free(b);
}

static uint8_t sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;

	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

static void test_mptable(void)
{
	uint8_t buf[1024];
	int len = mptable_write(buf, sizeof(buf), 0x9fc00, 2);

	CHECK(len > 0 && (size_t)len == mptable_size(2));
	CHECK(memcmp(buf, "_MP_", 4) == 0);
	CHECK_EQ(rd32(buf + 4), 0x9fc10);
	CHECK_EQ(sum(buf, 16), 0);
	uint8_t *ct = buf + 16;
	CHECK(memcmp(ct, "PCMP", 4) == 0);
	unsigned ctlen = ct[4] | ct[5] << 8;
	CHECK_EQ(ctlen, len - 16);
	CHECK_EQ(sum(ct, ctlen), 0);
	CHECK_EQ(ct[34] | ct[35] << 8, 2 + 2 + 16 + 2); /* entries */
	CHECK_EQ(rd32(ct + 36), MPTABLE_LAPIC_GPA);
	/* processors: APIC ids 0 and 1, enabled, vCPU 0 the BSP */
	CHECK_EQ(ct[44], 0);
	CHECK_EQ(ct[45], 0);
	CHECK_EQ(ct[47], 3);
	CHECK_EQ(ct[64 + 1], 1);
	CHECK_EQ(ct[64 + 3], 1);
	/* after them the bus, then the IOAPIC (id 2 at 0xfec00000) */
	CHECK_EQ(ct[84], 1);
	CHECK(memcmp(ct + 86, "ISA   ", 6) == 0);
	CHECK_EQ(ct[92], 2);
	CHECK_EQ(ct[93], 2);
	CHECK_EQ(rd32(ct + 96), MPTABLE_IOAPIC_GPA);
	/* ISA IRQ 4 (the UART) to pin 4 */
	uint8_t *irq4 = ct + 100 + 4 * 8;
	CHECK_EQ(irq4[0], 3);
	CHECK_EQ(irq4[5], 4);
	CHECK_EQ(irq4[7], 4);
	/* a corrupted byte breaks the checksum, as Linux would see */
	ct[50] ^= 1;
	CHECK(sum(ct, ctlen) != 0);
	CHECK_EQ(mptable_write(buf, 100, 0x9fc00, 2), -ENOSPC);
	CHECK_EQ(mptable_write(buf, sizeof(buf), 0x9fc00, 0), -EINVAL);
}

struct uart_probe {
	char out[64];
	size_t n;
	int level, rises;
};

static void probe_tx(void *ctx, uint8_t c)
{
	struct uart_probe *p = ctx;

	if (p->n < sizeof(p->out))
		p->out[p->n++] = (char)c;
}

static void probe_irq(void *ctx, bool level)
{
	struct uart_probe *p = ctx;

	CHECK(p->level != level); /* the model reports changes only */
	p->level = level;
	p->rises += level;
}

static void test_uart_probe_sequence(void)
{
	struct uart_probe p = {0};
	struct uart u;

	uart_init(&u, probe_tx, probe_irq, &p);
	/* the 8250 driver's autoconfig: scratch register, IER, loopback MSR */
	uart_write(&u, 7, 0xa5);
	CHECK_EQ(uart_read(&u, 7), 0xa5);
	uart_write(&u, 1, 0x0f);
	CHECK_EQ(uart_read(&u, 1), 0x0f);
	uart_write(&u, 1, 0);
	uart_write(&u, 4, 0x1a); /* loop, OUT2, RTS */
	CHECK_EQ(uart_read(&u, 6) & 0xf0, 0x90);
	/* loopback: a byte written comes back, nothing goes out, no IRQ */
	uart_write(&u, 0, 'x');
	CHECK_EQ(uart_read(&u, 5) & 0x01, 1);
	CHECK_EQ(uart_read(&u, 0), 'x');
	CHECK_EQ(uart_read(&u, 5) & 0x61, 0x60);
	CHECK_EQ(p.n, 0);
	uart_write(&u, 4, 0x0b); /* DTR, RTS, OUT2 */
	CHECK_EQ(uart_read(&u, 6), 0xb0);
	/* FIFO: IIR's top bits say 16550A */
	uart_write(&u, 2, 0x07);
	CHECK_EQ(uart_read(&u, 2), 0xc1);
	/* DLAB: the divisor latch, not the data and IER */
	uart_write(&u, 3, 0x83);
	uart_write(&u, 0, 0x01);
	uart_write(&u, 1, 0x00);
	CHECK_EQ(uart_read(&u, 0), 0x01);
	uart_write(&u, 3, 0x03);
	CHECK_EQ(p.n, 0);
	CHECK_EQ(p.rises, 0);
}

static void test_uart_thre_interrupts(void)
{
	struct uart_probe p = {0};
	struct uart u;

	uart_init(&u, probe_tx, probe_irq, &p);
	uart_write(&u, 4, 0x08); /* OUT2: the IRQ reaches the PIC */
	/* enabling THRI with THR empty raises it; reading IIR clears it */
	uart_write(&u, 1, 0x02);
	CHECK_EQ(p.level, 1);
	CHECK_EQ(uart_read(&u, 2) & 0x0f, 0x02);
	CHECK_EQ(p.level, 0);
	CHECK_EQ(uart_read(&u, 2) & 0x0f, 0x01);
	/* re-enabling re-asserts (else the driver marks UART_BUG_THRE) */
	uart_write(&u, 1, 0);
	uart_write(&u, 1, 0x02);
	CHECK_EQ(p.level, 1);
	/* every byte sent is a new edge, even with the line already high */
	int before = p.rises;
	uart_write(&u, 0, 'o');
	uart_write(&u, 0, 'k');
	CHECK_EQ(p.rises, before + 2);
	CHECK_EQ(p.n, 2);
	CHECK(memcmp(p.out, "ok", 2) == 0);
	/* without OUT2 the line stays low */
	uart_write(&u, 4, 0);
	CHECK_EQ(p.level, 0);
	/* the saved state puts the line back */
	struct uart_state s = u.s;
	struct uart_probe q = {0};
	struct uart v;
	uart_init(&v, probe_tx, probe_irq, &q);
	s.mcr = 0x08;
	s.irq = 1;
	CHECK_OK(uart_load(&v, &s));
	CHECK_EQ(q.level, 1);
	s.version = 99;
	CHECK_EQ(uart_load(&v, &s), -EINVAL);
}

static void test_i8042(void)
{
	struct i8042_state k;

	i8042_init(&k);
	CHECK_EQ(i8042_read(&k, 0x64) & 0x03, 0); /* nothing to read, input empty */
	CHECK(!i8042_write(&k, 0x64, 0x20));      /* read CTR */
	CHECK_EQ(i8042_read(&k, 0x64) & 0x01, 1);
	CHECK_EQ(i8042_read(&k, 0x60), 0x30);
	CHECK(!i8042_write(&k, 0x64, 0x60)); /* write CTR */
	CHECK(!i8042_write(&k, 0x60, 0x45));
	CHECK(!i8042_write(&k, 0x64, 0x20));
	CHECK_EQ(i8042_read(&k, 0x60), 0x45);
	CHECK(!i8042_write(&k, 0x64, 0xaa));
	CHECK_EQ(i8042_read(&k, 0x60), 0x55);
	CHECK(i8042_write(&k, 0x64, 0xfe)); /* pulse reset: reboot=k */
}

static void test_rtc(void)
{
	struct rtc_state r;
	time_t t = 1796223575; /* 2026-12-02 14:59:35 UTC, a Wednesday */

	rtc_init(&r);
	rtc_write(&r, 0x70, 0x8a);                 /* register A, NMI masked */
	CHECK_EQ(rtc_read(&r, 0x71, t) & 0x80, 0); /* never "update in progress" */
	rtc_write(&r, 0x70, 0x0b);
	CHECK_EQ(rtc_read(&r, 0x71, t) & 0x06, 0x02); /* 24-hour, BCD */
	rtc_write(&r, 0x70, 0x0d);
	CHECK_EQ(rtc_read(&r, 0x71, t), 0x80); /* valid time */
	const uint8_t want[][2] = {{0x00, 0x35}, {0x02, 0x59}, {0x04, 0x14}, {0x06, 0x04},
	                           {0x07, 0x02}, {0x08, 0x12}, {0x09, 0x26}, {0x32, 0x20}};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		rtc_write(&r, 0x70, want[i][0]);
		CHECK_EQ(rtc_read(&r, 0x71, t), want[i][1]);
	}
	/* NVRAM keeps what is written; D stays read-only */
	rtc_write(&r, 0x70, 0x40);
	rtc_write(&r, 0x71, 0x5a);
	CHECK_EQ(rtc_read(&r, 0x71, t), 0x5a);
	rtc_write(&r, 0x70, 0x0d);
	rtc_write(&r, 0x71, 0);
	CHECK_EQ(rtc_read(&r, 0x71, t), 0x80);
}

static int io_count;
static int io_fn(void *ctx, struct vcpu *v, uint16_t port, bool out, uint8_t *data, unsigned size)
{
	(void)ctx, (void)v, (void)port, (void)size;
	io_count++;
	if (!out)
		data[0] = 0x42;
	return 0;
}

static void test_port_table(void)
{
	struct pio_table t;
	uint8_t d[8];

	pio_init(&t, false);
	CHECK_OK(pio_add(&t, 0x3f8, 0x3ff, "uart", io_fn, NULL));
	CHECK_EQ(pio_add(&t, 0x3fc, 0x400, "overlap", io_fn, NULL), -EEXIST);
	CHECK_EQ(pio_add(&t, 0x10, 0x0f, "backwards", io_fn, NULL), -EINVAL);
	CHECK_OK(pio_add(&t, 0xcf8, 0xcff, "pci", NULL, NULL));
	CHECK(pio_find(&t, 0x3fd) && strcmp(pio_find(&t, 0x3fd)->name, "uart") == 0);
	CHECK(!pio_find(&t, 0x3f7));
	/* string I/O: one call a byte */
	CHECK_OK(pio_dispatch(&t, NULL, 0x3f8, false, 1, 3, d));
	CHECK_EQ(io_count, 3);
	CHECK_EQ(d[2], 0x42);
	/* absent and unclaimed: all ones, writes ignored */
	CHECK_OK(pio_dispatch(&t, NULL, 0xcfc, false, 4, 1, d));
	CHECK_EQ(rd32(d), 0xffffffff);
	memset(d, 0, sizeof(d));
	CHECK_OK(pio_dispatch(&t, NULL, 0x2f9, false, 2, 1, d));
	CHECK_EQ(d[0] & d[1], 0xff);
	t.strict = true;
	CHECK_EQ(pio_dispatch(&t, NULL, 0x2f9, false, 1, 1, d), -ENOENT);
}

TEST_MAIN(TEST(test_image_parse), TEST(test_bad_images_named), TEST(test_e820_from_memslots),
          TEST(test_zero_page), TEST(test_mptable), TEST(test_uart_probe_sequence),
          TEST(test_uart_thre_interrupts), TEST(test_i8042), TEST(test_rtc), TEST(test_port_table))
