/* A tiny printf for LOG lines and panics, and the memory functions that gcc
 * may call even in freestanding code (struct copies and clears).
 *
 * Conversions: %s (with %.*s), %c, %d %i %u %x %p, with l/ll/z, a '0' flag
 * and a width; %%. Output is always NUL-terminated and silently truncated.
 */
#include "guest.h"

struct out {
	char *buf;
	size_t size, len;
};

static void put(struct out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static void put_uint(struct out *o, uint64_t v, unsigned base, bool neg, unsigned width, char padc)
{
	char digits[24];
	unsigned n = 0;

	do {
		digits[n++] = "0123456789abcdef"[v % base];
		v /= base;
	} while (v);
	if (neg && padc == '0')
		put(o, '-');
	for (unsigned w = n + neg; w < width; w++)
		put(o, padc);
	if (neg && padc != '0')
		put(o, '-');
	while (n)
		put(o, digits[--n]);
}

size_t fmt_vformat(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = {buf, size, 0};

	for (; *fmt; fmt++) {
		unsigned width = 0, lng = 0;
		int prec = -1;
		char padc = ' ';

		if (*fmt != '%') {
			put(&o, *fmt);
			continue;
		}
		fmt++;
		if (*fmt == '0')
			padc = '0', fmt++;
		while (*fmt >= '0' && *fmt <= '9')
			width = width * 10 + (unsigned)(*fmt++ - '0');
		if (fmt[0] == '.' && fmt[1] == '*')
			prec = va_arg(ap, int), fmt += 2;
		while (*fmt == 'l' || *fmt == 'z')
			lng++, fmt++;

		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);

			if (!s)
				s = "(null)";
			for (int i = 0; s[i] && (prec < 0 || i < prec); i++)
				put(&o, s[i]);
			break;
		}
		case 'c': put(&o, (char)va_arg(ap, int)); break;
		case 'd':
		case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);

			put_uint(&o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, v < 0, width, padc);
			break;
		}
		case 'u':
		case 'x': {
			uint64_t v = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned);

			put_uint(&o, v, *fmt == 'u' ? 10 : 16, false, width, padc);
			break;
		}
		case 'p':
			put(&o, '0'), put(&o, 'x');
			put_uint(&o, (uintptr_t)va_arg(ap, void *), 16, false, width, padc);
			break;
		case '%': put(&o, '%'); break;
		default: /* unknown: show it rather than guess at its argument */
			put(&o, '%');
			if (!*fmt)
				goto out;
			put(&o, *fmt);
		}
	}
out:
	if (size)
		buf[o.len < size ? o.len : size - 1] = '\0';
	return o.len;
}

size_t fmt_format(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	n = fmt_vformat(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

/* One string instruction each: cheap under an instruction emulator. */
void *memset(void *s, int c, size_t n)
{
	void *d = s;

	asm volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return s;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	void *d = dst;

	asm volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
	return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;

	if (d <= s || d >= s + n)
		return memcpy(dst, src, n);
	while (n--)
		d[n] = s[n];
	return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
	const uint8_t *x = a, *y = b;

	for (size_t i = 0; i < n; i++)
		if (x[i] != y[i])
			return x[i] < y[i] ? -1 : 1;
	return 0;
}

size_t strlen(const char *s)
{
	size_t n = 0;

	while (s[n])
		n++;
	return n;
}
