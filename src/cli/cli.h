/* Subcommands of the lazyvm binary. Each returns the process exit status. */
#ifndef LAZYVM_CLI_H
#define LAZYVM_CLI_H

#include <stdbool.h>

int cmd_fc_handler(int argc, char **argv);
int cmd_fc_client(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_restore(int argc, char **argv);
int cmd_probe(int argc, char **argv);
int cmd_migrate(int argc, char **argv);

/* Option parsing helpers: print "lazyvm CMD: --opt: why" and return -1 on error. */
int cli_size(const char *cmd, const char *opt, const char *val, unsigned long long *out);
int cli_duration(const char *cmd, const char *opt, const char *val, unsigned long long *ns);
/* `val` must be one of names[0..n): *out gets its index. Otherwise prints
 * "lazyvm CMD: OPT: 'val' is not a, b or c" and returns -1. */
int cli_choice(const char *cmd, const char *opt, const char *val, const char *const *names,
               unsigned n, int *out);
#define CLI_CHOICE(cmd, opt, val, names, out)                                                      \
	cli_choice(cmd, opt, val, names, sizeof(names) / sizeof(names[0]), out)

int cli_uint(const char *cmd, const char *opt, const char *val, unsigned min, unsigned max,
             unsigned *out);
/* `val` must be HOST:PORT (lv_parse_hostport; port 0 only with allow_zero).
 * Otherwise prints "lazyvm CMD: OPT 'val': why" and returns -1. */
int cli_hostport(const char *cmd, const char *opt, const char *val, bool allow_zero);

#endif
