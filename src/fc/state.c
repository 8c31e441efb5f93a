/* fc-handler's state description: every VM it serves and every listening
 * socket, as one JSON value, with the fds named in it. What a successor
 * (takeover.c) or the next instance under systemd (fdstore.c) needs to serve
 * on exactly where this handler stopped:
 *
 *   {"lazyvm_state":1, "exact":true, "pid":N, "next_id":N, "served":N,
 *    "rejected":N, "failed":N, "retired":{counters},
 *    "snapshots":[{"socket":P, "size":N, "fingerprint":N, "listen":"listen-0",
 *                  "served":N, "recorded":B}],
 *    "vms":[{"id":N, "pid":N, "snapshot":P, "serving":B, "uffd":"vm3-uffd",
 *            "conn":"vm3-conn"|null, "pidfd":"vm3-pidfd"|null, "race_free":B,
 *            "proven":B, "proof":S, "has":N, "probe":N,
 *            "regions":[[base, size, offset, page_size], ...],
 *            "pages":"p10r100m2f0", "buffered":HEX, "requests":N,
 *            "requests_bad":N}]}
 *
 * "pages" is the page map of the VM's engine, run-length encoded, region by
 * region: a letter (m missing, p present, r removed) and a count in hex a run.
 * "exact" says the engines were stopped when it was written; a description
 * written while they ran (fdstore.c's each second) may lag behind. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "fc_json.h"
#include "handler_internal.h"
#include "lazyvm/crc32c.h"
#include "lazyvm/log.h"
#include "lazyvm/pagemap.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"

/* Beyond any real description (1024 regions a VM, --max-vms 100000 VMs of
 * fragmented maps would not reach it); a bound on what is read back. */
#define STATE_MAX_BYTES (1ull << 30)

int fc_fdset_add(struct fc_fdset *s, const char *name, int fd)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		char(*names)[FC_FD_NAME_MAX] = realloc(s->names, cap * sizeof(*names));
		int *fds;

		if (!names)
			return -ENOMEM;
		s->names = names;
		fds = realloc(s->fds, cap * sizeof(*fds));
		if (!fds)
			return -ENOMEM;
		s->fds = fds;
		s->cap = cap;
	}
	snprintf(s->names[s->n], FC_FD_NAME_MAX, "%s", name);
	s->fds[s->n++] = fd;
	return 0;
}

int fc_fdset_take(struct fc_fdset *s, const char *name)
{
	for (size_t i = 0; i < s->n; i++)
		if (s->fds[i] >= 0 && !strcmp(s->names[i], name)) {
			int fd = s->fds[i];

			s->fds[i] = -1;
			return fd;
		}
	return -1;
}

void fc_fdset_free(struct fc_fdset *s, bool close_rest)
{
	for (size_t i = 0; close_rest && i < s->n; i++)
		if (s->fds[i] >= 0)
			close(s->fds[i]);
	free(s->names);
	free(s->fds);
	*s = (struct fc_fdset){0};
}

static void unwatch(struct fc_handler *h, int fd)
{
	/* ENOENT for one that was not watched (an unproven VM's pidfd): fine. */
	if (fd >= 0)
		epoll_ctl(h->epfd, EPOLL_CTL_DEL, fd, NULL);
}

void fc_state_freeze(struct fc_handler *h)
{
	for (unsigned i = 0; i < h->nsnaps; i++)
		unwatch(h, h->snaps[i].listen_fd);
	for (struct vm *vm = h->vms; vm; vm = vm->next)
		if (vm->eng)
			engine_stop_begin(vm->eng);
	for (struct vm *vm = h->vms; vm; vm = vm->next) {
		unwatch(h, vm->conn.fd);
		unwatch(h, vm->pidfd);
		if (!vm->eng)
			continue;
		unwatch(h, engine_event_fd(vm->eng));
		/* Joins every thread: a fault being served is finished (its
		 * page PRESENT) or given back (MISSING), never left INFLIGHT;
		 * faults not read yet wait in the userfaultfd for the next
		 * reader. */
		engine_stop(vm->eng);
		free(vm->runs);
		vm->runs = NULL;
		if (engine_export_pages(vm->eng, &vm->runs, &vm->nruns) < 0)
			lv_err("%s: out of memory exporting its page map", vm->name);
		fc_vm_retire_engine(h, vm);
	}
	h->frozen = true;
}

/* A VM built again (here after a failed hand-over, or in a successor) goes
 * on: its engine starts, its socket and (proven) pidfd are watched. */
