/* Reading fc-handler's state description (its format: state.c) and building
 * the VMs it describes again: in a successor (takeover.c) or the next
 * instance under systemd (fdstore.c). Everything in it is checked against
 * this handler's configuration before anything is kept. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fc_json.h"
#include "handler_internal.h"
#include "lazyvm/pagemap.h"
#include "lazyvm/source.h"
#include "lazyvm/uffd.h"

static int get(struct json_object *o, const char *key, enum json_type t, struct json_object **v,
               const char *where, char *why, size_t whylen)
{
	if (!json_object_object_get_ex(o, key, v) || json_object_get_type(*v) != t)
		return fc_err(why, whylen, -EINVAL, "%s: \"%s\" missing or of the wrong type",
		              where, key);
	return 0;
}

static int get_u64(struct json_object *o, const char *key, uint64_t *out, const char *where,
                   char *why, size_t whylen)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v))
		return fc_err(why, whylen, -EINVAL, "%s: \"%s\" missing", where, key);
	return fc_json_u64(v, key, where, out, why, whylen);
}

static bool get_bool(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

/* An fd named by field `key` (null or absent: none). -1 none, -2 named but
 * not there. */
static int take_fd(struct json_object *o, const char *key, struct fc_fdset *fds)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || json_object_get_type(v) != json_type_string)
		return -1;
	int fd = fc_fdset_take(fds, json_object_get_string(v));
	return fd >= 0 ? fd : -2;
}

static int parse_runs(const char *text, struct engine_page_run **out, size_t *n)
{
	size_t cap = 64;
	struct engine_page_run *runs = malloc(cap * sizeof(*runs));

	*n = 0;
	if (!runs)
		return -ENOMEM;
	while (*text) {
		const char *l = strchr("mpr", *text);
		char *end;

		if (!l || !*l || !isxdigit((unsigned char)text[1])) {
			free(runs);
			return -EINVAL;
		}
		if (*n == cap) {
			struct engine_page_run *p = realloc(runs, 2 * cap * sizeof(*runs));
			if (!p) {
				free(runs);
				return -ENOMEM;
			}
			runs = p;
			cap *= 2;
		}
		runs[*n].state = (uint8_t)(*l == 'm'   ? PAGE_MISSING
		                           : *l == 'p' ? PAGE_PRESENT
		                                       : PAGE_REMOVED);
		runs[(*n)++].pages = strtoull(text + 1, &end, 16);
		text = end;
	}
	*out = runs;
	return 0;
}

static struct fc_snap *snap_by_path(struct fc_handler *h, const char *path)
{
	for (unsigned i = 0; i < h->nsnaps; i++)
		if (!strcmp(h->snaps[i].cfg->socket_path, path))
			return &h->snaps[i];
	return NULL;
}

static int apply_snapshot(struct fc_handler *h, struct json_object *o, struct fc_fdset *fds,
                          char *why, size_t whylen)
{
	struct json_object *v;
	struct fc_snap *s;
	uint64_t size, fp, mine = 0, served;
	int r;

	if ((r = get(o, "socket", json_type_string, &v, "a snapshot", why, whylen)) < 0)
		return r;
	const char *path = json_object_get_string(v);
	if (!(s = snap_by_path(h, path)))
		return fc_err(
		    why, whylen, -ENOENT,
		    "the old handler serves the snapshot on %s, which this handler is not "
		    "configured for (give it the same --socket/--snapshot options)",
		    path);
	if ((r = get_u64(o, "size", &size, path, why, whylen)) < 0 ||
	    (r = get_u64(o, "fingerprint", &fp, path, why, whylen)) < 0 ||
	    (r = get_u64(o, "served", &served, path, why, whylen)) < 0)
		return r;
	if (size != source_size(s->src))
		return fc_err(why, whylen, -EINVAL,
		              "%s: the old handler's memory is %" PRIu64
		              " bytes, this one's (%s) %" PRIu64,
		              path, size, source_describe(s->src), source_size(s->src));
	if ((r = fc_snap_fingerprint(s, &mine)) < 0)
		return fc_err(why, whylen, r, "%s: reading %s: %s", path, source_describe(s->src),
		              strerror(-r));
	if (mine != fp)
		return fc_err(why, whylen, -EINVAL,
		              "%s: %s is not the memory the old handler serves (its first and last "
		              "64 KiB differ)",
		              path, source_describe(s->src));
	if (s->listen_fd >= 0)
		return fc_err(why, whylen, -EINVAL, "%s is described twice", path);
	s->listen_fd = take_fd(o, "listen", fds);
	if (s->listen_fd == -2)
		return fc_err(why, whylen, -EINVAL, "%s: its listening socket did not come", path);
	s->served = served;
	s->recording |= get_bool(o, "recorded");
	return 0;
}

