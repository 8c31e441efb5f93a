/* The CMOS real-time clock (MC146818) as Linux's rtc_cmos driver probes it:
 * without one, every read is 0xff, "update in progress" never clears and the
 * probe spins for a second of guest time in 100 us steps (5.7 s in the tier,
 * measured). The clock reads the host's UTC time in BCD, 24-hour mode; time
 * writes are not kept (kvmclock is the guest's wall clock); the other bytes
 * are 128 bytes of plain NVRAM. Pure model; the caller locks. */
#ifndef LAZYVM_RTC_H
#define LAZYVM_RTC_H

#include <stdint.h>
#include <time.h>

#define RTC_INDEX_PORT 0x70
#define RTC_DATA_PORT  0x71

struct rtc_state {
	uint8_t index; /* the selected register (bit 7: NMI mask, ignored) */
	uint8_t nvram[128];
};

void rtc_init(struct rtc_state *s);
/* now: the time a read of a clock register shows. */
uint8_t rtc_read(struct rtc_state *s, uint16_t port, time_t now);
void rtc_write(struct rtc_state *s, uint16_t port, uint8_t val);

#endif
