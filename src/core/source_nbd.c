/* Pages from an NBD server through libnbd: any NBD server works (nbdkit with
 * its file, curl or S3 plugins, qemu-nbd), which is how lazyvm reaches object
 * storage and storage clusters without a protocol of its own.
 *
 * A batch of reads is in flight together (libnbd's asynchronous API, driven
 * by our own poll). Every wait is bounded by the source's timeout T, the
 * connect and NBD handshake included (libnbd's synchronous connect has no
 * bound at all): an attempt fails when the server makes no progress for T.
 * A failed attempt (a stall, an error, a dropped connection) costs a
 * reconnect with exponential back-off, NBD_RETRIES times; then the read fails
 * (-ETIMEDOUT or -EIO) with the reason logged, and so does every later read.
 * So a server that stops answering fails a read within
 * (NBD_RETRIES + 1) * T + 1.55 s. A failed read never yields bytes: the
 * caller (the fault engine) stops instead of installing anything. */
#include <errno.h>
#include <stdio.h>

#include "lazyvm/source.h"

#ifdef LAZYVM_NO_NBD
/* Built without libnbd (the static hardware-model test binary). */
int source_nbd_open(const char *uri, uint64_t timeout_ns, struct source **out, char *why,
                    size_t whylen)
{
	(void)uri;
	(void)timeout_ns;
	(void)out;
	snprintf(why, whylen, "this lazyvm binary was built without NBD support");
	return -ENOSYS;
}
#else
#include <libnbd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lazyvm/hostport.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/units.h"

#define NBD_RETRIES    5
#define NBD_BACKOFF_NS (50ull * 1000 * 1000) /* doubled after each failure */

struct nbd_source {
	struct source base;
	char uri[512];
	int timeout_ms; /* the longest wait for the server without progress */
	/* One connection; the lock serialises batches on it (the engine batches
	 * up to 64 pages, so the wire still carries many requests at once). */
	pthread_mutex_t lock;
	struct nbd_handle *h;
	/* Set once a read gave up: every later read fails at once with it, so
	 * threads queued on the lock (more handler threads, the background pass)
	 * do not each spend another round of retries on a server that is gone. */
	int dead;
	char dead_why[256];
};

/* Milliseconds left until deadline_ns, at least 0. */
static int ms_left(uint64_t deadline_ns)
{
	uint64_t now = lv_now_ns();

	return now >= deadline_ns ? 0 : (int)((deadline_ns - now + 999999) / 1000000);
}

/* Moves libnbd's state machine on: waits at most timeout_ms for the socket
 * to be ready the way libnbd wants, then lets libnbd read or write. We poll
 * ourselves instead of calling nbd_poll so that a signal only ends one wait
 * (the caller's deadline still holds) instead of failing the connection.
 * 0 (progress, or nothing within timeout_ms) or -EIO with why. */
static int nbd_step(struct nbd_handle *h, int timeout_ms, char *why, size_t len)
{
	int fd = nbd_aio_get_fd(h);
	unsigned dir = nbd_aio_get_direction(h);
	struct pollfd p = {.fd = fd};
	int r;

	if (fd < 0) {
		snprintf(why, len, "%s", nbd_get_error());
		return -EIO;
	}
	if (dir & LIBNBD_AIO_DIRECTION_READ)
		p.events |= POLLIN;
	if (dir & LIBNBD_AIO_DIRECTION_WRITE)
		p.events |= POLLOUT;
	r = poll(&p, 1, timeout_ms);
	if (r < 0 && errno == EINTR)
		return 0;
	if (r < 0) {
		snprintf(why, len, "poll on the NBD socket: %s", strerror(errno));
		return -EIO;
	}
	if (r == 0)
		return 0;
	/* An error or hang-up is reported by whichever side libnbd waits on. */
	if ((dir & LIBNBD_AIO_DIRECTION_READ) && (p.revents & (POLLIN | POLLHUP | POLLERR)))
		r = nbd_aio_notify_read(h);
	else if ((dir & LIBNBD_AIO_DIRECTION_WRITE) && (p.revents & (POLLOUT | POLLHUP | POLLERR)))
		r = nbd_aio_notify_write(h);
	else
		r = 0;
	if (r < 0) {
		snprintf(why, len, "%s", nbd_get_error());
		return -EIO;
	}
	return 0;
}

