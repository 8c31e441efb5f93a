#include "lazyvm/crc32c.h"

#include <cpuid.h>
#include <stdbool.h>
#include <string.h>

static uint32_t table[256];
static int have_sse42 = -1;

static void init(void)
{
	unsigned a, b, c, d;

	for (uint32_t i = 0; i < 256; i++) {
		uint32_t x = i;
		for (int k = 0; k < 8; k++)
			x = x & 1 ? (x >> 1) ^ 0x82f63b78u : x >> 1;
		table[i] = x;
	}
	have_sse42 = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const uint8_t *p, size_t len)
{
	uint64_t c = crc;

	for (; len >= 8; p += 8, len -= 8) {
		uint64_t v;
		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
	}
	for (; len; p++, len--)
		c = __builtin_ia32_crc32qi((uint32_t)c, *p);
	return (uint32_t)c;
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	/* Racing first calls all compute the same table and flag: harmless. */
	if (__atomic_load_n(&have_sse42, __ATOMIC_ACQUIRE) < 0)
		init();
	crc = ~crc;
	if (have_sse42)
		crc = crc_hw(crc, p, len);
	else
		for (; len; p++, len--)
			crc = table[(crc ^ *p) & 0xff] ^ (crc >> 8);
	return ~crc;
}
