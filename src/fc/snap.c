/* fc-handler's snapshots: each one's source (a memory file or an NBD
 * export), its checksums and known-zero pages, its working sets, its socket. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "handler_internal.h"
#include "lazyvm/crc32c.h"
#include "lazyvm/csumfile.h"
#include "lazyvm/log.h"
#include "lazyvm/source.h"

/* Does anyone listen on the unix socket at `path`? 1 yes, 0 no (stale), or
 * -errno. A non-blocking connect answers at once: ECONNREFUSED for a socket
 * file nobody listens on, success or EAGAIN (backlog full) for a listener.
 * The listener sees a connection closed before anything was sent, which it
 * does not count as a hand-off. */
static int socket_is_live(const char *path, int type)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, r;

	strcpy(sa.sun_path, path); /* the caller checked the length */
	fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 ? 1 : -errno;
	close(fd);
	if (r == -EAGAIN || r == -EINPROGRESS)
		return 1;
	if (r == -ECONNREFUSED || r == -ENOENT)
		return 0;
	return r;
}

/* The socket is bound and listening under a temporary name and renamed into
 * place, so that whoever sees the path can connect at once (a client that
 * connects between bind and listen would be refused). */
int fc_bind_unix(const char *path, int type, mode_t mode, bool replace_live)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char tmp[sizeof(sa.sun_path)];
	struct stat st;
	int fd, r;

	if (snprintf(tmp, sizeof(tmp), "%s.%d.tmp", path, (int)getpid()) >= (int)sizeof(tmp)) {
		lv_err("socket path %s is too long (at most %zu bytes, with room for a temporary "
		       "name)",
		       path, sizeof(sa.sun_path) - 16);
		return -ENAMETOOLONG;
	}
	/* Replace a stale socket left by a previous run, never a regular file,
	 * and never the socket of a handler that is still listening: VMs would
	 * connect to this one while that one serves its VMs on, and its exit
	 * would unlink our socket. */
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			lv_err("%s exists and is not a socket; refusing to replace it", path);
			return -EEXIST;
		}
		r = replace_live ? 0 : socket_is_live(path, type);
		if (r != 0) {
			if (r > 0)
				lv_err("%s: another process is listening on this socket (another "
				       "fc-handler? --takeover takes its VMs over); refusing to "
				       "replace it",
				       path);
			else
				lv_err("%s: cannot tell whether someone listens on it: %s; "
				       "refusing to replace it",
				       path, strerror(-r));
			return r > 0 ? -EADDRINUSE : r;
		}
	}
	strcpy(sa.sun_path, tmp);
	unlink(tmp);
	fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || (mode && chmod(tmp, mode) < 0) ||
	    listen(fd, 64) < 0 || rename(tmp, path) < 0) {
		r = -errno;
		lv_err("cannot listen on %s: %s", path, strerror(-r));
		unlink(tmp);
		close(fd);
		return r;
	}
	return fd;
}

static bool is_nbd_uri(const char *s)
{
	return strncmp(s, "nbd://", 6) == 0 || strncmp(s, "nbds://", 7) == 0 ||
	       strncmp(s, "nbd+unix://", 11) == 0 || strncmp(s, "nbds+unix://", 12) == 0 ||
	       strncmp(s, "nbd+vsock://", 12) == 0;
}

/* The identity a working set of this snapshot is recorded for: the CRC of
 * the memory's first 64 KiB, whether or not checksums are given (a working set
 * recorded without them replays with them): it tells snapshots apart. A
 * rewrite beyond those bytes it does not see; then a stale order costs only
 * speed, and a packed working set's bytes are checked page by page when there
 * are checksums. */
static int ws_identity(struct fc_snap *s, char *why, size_t whylen)
{
	uint64_t size = source_size(s->src), len = size < 65536 ? size : 65536;
	unsigned char *buf;
	int r;

	s->ws_id.mem_size = size;
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	r = source_read(s->src, buf, 0, len);
	if (r < 0)
		snprintf(why, whylen, "reading the first %llu bytes: %s", (unsigned long long)len,
		         strerror(-r));
	else
		s->ws_id.tag = crc32c(0, buf, len);
	free(buf);
	return r;
}

/* The source stack of a snapshot: file or NBD, then the test latency, then
 * the checks (s->csum, once opened). */