/* A VM, built again and linked into h->vms (freed with it on failure). */
static int apply_vm(struct fc_handler *h, struct json_object *o, struct fc_fdset *fds, bool exact,
                    char *why, size_t whylen)
{
	struct json_object *v, *regs;
	struct vm *vm;
	uint64_t id, pid, has;
	char where[32];
	int r;

	if ((r = get_u64(o, "id", &id, "a VM", why, whylen)) < 0)
		return r;
	snprintf(where, sizeof(where), "VM %" PRIu64, id);
	if ((r = get_u64(o, "pid", &pid, where, why, whylen)) < 0 ||
	    (r = get_u64(o, "has", &has, where, why, whylen)) < 0 ||
	    (r = get(o, "snapshot", json_type_string, &v, where, why, whylen)) < 0)
		return r;
	vm = calloc(1, sizeof(*vm));
	if (!vm)
		return fc_err(why, whylen, -ENOMEM, "out of memory");
	vm->id = (unsigned)id;
	vm->pid = (pid_t)pid;
	vm->pidfd = vm->uffd = vm->conn.fd = -1;
	vm->w_conn = (struct watch){.kind = W_CONN, .vm = vm};
	vm->w_pid = (struct watch){.kind = W_PIDFD, .vm = vm};
	vm->w_eng = (struct watch){.kind = W_ENGINE, .vm = vm};
	vm->state = get_bool(o, "serving") ? VM_SERVING : VM_UNSERVED;
	snprintf(vm->name, sizeof(vm->name), "vm %u (pid %d)", vm->id, (int)vm->pid);
	vm->next = h->vms;
	h->vms = vm;
	if (vm->state == VM_UNSERVED)
		h->nunserved++;
	if (h->next_id < vm->id)
		h->next_id = vm->id;
	if (!(vm->snap = snap_by_path(h, json_object_get_string(v))))
		return fc_err(why, whylen, -EINVAL, "%s: of snapshot %s, which is not described",
		              where, json_object_get_string(v));
	vm->uffd = take_fd(o, "uffd", fds);
	vm->conn.fd = take_fd(o, "conn", fds);
	vm->pidfd = take_fd(o, "pidfd", fds);
	if (vm->uffd < 0 || vm->conn.fd == -2 || vm->pidfd == -2)
		return fc_err(why, whylen, -EINVAL, "%s: a file descriptor did not come", where);
	if (uffd_fd_check(vm->uffd) != 1)
		return fc_err(why, whylen, -EINVAL, "%s: its \"uffd\" is not a userfaultfd", where);
	vm->pidfd_race_free = get_bool(o, "race_free");
	vm->proven = get_bool(o, "proven");
	snprintf(vm->proof, sizeof(vm->proof), "%s",
	         json_object_object_get_ex(o, "proof", &v) ? json_object_get_string(v) : "");
	if ((r = get_u64(o, "probe", &vm->probe_addr, where, why, whylen)) < 0 ||
	    (r = get_u64(o, "requests", &vm->requests, where, why, whylen)) < 0 ||
	    (r = get_u64(o, "requests_bad", &vm->requests_bad, where, why, whylen)) < 0 ||
	    (r = get(o, "regions", json_type_array, &regs, where, why, whylen)) < 0)
		return r;
	size_t n = json_object_array_length(regs);
	if (n == 0 || n > FC_HANDSHAKE_MAX_REGIONS ||
	    !(vm->hs.regions = calloc(n, sizeof(*vm->hs.regions))))
		return fc_err(why, whylen, -EINVAL, "%s: %zu regions", where, n);
	vm->hs.nregions = n;
	vm->hs.has = (unsigned)has;
	for (size_t i = 0; i < n; i++) {
		struct json_object *a = json_object_array_get_idx(regs, i);
		struct fc_region *g = &vm->hs.regions[i];
		uint64_t f[4];

		if (json_object_get_type(a) != json_type_array || json_object_array_length(a) != 4)
			return fc_err(why, whylen, -EINVAL,
			              "%s: region %zu is not [base, size, "
			              "offset, page_size]",
			              where, i);
		for (size_t k = 0; k < 4; k++)
			if ((r = fc_json_u64(json_object_array_get_idx(a, k), "region", where,
			                     &f[k], why, whylen)) < 0)
				return r;
		*g = (struct fc_region){.base_host_virt_addr = f[0],
		                        .size = f[1],
		                        .offset = f[2],
		                        .page_size = f[3],
		                        .has = (unsigned)has};
	}
	vm->conn.handed_off = true;
	if (vm->conn.fd >= 0) {
		if (!(vm->conn.buf = malloc(FC_HANDSHAKE_MAX_BYTES + 1)))
			return fc_err(why, whylen, -ENOMEM, "out of memory");
		if (json_object_object_get_ex(o, "buffered", &v)) {
			const char *hex = json_object_get_string(v);
			size_t len = strlen(hex) / 2;

			for (size_t i = 0; i < len && i < FC_HANDSHAKE_MAX_BYTES; i++)
				sscanf(hex + 2 * i, "%2hhx", (unsigned char *)&vm->conn.buf[i]);
			vm->conn.len = len < FC_HANDSHAKE_MAX_BYTES ? len : FC_HANDSHAKE_MAX_BYTES;
		}
	}
	if (vm->state != VM_SERVING)
		return 0;
	if ((r = get(o, "pages", json_type_string, &v, where, why, whylen)) < 0)
		return r;
	if (parse_runs(json_object_get_string(v), &vm->runs, &vm->nruns) < 0)
		return fc_err(why, whylen, -EINVAL, "%s: its page map is not runs of m, p or r",
		              where);
	/* Written while the engines ran: a page present then may have been
	 * removed since (the event read and lost with the writer), and a
	 * fault on a page taken for present would only be woken, again and
	 * again. Present pages are asked for again (EEXIST if they are in);
	 * removed ones stay removed. */
	for (size_t i = 0; !exact && i < vm->nruns; i++)
		if (vm->runs[i].state == PAGE_PRESENT)
			vm->runs[i].state = PAGE_MISSING;
	char err[200];
	if (fc_vm_engine_make(h, vm, vm->runs, vm->nruns, err, sizeof(err)) < 0)
		return fc_err(why, whylen, -EINVAL, "%s: %s", where, err);
	return 0;
}