static void vm_go_on(struct fc_handler *h, struct vm *vm)
{
	char why[200];

	free(vm->runs);
	vm->runs = NULL;
	if (vm->conn.fd >= 0 && fc_ep_add(h, vm->conn.fd, &vm->w_conn) < 0) {
		close(vm->conn.fd);
		vm->conn.fd = -1;
	}
	if (vm->state == VM_SERVING) {
		if (fc_vm_engine_go(h, vm, why, sizeof(why)) < 0) {
			fc_vm_fail(h, vm, why);
			return;
		}
		/* Threads whose fault a killed predecessor had read, and never
		 * answered, sleep until someone wakes their range: they retry,
		 * and fault again if the page is still missing. */
		for (size_t i = 0; i < vm->hs.nregions; i++)
			engine_wake(vm->eng, vm->hs.regions[i].base_host_virt_addr,
			            vm->hs.regions[i].size);
	} else if (vm->proven && vm->pidfd >= 0 && fc_ep_add(h, vm->pidfd, &vm->w_pid) < 0) {
		close(vm->pidfd);
		vm->pidfd = -1;
	}
}

void fc_state_thaw(struct fc_handler *h, const char *why)
{
	struct vm *vm, *nx;
	unsigned n = 0;

	h->frozen = false;
	for (unsigned i = 0; i < h->nsnaps; i++)
		if (h->snaps[i].listen_fd >= 0)
			fc_ep_add(h, h->snaps[i].listen_fd, &h->snaps[i].w_listen);
	for (vm = h->vms; vm; vm = nx) {
		char err[200];

		nx = vm->next;
		n++;
		if (vm->state == VM_SERVING &&
		    fc_vm_engine_make(h, vm, vm->runs, vm->nruns, err, sizeof(err)) < 0) {
			free(vm->runs);
			vm->runs = NULL;
			fc_vm_fail(h, vm, err);
			continue;
		}
		vm_go_on(h, vm);
	}
	lv_warn("takeover: %s; serving on (%u VMs)", why, n);
}

/* --- writing the description --- */

static const char run_letter[4] = {'m', '?', 'p', 'r'};

static char *runs_text(const struct engine_page_run *runs, size_t n)
{
	char *s = malloc(n * 17 + 1), *p = s;

	if (!s)
		return NULL;
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%c%" PRIx64, run_letter[runs[i].state & 3], runs[i].pages);
	*p = '\0';
	return s;
}

/* Size and CRC-32C of the first and last 64 KiB: a successor whose memory
 * file is another one (replaced under the same name, or another option)
 * would serve wrong bytes; this catches that, not every change. */
int fc_snap_fingerprint(struct fc_snap *s, uint64_t *fp)
{
	if (s->fingerprint) {
		*fp = s->fingerprint;
		return 0;
	}

	uint64_t size = source_size(s->src), len = size < 65536 ? size : 65536;
	unsigned char *buf = malloc(len);
	uint32_t crc;
	int r;

	if (!buf)
		return -ENOMEM;
	r = source_read(s->src, buf, 0, len);
	crc = crc32c(0, buf, len);
	if (r == 0)
		r = source_read(s->src, buf, size - len, len);
	crc = crc32c(crc, buf, len);
	free(buf);
	*fp = (uint64_t)crc << 32 | (size >> 12 & 0xffffffffu);
	if (r == 0)
		s->fingerprint = *fp;
	return r;
}

static struct json_object *u64(uint64_t v)
{
	return json_object_new_uint64(v);
}

static int add_fd(struct fc_fdset *fds, struct json_object *o, const char *key, const char *name,
                  int fd)
{
	if (fd < 0) {
		json_object_object_add(o, key, NULL);
		return 0;
	}
	json_object_object_add(o, key, json_object_new_string(name));
	return fc_fdset_add(fds, name, fd);
}

