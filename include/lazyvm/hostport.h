/* Network addresses as lazyvm takes them: one parser for every HOST:PORT on
 * the command line (--listen, --migrate-to) and for the server part of the
 * nbd:// URIs we hand to libnbd, so they all refuse the same mistakes (a port
 * of 99999 would otherwise be truncated to 16 bits and silently mean another
 * port: getaddrinfo and libnbd both do that). */
#ifndef LAZYVM_HOSTPORT_H
#define LAZYVM_HOSTPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "HOST:PORT" or "[IPV6]:PORT". HOST is a numeric IPv4 address, a host name
 * (letters, digits, '-' and '.', labels of 1-63 characters) or, in brackets,
 * an IPv6 address; PORT is 1 to 5 decimal digits, 1-65535, or 0 too with
 * allow_zero (listen on any port). host gets HOST without brackets.
 * Returns 0, or -EINVAL with why naming the bad part (no port, the port, the
 * address). */
int lv_parse_hostport(const char *s, bool allow_zero, char *host, size_t hostlen, uint16_t *port,
                      char *why, size_t whylen);

/* Checks the server part of an nbd:// or nbds:// URI (HOST, HOST:PORT or
 * [IPV6]:PORT, with the rules above; port 0 refused) before libnbd sees it.
 * Other schemes (nbd+unix, nbd+vsock, ...) have no host part and pass.
 * 0 or -EINVAL with why. */
int lv_check_nbd_uri(const char *uri, char *why, size_t whylen);

#endif
