/* lazyvm: one binary, one subcommand per job. */
#include <ctype.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "lazyvm/hostport.h"
#include "lazyvm/log.h"
#include "lazyvm/units.h"
#include "lazyvm/vmm.h"

#define LAZYVM_VERSION "0.1.0"

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
} commands[] = {
    {"run", cmd_run, "boot the bundled guest in lazyvm's KVM VMM; optionally snapshot it"},
    {"probe", cmd_probe, "say which userfault exit backends work on this host"},
    {"restore", cmd_restore, "restore a snapshot: eager, mmap, or lazy (pages on first touch)"},
    {"migrate", cmd_migrate, "receive a VM by post-copy live migration (lazyvm run --migrate-to)"},
    {"fc-handler", cmd_fc_handler, "serve Firecracker's page faults from a snapshot memory file"},
    {"checksum", cmd_checksum,
     "write the page checksums and zero map fc-handler checks a memory file with"},
    {"fc-client", cmd_fc_client,
     "play Firecracker's part of the UFFD hand-off against a handler, verify every byte"},
};

static void usage(FILE *f)
{
	fprintf(f,
	        "lazyvm %s: restore virtual machines before their memory has arrived.\n\n"
	        "Usage: lazyvm COMMAND [OPTIONS]\n\nCommands:\n",
	        LAZYVM_VERSION);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "  %-12s %s\n", "version", "print the version");
	fprintf(f, "\nRun 'lazyvm COMMAND --help' for the options of a command.\n"
	           "Documentation: docs/CLI.md, docs/ARCHITECTURE.md.\n");
}

int cli_size(const char *cmd, const char *opt, const char *val, unsigned long long *out)
{
	uint64_t v;

	if (lv_parse_size(val, &v) < 0) {
		fprintf(stderr, "lazyvm %s: %s: '%s' is not a size (e.g. 4096, 4k, 2M, 1G)\n", cmd,
		        opt, val);
		return -1;
	}
	*out = v;
	return 0;
}

int cli_duration(const char *cmd, const char *opt, const char *val, unsigned long long *ns)
{
	uint64_t v;

	if (lv_parse_duration(val, &v) < 0) {
		fprintf(stderr, "lazyvm %s: %s: '%s' is not a duration (e.g. 200us, 10ms, 5s, 0)\n",
		        cmd, opt, val);
		return -1;
	}
	*ns = v;
	return 0;
}

int cli_choice(const char *cmd, const char *opt, const char *val, const char *const *names,
               unsigned n, int *out)
{
	for (unsigned i = 0; i < n; i++)
		if (!strcmp(val, names[i])) {
			*out = (int)i;
			return 0;
		}
	fprintf(stderr, "lazyvm %s: %s: '%s' is not ", cmd, opt, val);
	for (unsigned i = 0; i < n; i++)
		fprintf(stderr, "%s%s", names[i], i + 2 < n ? ", " : i + 1 < n ? " or " : "\n");
	return -1;
}

int cli_bad_option(const char *cmd, int c, char *const *argv)
{
	const char *arg = argv[optind - 1];
	const char *eq = strchr(arg, '=');
	int n = eq ? (int)(eq - arg) : (int)strlen(arg);

	if (c == ':')
		fprintf(stderr, "lazyvm %s: %.*s needs a value\n", cmd, n, arg);
	else if (optopt && !strncmp(arg, "--", 2))
		fprintf(stderr, "lazyvm %s: %.*s takes no value (got '%s')\n", cmd, n, arg, arg);
	else if (optopt)
		fprintf(stderr, "lazyvm %s: unknown option '-%c'\n", cmd, optopt);
	else
		fprintf(stderr, "lazyvm %s: unknown or ambiguous option '%s'\n", cmd, arg);
	fprintf(stderr, "Run 'lazyvm %s --help' for the options.\n", cmd);
	return 2;
}

int cli_path(const char *cmd, const char *opt, const char *val)
{
	if (*val)
		return 0;
	fprintf(stderr, "lazyvm %s: %s: the path is empty\n", cmd, opt);
	return -1;
}

int cli_uint(const char *cmd, const char *opt, const char *val, unsigned min, unsigned max,
             unsigned *out)
{
	char *end;
	unsigned long v = strtoul(val, &end, 10);

	if (!isdigit((unsigned char)val[0]) || *end || v < min || v > max) {
		fprintf(stderr, "lazyvm %s: %s: '%s' is not a whole number from %u to %u\n", cmd,
		        opt, val, min, max);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

int cli_hostport(const char *cmd, const char *opt, const char *val, bool allow_zero)
{
	char host[256], why[200];
	uint16_t port;

	if (lv_parse_hostport(val, allow_zero, host, sizeof(host), &port, why, sizeof(why)) < 0) {
		fprintf(stderr, "lazyvm %s: %s '%s': %s\n", cmd, opt, val, why);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	/* LAZYVM_LOG=error|warning|info|debug sets the log level of any command. */
	static const char *const levels[] = {"error", "warning", "info", "debug"};
	const char *env = getenv("LAZYVM_LOG");
	for (int i = 0; env && i < 4; i++)
		if (!strcmp(env, levels[i]))
			lv_log_set_level((enum lv_log_level)i);

	/* Firecracker's jail runs a page-fault handler as `HANDLER SOCKET MEMFILE`:
	 * a copy or link of lazyvm named fc-handler (any name ending so) is
	 * that handler, with its options or those two positional arguments. */
	const char *base = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	size_t blen = strlen(base);
	if (blen >= 10 && !strcmp(base + blen - 10, "fc-handler"))
		return cmd_fc_handler(argc, argv);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
		printf("lazyvm %s\n", LAZYVM_VERSION);
		return 0;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[1], commands[i].name))
			return commands[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "lazyvm: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return 2;
}