static int vm_json(struct vm *vm, bool exact, struct json_object *vms, struct fc_fdset *fds)
{
	struct json_object *o = json_object_new_object(), *regs = json_object_new_array();
	struct engine_page_run *runs = vm->runs;
	size_t nruns = vm->nruns;
	char name[FC_FD_NAME_MAX], *text = NULL;
	int r = 0;

	json_object_array_add(vms, o);
	json_object_object_add(o, "id", u64(vm->id));
	json_object_object_add(o, "pid", u64((uint64_t)vm->pid));
	json_object_object_add(o, "snapshot", json_object_new_string(vm->snap->cfg->socket_path));
	json_object_object_add(o, "serving", json_object_new_boolean(vm->state == VM_SERVING));
	snprintf(name, sizeof(name), "vm%u-uffd", vm->id);
	r |= add_fd(fds, o, "uffd", name, vm->uffd);
	snprintf(name, sizeof(name), "vm%u-conn", vm->id);
	r |= add_fd(fds, o, "conn", name, vm->conn.fd);
	snprintf(name, sizeof(name), "vm%u-pidfd", vm->id);
	r |= add_fd(fds, o, "pidfd", name, vm->pidfd);
	json_object_object_add(o, "race_free", json_object_new_boolean(vm->pidfd_race_free));
	json_object_object_add(o, "proven", json_object_new_boolean(vm->proven));
	json_object_object_add(o, "proof", json_object_new_string(vm->proof));
	json_object_object_add(o, "has", u64(vm->hs.has));
	json_object_object_add(o, "probe", u64(vm->probe_addr));
	json_object_object_add(o, "requests", u64(vm->requests));
	json_object_object_add(o, "requests_bad", u64(vm->requests_bad));
	json_object_object_add(o, "regions", regs);
	for (size_t i = 0; i < vm->hs.nregions; i++) {
		const struct fc_region *g = &vm->hs.regions[i];
		struct json_object *a = json_object_new_array();

		json_object_array_add(a, u64(g->base_host_virt_addr));
		json_object_array_add(a, u64(g->size));
		json_object_array_add(a, u64(g->offset));
		json_object_array_add(a, u64(g->page_size));
		json_object_array_add(regs, a);
	}
	if (vm->conn.fd >= 0 && vm->conn.len) {
		/* A message half read (the rest comes to the successor). */
		char *hex = malloc(vm->conn.len * 2 + 1);

		if (!hex)
			return -ENOMEM;
		for (size_t i = 0; i < vm->conn.len; i++)
			sprintf(hex + 2 * i, "%02x", (unsigned char)vm->conn.buf[i]);
		json_object_object_add(o, "buffered", json_object_new_string(hex));
		free(hex);
	}
	if (vm->state != VM_SERVING)
		return r;
	if (!exact && vm->eng) {
		runs = NULL;
		if (engine_export_pages(vm->eng, &runs, &nruns) < 0)
			return -ENOMEM;
	}
	if (!runs || !(text = runs_text(runs, nruns)))
		r = -ENOMEM;
	else
		json_object_object_add(o, "pages", json_object_new_string(text));
	free(text);
	if (runs != vm->runs)
		free(runs);
	return r;
}

int fc_state_build(struct fc_handler *h, bool exact, char **json, size_t *len, struct fc_fdset *fds)
{
	struct json_object *root = json_object_new_object(), *snaps = json_object_new_array(),
	                   *vms = json_object_new_array(), *ret = json_object_new_object();
	int r = 0;

	json_object_object_add(root, "lazyvm_state", u64(FC_STATE_VERSION));
	json_object_object_add(root, "exact", json_object_new_boolean(exact));
	json_object_object_add(root, "pid", u64((uint64_t)getpid()));
	json_object_object_add(root, "next_id", u64(h->next_id));
	json_object_object_add(root, "served", u64(h->served));
	json_object_object_add(root, "rejected", u64(h->rejected));
	json_object_object_add(root, "failed", u64(h->failed));
#define RETIRED(name, doc) json_object_object_add(ret, #name, u64(h->retired.name));
	METRICS_COUNTERS(RETIRED)
#undef RETIRED
	json_object_object_add(root, "retired", ret);
	json_object_object_add(root, "snapshots", snaps);
	for (unsigned i = 0; i < h->nsnaps && r == 0; i++) {
		struct fc_snap *s = &h->snaps[i];
		struct json_object *o = json_object_new_object();
		char name[FC_FD_NAME_MAX];
		uint64_t fp = 0;

		json_object_array_add(snaps, o);
		r = fc_snap_fingerprint(s, &fp);
		if (r < 0)
			lv_err("%s: reading its memory for the description: %s",
			       s->cfg->socket_path, strerror(-r));
		json_object_object_add(o, "socket", json_object_new_string(s->cfg->socket_path));
		json_object_object_add(o, "size", u64(source_size(s->src)));
		json_object_object_add(o, "fingerprint", u64(fp));
		json_object_object_add(o, "served", u64(s->served));
		json_object_object_add(o, "recorded", json_object_new_boolean(s->recording));
		snprintf(name, sizeof(name), "listen-%u", i);
		r = r ? r : add_fd(fds, o, "listen", name, s->listen_fd);
	}
	json_object_object_add(root, "vms", vms);
	for (struct vm *vm = h->vms; vm && r == 0; vm = vm->next)
		if (vm->state != VM_PENDING)
			r = vm_json(vm, exact, vms, fds);
	if (r == 0) {
		size_t n;
		const char *s = json_object_to_json_string_length(root, JSON_C_TO_STRING_PLAIN, &n);

		*json = s ? strndup(s, n) : NULL;
		*len = n;
		if (!*json)
			r = -ENOMEM;
	}
	json_object_put(root);
	return r;
}

