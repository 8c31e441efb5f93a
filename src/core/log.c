#include "lazyvm/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

static _Atomic int log_level = LV_LOG_INFO;

void lv_log_set_level(enum lv_log_level level)
{
	atomic_store(&log_level, level);
}

enum lv_log_level lv_log_get_level(void)
{
	return atomic_load(&log_level);
}

void lv_vlog(enum lv_log_level level, const char *fmt, va_list ap)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	char line[1024];
	int saved_errno = errno;
	int n;

	if ((int)level > atomic_load(&log_level))
		return;
	n = snprintf(line, sizeof(line), "lazyvm: %s: ", names[level]);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	if (n >= (int)sizeof(line) - 1)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line: concurrent loggers never interleave within a line. */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		(void)0;
	errno = saved_errno;
}

void lv_log(enum lv_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	lv_vlog(level, fmt, ap);
	va_end(ap);
}