/* Connects and completes the NBD handshake before deadline_ns (libnbd's
 * nbd_connect_uri would wait for ever on a server that accepts and never
 * speaks, or one that is stopped). NULL with why on failure; *err is
 * -ETIMEDOUT when the deadline passed, else -ECONNREFUSED. */
static struct nbd_handle *nbd_open_uri(const char *uri, uint64_t deadline_ns, int timeout_ms,
                                       uint64_t *size, int *err, char *why, size_t len)
{
	struct nbd_handle *h = nbd_create();
	int64_t sz;

	*err = -ECONNREFUSED;
	if (!h) {
		snprintf(why, len, "nbd_create: %s", nbd_get_error());
		return NULL;
	}
	if (nbd_aio_connect_uri(h, uri) < 0) {
		snprintf(why, len, "%s", nbd_get_error());
		goto fail;
	}
	while (!nbd_aio_is_ready(h)) {
		if (nbd_aio_is_dead(h) || nbd_aio_is_closed(h)) {
			snprintf(why, len, "%s", nbd_get_error());
			goto fail;
		}
		if (ms_left(deadline_ns) == 0) {
			snprintf(why, len,
			         "the server did not complete the NBD handshake within %d ms",
			         timeout_ms);
			*err = -ETIMEDOUT;
			goto fail;
		}
		if (nbd_step(h, ms_left(deadline_ns), why, len) < 0)
			goto fail;
	}
	if ((sz = nbd_get_size(h)) < 0) {
		snprintf(why, len, "%s", nbd_get_error());
		goto fail;
	}
	*size = (uint64_t)sz;
	return h;
fail:
	nbd_close(h);
	return NULL;
}

/* Runs reqs[0..n) on the current connection, in flight together, until all
 * are done or the server made no progress (no request completed) for the
 * timeout: slow but alive is not dead. The first wait ends at deadline_ns
 * (the attempt's, shared with a reconnect). Returns 0 when all succeeded,
 * else -ETIMEDOUT or -EIO with why filled. Caller holds the lock. */
static int batch_once(struct nbd_source *ns, struct source_req *reqs, unsigned n,
                      uint64_t deadline_ns, char *why, size_t whylen)
{
	int64_t cookies[SOURCE_BATCH_MAX];
	unsigned done = 0;

	for (unsigned i = 0; i < n; i++) {
		cookies[i] = nbd_aio_pread(ns->h, reqs[i].buf, reqs[i].len, reqs[i].off,
		                           NBD_NULL_COMPLETION, 0);
		if (cookies[i] < 0) {
			snprintf(why, whylen, "%s", nbd_get_error());
			return -EIO;
		}
		reqs[i].result = -EINPROGRESS;
	}
	while (done < n) {
		if (ms_left(deadline_ns) == 0) {
			snprintf(why, whylen,
			         "the server answered %u of %u read(s) and then nothing for %d ms",
			         done, n, ns->timeout_ms);
			return -ETIMEDOUT;
		}
		if (nbd_step(ns->h, ms_left(deadline_ns), why, whylen) < 0)
			return -EIO;
		for (unsigned i = 0; i < n; i++) {
			if (reqs[i].result != -EINPROGRESS)
				continue;
			int c = nbd_aio_command_completed(ns->h, (uint64_t)cookies[i]);
			if (c == 0)
				continue;
			if (c < 0) {
				snprintf(why, whylen, "%s", nbd_get_error());
				return -EIO;
			}
			reqs[i].result = 0;
			done++;
			deadline_ns = lv_now_ns() + (uint64_t)ns->timeout_ms * 1000000;
		}
	}
	return 0;
}