static int open_source(struct fc_handler *h, struct fc_snap *s, struct source **out, char *why,
                       size_t whylen)
{
	const struct fc_snapshot_config *sc = s->cfg;
	struct source *src, *wrapped;
	int r;

	if (is_nbd_uri(sc->source))
		r = source_nbd_open(sc->source, h->cfg.source_timeout_ns, &src, why, whylen);
	else
		r = source_file_open(sc->source, h->cfg.io_uring ? SOURCE_FILE_IO_URING : 0, &src,
		                     why, whylen);
	if (r < 0)
		return r;
	if (h->cfg.source_latency_ns) {
		if ((r = source_latency_wrap(src, h->cfg.source_latency_ns, &wrapped)) < 0)
			goto fail;
		src = wrapped;
	}
	if (s->csum) {
		if ((r = csumfile_wrap(s->csum, src, &wrapped)) < 0)
			goto fail;
		src = wrapped;
	}
	*out = src;
	return 0;
fail:
	snprintf(why, whylen, "%s", strerror(-r));
	source_destroy(src);
	return r;
}

int fc_snap_open(struct fc_handler *h, struct fc_snap *s, unsigned index)
{
	const struct fc_snapshot_config *sc = &h->cfg.snaps[index];
	char why[4200];
	struct source *wrapped;
	int r;

	*s = (struct fc_snap){.index = index, .cfg = sc, .listen_fd = -1};
	s->w_listen = (struct watch){.kind = W_LISTEN, .snap = s};
	r = open_source(h, s, &s->src, why, sizeof(why));
	if (r < 0) {
		lv_err("%s: %s: %s", sc->socket_path,
		       is_nbd_uri(sc->source) ? "NBD source" : "memory file", why);
		return r;
	}
	if (source_size(s->src) == 0 || source_size(s->src) % 4096) {
		lv_err("%s: %s is %llu bytes, not a whole number of 4 KiB pages", sc->socket_path,
		       sc->source, (unsigned long long)source_size(s->src));
		return -EINVAL;
	}
	if (sc->checksums) {
		r = csumfile_open(sc->checksums, source_size(s->src), &s->csum, why, sizeof(why));
		if (r < 0) {
			lv_err("%s: checksums: %s", sc->socket_path, why);
			return r;
		}
		if ((r = csumfile_wrap(s->csum, s->src, &wrapped)) < 0)
			return r;
		s->src = wrapped;
	}
	if ((sc->record_ws || sc->prefetch_ws) && (r = ws_identity(s, why, sizeof(why))) < 0) {
		lv_err("%s: %s: %s", sc->socket_path, sc->source, why);
		return r;
	}
	if (sc->prefetch_ws) {
		r = ws_load_packed(sc->prefetch_ws, &s->ws_id, &s->ws_pages, &s->ws_n, &s->ws_data,
		                   why, sizeof(why));
		if (r < 0)
			lv_warn("%s: working set: %s: VMs are served without it", sc->socket_path,
			        why);
		/* Bytes that are not the memory's are never installed: with
		 * checksums every page of a packed working set is checked once,
		 * here; without, the tag has said it is this memory's. */
		for (uint64_t i = 0; s->ws_data && s->csum && i < s->ws_n; i++)
			if (source_checked_verify(s->src, (char *)s->ws_data + i * 4096,
			                          s->ws_pages[i] * 4096, 4096) < 0) {
				lv_warn("%s: working set %s: page %llu's bytes fail their "
				        "checksum: its "
				        "pages are read from the memory instead",
				        sc->socket_path, sc->prefetch_ws,
				        (unsigned long long)s->ws_pages[i]);
				free(s->ws_data);
				s->ws_data = NULL;
			}
	}
	/* Read now, so that a hand-over need not wait for it. */
	if (fc_snap_fingerprint(s, &s->fingerprint) < 0)
		s->fingerprint = 0;
	return 0;
}

int fc_snap_listen(struct fc_handler *h, struct fc_snap *s, int fd)
{
	const struct fc_snapshot_config *sc = s->cfg;
	bool handed = fd >= 0;

	if (!handed && (fd = fc_bind_unix(sc->socket_path, SOCK_STREAM, 0, false)) < 0)
		return fd;
	s->listen_fd = fd;
	lv_info("listening on %s%s: %s (%llu MiB)%s%s%s%s", sc->socket_path,
	        handed ? " (the socket handed over)" : "", source_describe(s->src),
	        (unsigned long long)(source_size(s->src) >> 20),
	        s->csum ? ", every page checked" : "",
	        s->csum && s->csum->zero_pages ? ", known-zero pages served unread" : "",
	        s->ws_n ? (s->ws_data ? ", working set replayed from its file"
	                              : ", working set replayed from the memory")
	                : "",
	        sc->record_ws ? ", recording" : "");
	return fc_ep_add(h, s->listen_fd, &s->w_listen);
}

