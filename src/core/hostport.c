/* lv_parse_hostport, lv_check_nbd_uri (include/lazyvm/hostport.h). */
#include "lazyvm/hostport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

/* A host name: labels of letters, digits and '-' (not at either end). */
static bool valid_name(const char *h)
{
	size_t label = 0, total = strlen(h);

	if (total == 0 || total > 253)
		return false;
	for (const char *p = h;; p++) {
		if (*p == '.' || *p == 0) {
			if (label == 0 || label > 63 || p[-1] == '-')
				return false;
			if (*p == 0)
				return true;
			label = 0;
			continue;
		}
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || (*p == '-' && label > 0)))
			return false;
		label++;
	}
}

/* host (NUL-terminated, brackets already removed when `bracketed`). */
static int check_host(const char *host, bool bracketed, char *why, size_t whylen)
{
	unsigned char addr[16];

	if (bracketed) {
		char a[64];
		const char *zone = strchr(host, '%');
		size_t n = zone ? (size_t)(zone - host) : strlen(host);

		/* A zone ("%eth0") names an interface: a host-name-like word. */
		if (n < sizeof(a)) {
			memcpy(a, host, n);
			a[n] = 0;
		}
		if (n >= sizeof(a) || inet_pton(AF_INET6, a, addr) != 1 ||
		    (zone && !valid_name(zone + 1))) {
			snprintf(why, whylen, "'[%s]' is not an IPv6 address", host);
			return -EINVAL;
		}
		return 0;
	}
	if (strchr(host, ':')) {
		snprintf(why, whylen, "'%s': an IPv6 address needs brackets ([%s]:PORT)", host,
		         host);
		return -EINVAL;
	}
	if (strspn(host, "0123456789.") == strlen(host)) {
		/* All digits and dots: an IPv4 address, and only the dotted-quad
		 * form (inet_aton would take "1.2.3" or "0x7f.1" as something). */
		if (inet_pton(AF_INET, host, addr) != 1) {
			snprintf(why, whylen, "'%s' is not an IPv4 address", host);
			return -EINVAL;
		}
		return 0;
	}
	if (!valid_name(host)) {
		snprintf(why, whylen, "'%s' is not a host name or an address", host);
		return -EINVAL;
	}
	return 0;
}

/* The port text p[0..n), not NUL-terminated. */
static int parse_port(const char *p, size_t n, bool allow_zero, uint16_t *port, char *why,
                      size_t whylen)
{
	unsigned long v = 0;
	size_t digits = 0;

	while (digits < n && p[digits] >= '0' && p[digits] <= '9')
		digits++;
	if (n == 0 || n > 5 || digits != n) {
		snprintf(why, whylen, "port '%.*s' is not a number from %s to 65535", (int)n, p,
		         allow_zero ? "0" : "1");
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++)
		v = v * 10 + (unsigned long)(p[i] - '0');
	if (v > 65535 || (v == 0 && !allow_zero)) {
		snprintf(why, whylen, "port %.*s is out of range (%s-65535)", (int)n, p,
		         allow_zero ? "0" : "1");
		return -EINVAL;
	}
	*port = (uint16_t)v;
	return 0;
}

/* Splits s[0..len) into host and port text (*port up to s + len); *port
 * NULL when there is none. */
static int split(const char *s, size_t len, char *host, size_t hostlen, const char **port,
                 bool *bracketed, char *why, size_t whylen)
{
	const char *end = s + len, *colon, *h = s;
	size_t hl;

	*bracketed = s[0] == '[';
	if (*bracketed) {
		const char *close = memchr(s, ']', len);
		if (!close || (close + 1 != end && close[1] != ':')) {
			snprintf(why, whylen, "'%.*s': an IPv6 address is [ADDRESS]:PORT", (int)len,
			         s);
			return -EINVAL;
		}
		h = s + 1;
		hl = (size_t)(close - h);
		colon = close + 1 == end ? NULL : close + 1;
	} else {
		colon = memrchr(s, ':', len);
		hl = colon ? (size_t)(colon - s) : len;
	}
	if (hl == 0) {
		snprintf(why, whylen, "'%.*s' has no host", (int)len, s);
		return -EINVAL;
	}
	if (hl >= hostlen) {
		snprintf(why, whylen, "the host of '%.*s' is too long", (int)len, s);
		return -EINVAL;
	}
	memcpy(host, h, hl);
	host[hl] = 0;
	*port = colon ? colon + 1 : NULL;
	return 0;
}

int lv_parse_hostport(const char *s, bool allow_zero, char *host, size_t hostlen, uint16_t *port,
                      char *why, size_t whylen)
{
	const char *p;
	bool br;
	int r;

	if ((r = split(s, strlen(s), host, hostlen, &p, &br, why, whylen)) < 0)
		return r;
	if (!p) {
		snprintf(why, whylen, "'%s' is not HOST:PORT (no port)", s);
		return -EINVAL;
	}
	if ((r = check_host(host, br, why, whylen)) < 0)
		return r;
	return parse_port(p, strlen(p), allow_zero, port, why, whylen);
}

int lv_check_nbd_uri(const char *uri, char *why, size_t whylen)
{
	const char *auth, *end;
	char host[256], pw[300];
	uint16_t port;
	const char *p;
	bool br;
	int r;

	if (!strncmp(uri, "nbd://", 6))
		auth = uri + 6;
	else if (!strncmp(uri, "nbds://", 7))
		auth = uri + 7;
	else
		return 0;
	end = auth + strcspn(auth, "/?#");
	/* user@host: the user is libnbd's business. */
	for (const char *a = auth; a < end; a++)
		if (*a == '@')
			auth = a + 1;
	if (auth == end) {
		snprintf(why, whylen, "'%s' names no server (nbd://HOST[:PORT]/EXPORT)", uri);
		return -EINVAL;
	}
	if ((r = split(auth, (size_t)(end - auth), host, sizeof(host), &p, &br, pw, sizeof(pw))) <
	        0 ||
	    (r = check_host(host, br, pw, sizeof(pw))) < 0 ||
	    (p && (r = parse_port(p, (size_t)(end - p), false, &port, pw, sizeof(pw))) < 0)) {
		snprintf(why, whylen, "'%s': %s", uri, pw);
		return r;
	}
	return 0;
}
