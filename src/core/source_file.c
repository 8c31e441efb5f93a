/* A snapshot memory file as a page source: pread for single pages, io_uring to
 * keep a batch of reads in flight together. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lazyvm/fdio.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"

#define RING_POOL_MAX 16

struct file_source {
	struct source base;
	int fd;
	uint64_t size_at_open; /* what a short read is measured against */
	char *path;
	bool use_uring;
	/* io_uring rings are not safe for concurrent submission: each batch borrows
	 * one from this pool, which grows to the number of concurrent callers. */
	pthread_mutex_t pool_lock;
	struct io_uring *pool[RING_POOL_MAX];
	unsigned npool;
};

static int pread_full(int fd, void *buf, uint64_t off, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = pread(fd, p, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENODATA; /* the file shrank under us: never pad with zeros */
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int file_read(struct source *src, void *buf, uint64_t off, size_t len)
{
	return pread_full(((struct file_source *)src)->fd, buf, off, len);
}

static struct io_uring *ring_get(struct file_source *fs)
{
	struct io_uring *ring = NULL;

	pthread_mutex_lock(&fs->pool_lock);
	if (fs->npool)
		ring = fs->pool[--fs->npool];
	pthread_mutex_unlock(&fs->pool_lock);
	if (ring)
		return ring;
	ring = calloc(1, sizeof(*ring));
	if (ring && io_uring_queue_init(SOURCE_BATCH_MAX, ring, 0) < 0) {
		free(ring);
		ring = NULL;
	}
	return ring;
}

static void ring_put(struct file_source *fs, struct io_uring *ring)
{
	pthread_mutex_lock(&fs->pool_lock);
	if (fs->npool < RING_POOL_MAX) {
		fs->pool[fs->npool++] = ring;
		ring = NULL;
	}
	pthread_mutex_unlock(&fs->pool_lock);
	if (ring) {
		io_uring_queue_exit(ring);
		free(ring);
	}
}

static int file_read_batch(struct source *src, struct source_req *reqs, unsigned n)
{
	struct file_source *fs = (struct file_source *)src;
	struct io_uring *ring;
	unsigned done = 0;
	int r;

	if (!fs->use_uring || n == 1 || !(ring = ring_get(fs))) {
		for (unsigned i = 0; i < n; i++)
			reqs[i].result = pread_full(fs->fd, reqs[i].buf, reqs[i].off, reqs[i].len);
		return 0;
	}
	for (unsigned i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(ring); /* n <= ring size */

		io_uring_prep_read(sqe, fs->fd, reqs[i].buf, (unsigned)reqs[i].len, reqs[i].off);
		io_uring_sqe_set_data(sqe, &reqs[i]);
		reqs[i].result = -EINPROGRESS;
	}
	r = io_uring_submit_and_wait(ring, n);
	while (r >= 0 && done < n) {
		struct io_uring_cqe *cqe;

		r = io_uring_wait_cqe(ring, &cqe);
		if (r == -EINTR) {
			r = 0;
			continue;
		}
		if (r < 0)
			break;
		struct source_req *req = io_uring_cqe_get_data(cqe);
		int res = cqe->res;

		io_uring_cqe_seen(ring, cqe);
		done++;
		if (res < 0)
			req->result = res;
		else if ((size_t)res < req->len) /* short read: finish it the slow way */
			req->result = pread_full(fs->fd, (char *)req->buf + res,
			                         req->off + (uint64_t)res, req->len - (size_t)res);
		else
			req->result = 0;
	}
	if (r < 0) {
		/* The ring failed mid-batch: drop it (it may hold our buffers) and finish
		 * what it did not complete with pread. */
		lv_warn("io_uring on %s failed: %s; falling back to pread", src->desc,
		        strerror(-r));
		io_uring_queue_exit(ring);
		free(ring);
		for (unsigned i = 0; i < n; i++)
			if (reqs[i].result == -EINPROGRESS)
				reqs[i].result =
				    pread_full(fs->fd, reqs[i].buf, reqs[i].off, reqs[i].len);
		return 0;
	}
	ring_put(fs, ring);
	return 0;
}

/* A short read means the file shrank after it was opened: say so, with the
 * sizes, rather than a bare "No data available". */
static int file_explain(struct source *src, int err, char *buf, size_t len)
{
	struct file_source *fs = (struct file_source *)src;
	struct stat st;

	if (err != -ENODATA)
		return 0;
	if (fstat(fs->fd, &st) == 0 && S_ISREG(st.st_mode))
		snprintf(buf, len,
		         "%s ends early: it is now %llu bytes, shorter than the %llu it had when "
		         "it was opened",
		         fs->path, (unsigned long long)st.st_size,
		         (unsigned long long)fs->size_at_open);
	else
		snprintf(buf, len, "%s ends early: it is now shorter than when it was opened",
		         fs->path);
	return 1;
}

static void file_destroy(struct source *src)
{
	struct file_source *fs = (struct file_source *)src;

	for (unsigned i = 0; i < fs->npool; i++) {
		io_uring_queue_exit(fs->pool[i]);
		free(fs->pool[i]);
	}
	pthread_mutex_destroy(&fs->pool_lock);
	close(fs->fd);
	free(fs->path);
	free(fs);
}

static const struct source_ops file_ops = {
    .kind = "file",
    .read = file_read,
    .read_batch = file_read_batch,
    .explain = file_explain,
    .destroy = file_destroy,
};

int source_file_open(const char *path, unsigned flags, struct source **out, char *why,
                     size_t whylen)
{
	struct file_source *fs;
	struct stat st;
	char spare[8];
	int r;

	if (!why || !whylen) {
		why = spare;
		whylen = sizeof(spare);
	}
	fs = calloc(1, sizeof(*fs));
	if (!fs || !(fs->path = strdup(path ? path : ""))) {
		snprintf(why, whylen, "out of memory");
		r = -ENOMEM;
		goto err_free;
	}
	/* Never blocks (a FIFO), refuses what is not a file or block device. */
	fs->fd = lv_open_input(path, LV_OPEN_BLOCKDEV, &st, why, whylen);
	if (fs->fd < 0) {
		r = fs->fd;
		goto err_free;
	}
	fs->base.size = (uint64_t)st.st_size;
	if (S_ISBLK(st.st_mode) && ioctl(fs->fd, BLKGETSIZE64, &fs->base.size) < 0) {
		r = -errno;
		snprintf(why, whylen, "%s: BLKGETSIZE64: %s", path, strerror(errno));
		goto err_close;
	}
	fs->size_at_open = fs->base.size;
	pthread_mutex_init(&fs->pool_lock, NULL);
	if (flags & SOURCE_FILE_IO_URING) {
		struct io_uring probe;

		/* Probe once here so a kernel without io_uring is named at start-up. */
		r = io_uring_queue_init(SOURCE_BATCH_MAX, &probe, 0);
		if (r < 0) {
			snprintf(why, whylen, "%s: io_uring is unavailable on this kernel (%s)",
			         path, strerror(-r));
			r = -ENOSYS;
			goto err_mutex;
		}
		io_uring_queue_exit(&probe);
		fs->use_uring = true;
	}
	fs->base.ops = &file_ops;
	snprintf(fs->base.desc, sizeof(fs->base.desc), "file %.230s%s", path,
	         fs->use_uring ? " (io_uring)" : "");
	*out = &fs->base;
	return 0;

err_mutex:
	pthread_mutex_destroy(&fs->pool_lock);
err_close:
	close(fs->fd);
err_free:
	if (fs)
		free(fs->path);
	free(fs);
	return r;
}