static int nbd_read_batch(struct source *src, struct source_req *reqs, unsigned n)
{
	struct nbd_source *ns = (struct nbd_source *)src;
	uint64_t backoff = NBD_BACKOFF_NS;
	char why[256] = "";
	int r = -EIO;

	pthread_mutex_lock(&ns->lock);
	if (ns->dead) {
		r = ns->dead;
		snprintf(why, sizeof(why), "%s", ns->dead_why);
		goto out;
	}
	for (int attempt = 0; attempt <= NBD_RETRIES; attempt++) {
		/* One bound an attempt: connecting and the first answer share it. */
		uint64_t deadline = lv_now_ns() + (uint64_t)ns->timeout_ms * 1000000;

		if (!ns->h) {
			uint64_t size;

			ns->h = nbd_open_uri(ns->uri, deadline, ns->timeout_ms, &size, &r, why,
			                     sizeof(why));
			if (ns->h && size != ns->base.size) {
				snprintf(why, sizeof(why), "the export is now %llu bytes, was %llu",
				         (unsigned long long)size,
				         (unsigned long long)ns->base.size);
				nbd_close(ns->h);
				ns->h = NULL;
				r = -EIO;
			}
		}
		if (ns->h && (r = batch_once(ns, reqs, n, deadline, why, sizeof(why))) == 0)
			break;
		if (ns->h) {
			nbd_close(ns->h); /* the connection's state is unknown now */
			ns->h = NULL;
		}
		/* A timeout stays a timeout in the caller's message; anything else
		 * (refused, reset, an NBD error) is an I/O error. */
		r = r == -ETIMEDOUT ? r : -EIO;
		if (attempt == NBD_RETRIES)
			break;
		lv_warn("%s: read of %u block(s) at 0x%llx failed (%s); reconnecting in %llu ms "
		        "(attempt %d of %d)",
		        ns->base.desc, n, (unsigned long long)reqs[0].off, why,
		        (unsigned long long)(backoff / 1000000), attempt + 1, NBD_RETRIES);
		lv_sleep_ns(backoff);
		backoff *= 2;
	}
	if (r < 0) {
		lv_err("%s: giving up after %d attempts: %s", ns->base.desc, NBD_RETRIES + 1, why);
		ns->dead = r;
		snprintf(ns->dead_why, sizeof(ns->dead_why), "%s", why);
	}
out:
	pthread_mutex_unlock(&ns->lock);
	if (r < 0)
		for (unsigned i = 0; i < n; i++)
			reqs[i].result = r;
	return r;
}

static int nbd_read(struct source *src, void *buf, uint64_t off, size_t len)
{
	struct source_req req = {.buf = buf, .off = off, .len = len};

	return nbd_read_batch(src, &req, 1);
}

static void nbd_destroy(struct source *src)
{
	struct nbd_source *ns = (struct nbd_source *)src;

	if (ns->h)
		nbd_close(ns->h);
	pthread_mutex_destroy(&ns->lock);
	free(ns);
}

static const struct source_ops nbd_ops = {
    .kind = "nbd",
    .read = nbd_read,
    .read_batch = nbd_read_batch,
    .destroy = nbd_destroy,
};

int source_nbd_open(const char *uri, uint64_t timeout_ns, struct source **out, char *why,
                    size_t whylen)
{
	struct nbd_source *ns;
	int r;

	if (strlen(uri) >= sizeof(ns->uri)) {
		snprintf(why, whylen, "NBD URI too long");
		return -ENAMETOOLONG;
	}
	/* libnbd would take port 99999 as 34463: refuse it ourselves. */
	if ((r = lv_check_nbd_uri(uri, why, whylen)) < 0)
		return r;
	ns = calloc(1, sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	strcpy(ns->uri, uri);
	if (!timeout_ns)
		timeout_ns = SOURCE_NBD_TIMEOUT_NS;
	ns->timeout_ms = timeout_ns / 1000000 > INT32_MAX ? INT32_MAX
	                 : timeout_ns < 1000000           ? 1
	                                                  : (int)(timeout_ns / 1000000);
	ns->h = nbd_open_uri(uri, lv_now_ns() + (uint64_t)ns->timeout_ms * 1000000, ns->timeout_ms,
	                     &ns->base.size, &r, why, whylen);
	if (!ns->h) {
		free(ns);
		return r;
	}
	pthread_mutex_init(&ns->lock, NULL);
	ns->base.ops = &nbd_ops;
	snprintf(ns->base.desc, sizeof(ns->base.desc), "nbd %.240s", uri);
	*out = &ns->base;
	return 0;
}
#endif