int fc_snap_vm_source(struct fc_handler *h, struct fc_snap *s, struct vm *vm)
{
	char why[4200];
	int r;

	vm->src = s->src;
	if (!is_nbd_uri(s->cfg->source))
		return 0;
	r = open_source(h, s, &vm->src, why, sizeof(why));
	if (r < 0) {
		lv_err("%s: its own connection to %s: %s", vm->name, s->cfg->source, why);
		vm->src = NULL;
	}
	return r;
}

void fc_snap_vm_source_put(struct fc_snap *s, struct vm *vm)
{
	if (vm->src && vm->src != s->src)
		source_destroy(vm->src);
	vm->src = NULL;
}

void fc_snap_close(struct fc_snap *s)
{
	if (s->listen_fd >= 0) {
		close(s->listen_fd);
		/* The path stays while someone else listens on this socket: a
		 * successor, or systemd's fd store for the next instance. */
		if (!s->keep_path)
			unlink(s->cfg->socket_path);
	}
	s->listen_fd = -1;
	source_destroy(s->src); /* before the checksums it reads */
	s->src = NULL;
	csumfile_close(s->csum);
	s->csum = NULL;
	free(s->ws_pages);
	s->ws_pages = NULL;
	free(s->ws_data);
	s->ws_data = NULL;
}

uint64_t fc_snap_mark_zero(const struct fc_snap *s, struct vm *vm)
{
	uint64_t marked = 0;

	if (!s->csum || !s->csum->zero_pages)
		return 0;
	for (size_t i = 0; i < vm->hs.nregions; i++) {
		const struct fc_region *g = &vm->hs.regions[i];
		uint64_t first = g->offset / 4096, n = g->size / 4096, run = 0;

		if (g->page_size != 4096)
			continue; /* hugetlbfs has no zero page to install */
		/* Runs of known-zero pages, one call each. */
		for (uint64_t p = 0; p <= n; p++) {
			if (p < n && csumfile_is_zero(s->csum, first + p)) {
				run++;
				continue;
			}
			if (run &&
			    engine_mark_zero(vm->eng, g->base_host_virt_addr + (p - run) * 4096,
			                     run * 4096) == 0)
				marked += run;
			run = 0;
		}
	}
	return marked;
}

/* The bytes of the pages, read from the VM's source in batches. A malloc'd
 * buffer, or NULL (logged) when they cannot be read. */
static void *read_pages(struct vm *vm, const uint64_t *pages, uint64_t n)
{
	struct source_req reqs[SOURCE_BATCH_MAX];
	char *data = malloc(n ? n * 4096 : 1), why[512];

	if (!data)
		return NULL;
	for (uint64_t i = 0; i < n; i += SOURCE_BATCH_MAX) {
		unsigned k = n - i < SOURCE_BATCH_MAX ? (unsigned)(n - i) : SOURCE_BATCH_MAX;

		for (unsigned j = 0; j < k; j++)
			reqs[j] = (struct source_req){
			    .buf = data + (i + j) * 4096, .off = pages[i + j] * 4096, .len = 4096};
		int r = source_read_batch(vm->src, reqs, k);
		if (r < 0) {
			lv_warn("%s: reading the working set's pages: %s", vm->name,
			        source_strerror(vm->src, r, why, sizeof(why)));
			free(data);
			return NULL;
		}
	}
	return data;
}

void fc_snap_save_ws(struct fc_snap *s, struct vm *vm)
{
	uint64_t *pages = NULL, n;
	void *data;
	char why[4200];

	if (!vm->recording || !vm->eng)
		return;
	vm->recording = false;
	n = engine_record_get(vm->eng, &pages);
	/* Packed, as REAP keeps it: a replay is then one read of this file. */
	data = read_pages(vm, pages, n);
	if (ws_save(s->cfg->record_ws, &s->ws_id, pages, n, data, why, sizeof(why)) < 0)
		lv_warn("%s: cannot write the working set: %s", vm->name, why);
	else
		lv_info("%s: working set of %llu pages (%llu MiB%s) written to %s", vm->name,
		        (unsigned long long)n, (unsigned long long)(n >> 8),
		        data ? ", with their bytes" : ", pages only", s->cfg->record_ws);
	free(data);
	free(pages);
}
