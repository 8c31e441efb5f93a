/* Logging for library and CLI code. Library code logs context (addresses,
 * offsets, fds) and returns -errno; it never exits. Each message is written
 * with one write(2) so lines from several threads never interleave. */
#ifndef LAZYVM_LOG_H
#define LAZYVM_LOG_H

#include <stdarg.h>

enum lv_log_level { LV_LOG_ERROR, LV_LOG_WARN, LV_LOG_INFO, LV_LOG_DEBUG };

/* Messages above this level are dropped. Default: LV_LOG_INFO. */
void lv_log_set_level(enum lv_log_level level);
enum lv_log_level lv_log_get_level(void);

/* Writes "lazyvm: <level>: <message>\n" to stderr. */
void lv_log(enum lv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void lv_vlog(enum lv_log_level level, const char *fmt, va_list ap);

#define lv_err(...)   lv_log(LV_LOG_ERROR, __VA_ARGS__)
#define lv_warn(...)  lv_log(LV_LOG_WARN, __VA_ARGS__)
#define lv_info(...)  lv_log(LV_LOG_INFO, __VA_ARGS__)
#define lv_debug(...) lv_log(LV_LOG_DEBUG, __VA_ARGS__)

#endif
