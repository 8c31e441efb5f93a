/* Pages from an NBD server through libnbd: any NBD server works (nbdkit with
 * its file, curl or S3 plugins, qemu-nbd), which is how lazyvm reaches object
 * storage and storage clusters without a protocol of its own.
 *
 * A batch of reads is in flight together (libnbd's asynchronous API). Every
 * wait is bounded: a server that stalls for NBD_STALL_MS, errors, or drops the
 * connection costs a reconnect with exponential back-off, NBD_RETRIES times;
 * then the read fails with -EIO and the reason is logged. A failed read never
 * yields bytes: the caller (the fault engine) stops instead of installing
 * anything. */
#include <errno.h>
#include <stdio.h>

#include "lazyvm/source.h"

#ifdef LAZYVM_NO_NBD
/* Built without libnbd (the static hardware-model test binary). */
int source_nbd_open(const char *uri, struct source **out, char *why, size_t whylen)
{
	(void)uri;
	(void)out;
	snprintf(why, whylen, "this lazyvm binary was built without NBD support");
	return -ENOSYS;
}
#else
#include <libnbd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lazyvm/log.h"
#include "lazyvm/source.h"
#include "lazyvm/units.h"

#define NBD_RETRIES    5
#define NBD_BACKOFF_NS (50ull * 1000 * 1000) /* doubled after each failure */
#define NBD_STALL_MS   5000

struct nbd_source {
	struct source base;
	char uri[512];
	/* One connection; the lock serialises batches on it (the engine batches
	 * up to 64 pages, so the wire still carries many requests at once). */
	pthread_mutex_t lock;
	struct nbd_handle *h;
};

static struct nbd_handle *nbd_open_uri(const char *uri, uint64_t *size, char *why, size_t len)
{
	struct nbd_handle *h = nbd_create();
	int64_t sz;

	if (!h) {
		snprintf(why, len, "nbd_create: %s", nbd_get_error());
		return NULL;
	}
	if (nbd_connect_uri(h, uri) < 0 || (sz = nbd_get_size(h)) < 0) {
		snprintf(why, len, "%s", nbd_get_error());
		nbd_close(h);
		return NULL;
	}
	*size = (uint64_t)sz;
	return h;
}

/* Runs reqs[0..n) on the current connection, in flight together. Returns 0
 * when all succeeded, else -errno with why filled. Caller holds the lock. */
static int batch_once(struct nbd_source *ns, struct source_req *reqs, unsigned n, char *why,
                      size_t whylen)
{
	int64_t cookies[SOURCE_BATCH_MAX];
	unsigned done = 0;
	uint64_t deadline;

	for (unsigned i = 0; i < n; i++) {
		cookies[i] = nbd_aio_pread(ns->h, reqs[i].buf, reqs[i].len, reqs[i].off,
		                           NBD_NULL_COMPLETION, 0);
		if (cookies[i] < 0) {
			snprintf(why, whylen, "%s", nbd_get_error());
			return -EIO;
		}
		reqs[i].result = -EINPROGRESS;
	}
	deadline = lv_now_ns() + (uint64_t)NBD_STALL_MS * 1000000;
	while (done < n) {
		if (lv_now_ns() > deadline) {
			snprintf(why, whylen, "no answer within %d ms", NBD_STALL_MS);
			return -ETIMEDOUT;
		}
		if (nbd_poll(ns->h, 100) < 0) {
			snprintf(why, whylen, "%s", nbd_get_error());
			return -EIO;
		}
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
	for (int attempt = 0; attempt <= NBD_RETRIES; attempt++) {
		if (!ns->h) {
			uint64_t size;

			ns->h = nbd_open_uri(ns->uri, &size, why, sizeof(why));
			if (ns->h && size != ns->base.size) {
				snprintf(why, sizeof(why), "the export is now %llu bytes, was %llu",
				         (unsigned long long)size,
				         (unsigned long long)ns->base.size);
				nbd_close(ns->h);
				ns->h = NULL;
			}
		}
		if (ns->h && (r = batch_once(ns, reqs, n, why, sizeof(why))) == 0)
			break;
		if (ns->h) {
			nbd_close(ns->h); /* the connection's state is unknown now */
			ns->h = NULL;
		}
		r = r ? r : -EIO;
		if (attempt == NBD_RETRIES)
			break;
		lv_warn("%s: read of %u block(s) at 0x%llx failed (%s); reconnecting in %llu ms "
		        "(attempt %d of %d)",
		        ns->base.desc, n, (unsigned long long)reqs[0].off, why,
		        (unsigned long long)(backoff / 1000000), attempt + 1, NBD_RETRIES);
		lv_sleep_ns(backoff);
		backoff *= 2;
	}
	pthread_mutex_unlock(&ns->lock);
	if (r < 0) {
		lv_err("%s: giving up after %d attempts: %s", ns->base.desc, NBD_RETRIES + 1, why);
		for (unsigned i = 0; i < n; i++)
			reqs[i].result = -EIO;
	}
	return r;
}

static int nbd_read(struct source *src, void *buf, uint64_t off, size_t len)
{
	struct source_req req = {.buf = buf, .off = off, .len = len};

	return nbd_read_batch(src, &req, 1) < 0 ? -EIO : 0;
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

int source_nbd_open(const char *uri, struct source **out, char *why, size_t whylen)
{
	struct nbd_source *ns;

	if (strlen(uri) >= sizeof(ns->uri)) {
		snprintf(why, whylen, "NBD URI too long");
		return -ENAMETOOLONG;
	}
	ns = calloc(1, sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	strcpy(ns->uri, uri);
	ns->h = nbd_open_uri(uri, &ns->base.size, why, whylen);
	if (!ns->h) {
		free(ns);
		return -ECONNREFUSED;
	}
	pthread_mutex_init(&ns->lock, NULL);
	ns->base.ops = &nbd_ops;
	snprintf(ns->base.desc, sizeof(ns->base.desc), "nbd %.240s", uri);
	*out = &ns->base;
	return 0;
}
#endif