int fc_state_apply(struct fc_handler *h, const char *json, size_t len, struct fc_fdset *fds,
                   char *why, size_t whylen)
{
	struct json_object *root, *snaps, *vms, *ret;
	uint64_t version, v;
	int r, n = 0;

	if ((r = fc_json_parse_one(json, len, "state description", &root, why, whylen)) < 0)
		return -1;
	if (json_object_get_type(root) != json_type_object ||
	    get_u64(root, "lazyvm_state", &version, "the description", why, whylen) < 0 ||
	    version != FC_STATE_VERSION) {
		fc_err(why, whylen, -EINVAL, "not a lazyvm state description of version %d",
		       FC_STATE_VERSION);
		goto fail;
	}
	bool exact = get_bool(root, "exact");
	if (get(root, "snapshots", json_type_array, &snaps, "the description", why, whylen) < 0 ||
	    get(root, "vms", json_type_array, &vms, "the description", why, whylen) < 0)
		goto fail;
	for (size_t i = 0; i < json_object_array_length(snaps); i++)
		if (apply_snapshot(h, json_object_array_get_idx(snaps, i), fds, why, whylen) < 0)
			goto fail;
	for (size_t i = 0; i < json_object_array_length(vms); i++, n++)
		if (apply_vm(h, json_object_array_get_idx(vms, i), fds, exact, why, whylen) < 0)
			goto fail;
	if (get_u64(root, "next_id", &v, "the description", why, whylen) == 0 && v > h->next_id)
		h->next_id = (unsigned)v;
	get_u64(root, "served", &h->served, "", NULL, 0);
	get_u64(root, "rejected", &h->rejected, "", NULL, 0);
	get_u64(root, "failed", &h->failed, "", NULL, 0);
	if (json_object_object_get_ex(root, "retired", &ret)) {
#define RETIRED(name, doc)                                                                         \
	if (get_u64(ret, #name, &v, "", NULL, 0) == 0)                                             \
		atomic_store(&h->retired.name, v);
		METRICS_COUNTERS(RETIRED)
#undef RETIRED
	}
	json_object_put(root);
	return n;
fail:
	json_object_put(root);
	fc_state_discard(h);
	return -1;
}