/* --- the memfd --- */

struct state_header {
	char magic[8]; /* "LZVMSTAT" */
	uint32_t version;
	uint32_t crc; /* CRC-32C of the JSON */
	uint64_t seq; /* fdstore.c's two memfds: the higher valid one wins */
	uint64_t len;
};

int fc_state_write(int fd, uint64_t seq, const char *json, size_t len)
{
	struct state_header hd = {
	    .magic = "LZVMSTA", .version = FC_STATE_VERSION, .seq = seq, .len = len};
	const char *p = json;
	off_t at = sizeof(hd);

	hd.magic[7] = 'T';
	hd.crc = crc32c(0, json, len);
	/* The header last: a write cut short leaves a CRC that does not match. */
	if (ftruncate(fd, (off_t)(sizeof(hd) + len)) < 0)
		return -errno;
	for (size_t left = len; left;) {
		ssize_t n = pwrite(fd, p, left, at);

		if (n < 0)
			return -errno;
		p += n;
		at += n;
		left -= (size_t)n;
	}
	return pwrite(fd, &hd, sizeof(hd), 0) == sizeof(hd) ? 0 : -EIO;
}

int fc_state_read(int fd, uint64_t *seq, char **json, size_t *len, char *why, size_t whylen)
{
	struct state_header hd;
	char *buf;

	*json = NULL;
	if (pread(fd, &hd, sizeof(hd), 0) != sizeof(hd))
		return fc_err(why, whylen, -EINVAL, "the state description is empty or short");
	if (memcmp(hd.magic, "LZVMSTAT", 8) || hd.version != FC_STATE_VERSION)
		return fc_err(why, whylen, -EINVAL,
		              "not a lazyvm state description of version %d (magic %.8s, version "
		              "%u)",
		              FC_STATE_VERSION, hd.magic, hd.version);
	if (hd.len == 0 || hd.len > STATE_MAX_BYTES)
		return fc_err(why, whylen, -EINVAL,
		              "the state description claims %" PRIu64 " bytes", hd.len);
	buf = malloc(hd.len + 1);
	if (!buf)
		return fc_err(why, whylen, -ENOMEM, "out of memory for a %" PRIu64 "-byte state",
		              hd.len);
	if (pread(fd, buf, hd.len, sizeof(hd)) != (ssize_t)hd.len ||
	    crc32c(0, buf, hd.len) != hd.crc) {
		free(buf);
		return fc_err(why, whylen, -EINVAL,
		              "the state description is damaged (%" PRIu64
		              " bytes, CRC mismatch or short): written when its writer died?",
		              hd.len);
	}
	buf[hd.len] = '\0';
	*json = buf;
	*len = hd.len;
	*seq = hd.seq;
	return 0;
}

void fc_state_discard(struct fc_handler *h)
{
	/* The fds are this process's references; the sender keeps its own. */
	while (h->vms)
		fc_vm_free(h, h->vms);
	for (unsigned i = 0; i < h->nsnaps; i++)
		if (h->snaps[i].listen_fd >= 0) {
			close(h->snaps[i].listen_fd);
			h->snaps[i].listen_fd = -1;
		}
}

void fc_state_start(struct fc_handler *h)
{
	struct vm *vm, *nx;

	for (unsigned i = 0; i < h->nsnaps; i++)
		if (h->snaps[i].listen_fd >= 0)
			fc_snap_listen(h, &h->snaps[i], h->snaps[i].listen_fd);
	for (vm = h->vms; vm; vm = nx) {
		nx = vm->next;
		lv_info("%s: taken over: %s, %zu region(s), snapshot %s; %s", vm->name,
		        vm->state == VM_SERVING ? "serving" : "unserved (kept so it hangs)",
		        vm->hs.nregions, vm->snap->cfg->socket_path,
		        vm->proven ? "proven to be the VM" : "not identified");
		vm_go_on(h, vm);
	}
}
