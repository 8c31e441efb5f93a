/* Subcommands of the lazyvm binary. Each returns the process exit status. */
#ifndef LAZYVM_CLI_H
#define LAZYVM_CLI_H

#include <stdbool.h>
#include <stdint.h>

int cmd_fc_handler(int argc, char **argv);
int cmd_fc_client(int argc, char **argv);
int cmd_checksum(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_probe(int argc, char **argv);
int cmd_migrate(int argc, char **argv);

struct vmm_outcome;
/* Prints the outcome of a run, restore or migration `what` (one line each, or
 * one JSON object with json); t0 is when the command started. */
void cli_report(const char *what, const char *load, uint64_t t0, const struct vmm_outcome *o,
                bool json);

/* Option parsing helpers: print "lazyvm CMD: --opt: why" and return -1 on error. */
int cli_size(const char *cmd, const char *opt, const char *val, unsigned long long *out);
int cli_duration(const char *cmd, const char *opt, const char *val, unsigned long long *ns);
/* `val` must be one of names[0..n): *out gets its index. Otherwise prints
 * "lazyvm CMD: OPT: 'val' is not a, b or c" and returns -1. */
int cli_choice(const char *cmd, const char *opt, const char *val, const char *const *names,
               unsigned n, int *out);
#define CLI_CHOICE(cmd, opt, val, names, out)                                                      \
	cli_choice(cmd, opt, val, names, sizeof(names) / sizeof(names[0]), out)

/* After getopt_long (optstring starting with ':' and opterr = 0) returned
 * '?' or ':' for argv[optind - 1]: says which option is unknown, lacks its
 * value or takes none, points at --help, and returns 2 (the exit status). */
int cli_bad_option(const char *cmd, int c, char *const *argv);
/* A path option must not be empty: -1 after saying so. */
int cli_path(const char *cmd, const char *opt, const char *val);
/* HOST:PORT or [V6]:PORT, the port 1 to 65535 (0 too with port0). */

int cli_uint(const char *cmd, const char *opt, const char *val, unsigned min, unsigned max,
             unsigned *out);
/* `val` must be HOST:PORT (lv_parse_hostport; port 0 only with allow_zero).
 * Otherwise prints "lazyvm CMD: OPT 'val': why" and returns -1. */
/* A guest that says nothing for this long is taken for stuck (--stall-timeout):
 * far above any task of the bundled guest between two messages here. */
#define CLI_STALL_DEFAULT_NS (120ull * 1000000000ull)

int cli_hostport(const char *cmd, const char *opt, const char *val, bool allow_zero);

#endif
