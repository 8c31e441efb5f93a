/* The CMOS RTC model (rtc.h). Register numbers are the MC146818's. */
#include "rtc.h"

#include <string.h>

#define REG_SECONDS 0x00
#define REG_MINUTES 0x02
#define REG_HOURS   0x04
#define REG_WEEKDAY 0x06
#define REG_DAY     0x07
#define REG_MONTH   0x08
#define REG_YEAR    0x09
#define REG_A       0x0a /* bit 7: update in progress, never set here */
#define REG_B       0x0b
#define REG_C       0x0c
#define REG_D       0x0d
#define REG_CENTURY 0x32

#define B_24H 0x02 /* 24-hour mode; BCD since bit 2 (binary) is clear */
#define D_VRT 0x80 /* valid RAM and time: the battery is good */

void rtc_init(struct rtc_state *s)
{
	memset(s, 0, sizeof(*s));
	s->nvram[REG_A] = 0x26; /* 32.768 kHz time base, 1024 Hz rate */
	s->nvram[REG_B] = B_24H;
	s->nvram[REG_D] = D_VRT;
}

static uint8_t bcd(int v)
{
	return (uint8_t)((v / 10) << 4 | v % 10);
}

uint8_t rtc_read(struct rtc_state *s, uint16_t port, time_t now)
{
	struct tm tm;
	unsigned reg = s->index & 0x7f;

	if (port == RTC_INDEX_PORT)
		return s->index;
	gmtime_r(&now, &tm);
	switch (reg) {
	case REG_SECONDS: return bcd(tm.tm_sec);
	case REG_MINUTES: return bcd(tm.tm_min);
	case REG_HOURS: return bcd(tm.tm_hour);
	case REG_WEEKDAY: return bcd(tm.tm_wday + 1);
	case REG_DAY: return bcd(tm.tm_mday);
	case REG_MONTH: return bcd(tm.tm_mon + 1);
	case REG_YEAR: return bcd(tm.tm_year % 100);
	case REG_CENTURY: return bcd((tm.tm_year + 1900) / 100);
	case REG_C: return 0; /* no interrupt flags: no alarm, no periodic */
	default: return s->nvram[reg];
	}
}

void rtc_write(struct rtc_state *s, uint16_t port, uint8_t val)
{
	unsigned reg = s->index & 0x7f;

	if (port == RTC_INDEX_PORT) {
		s->index = val;
		return;
	}
	if (reg == REG_A)
		val &= 0x7f; /* update in progress is read-only */
	if (reg == REG_C || reg == REG_D)
		return; /* read-only */
	s->nvram[reg] = val;
}
