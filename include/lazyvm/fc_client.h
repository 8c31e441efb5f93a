/* A client that plays Firecracker's part of the UFFD hand-off the way a given
 * release does it, read from that release's source (docs/SNAPSHOT.md has the
 * table): how the userfaultfd is made and which features it asks for, how
 * guest memory is mapped and registered, which fields the JSON carries, which
 * fds go with it, what happens to the socket afterwards, and (v1.14+) memory
 * hotplug's PROT_NONE slots. Used by `lazyvm fc-client`, `make demo`, the
 * integration tests and the benchmarks. It can also send deliberately broken
 * hand-offs, to test a handler's refusals. */
#ifndef LAZYVM_FC_CLIENT_H
#define LAZYVM_FC_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "lazyvm/fc_handshake.h"

/* The releases whose behaviour differs for a handler. */
enum fc_version {
	FC_V1_4,            /* v1.4: syscall (user-mode only); 3 fields; socket closed */
	FC_V1_7,            /* v1.5-v1.11: /dev/userfaultfd; + page_size_kib; socket closed */
	FC_V1_12,           /* v1.12-v1.16: EVENT_REMOVE always; + page_size; socket kept */
	FC_V_MAIN,          /* main: as v1.12, THP (MADV_HUGEPAGE, 2 MiB-aligned regions) */
	FC_V_SECRET_HIDING, /* + gpa_start, is_guest_memfd; "no_exitless_apf" after */
	FC_VERSION_COUNT
};

/* "1.4", "1.7", "1.12", "main", "secret-hiding". */
const char *fc_version_name(enum fc_version v);
int fc_version_parse(const char *name, enum fc_version *out);

enum fc_bad {
	FC_BAD_NONE,
	FC_BAD_NO_FD,       /* JSON without SCM_RIGHTS */
	FC_BAD_TWO_FDS,     /* the UFFD twice */
	FC_BAD_NOT_UFFD,    /* the memory file's fd instead of the UFFD */
	FC_BAD_GARBAGE,     /* bytes that are not JSON */
	FC_BAD_TRUNCATED,   /* half the JSON, then close */
	FC_BAD_OVERSIZED,   /* more than FC_HANDSHAKE_MAX_BYTES */
	FC_BAD_OVERLAP,     /* two regions at the same address */
	FC_BAD_BEYOND_FILE, /* a region reaching past the memory file */
	FC_BAD_UNALIGNED,   /* a base address off the page grid */
	FC_BAD_WRONG_TYPE,  /* a size sent as a string */
	FC_BAD_SILENT,      /* connect and send nothing */
	FC_BAD_BLOCKING,    /* a userfaultfd without O_NONBLOCK */
	FC_BAD_EVENT_FORK,  /* a userfaultfd with UFFD_FEATURE_EVENT_FORK */
	FC_BAD_COUNT
};

/* Names used by --bad: "no-fd", "two-fds", ... ; NULL for FC_BAD_NONE. */
const char *fc_bad_name(enum fc_bad b);
int fc_bad_parse(const char *name, enum fc_bad *out);

/* Who connects and sends the hand-off: this process (as Firecracker does), or
 * a child forked for it that then stays (a bystander that is not the VM) or
 * exits at once; the memory and the userfaultfd stay this process's. */
enum fc_connector { FC_CONNECTOR_SELF, FC_CONNECTOR_CHILD, FC_CONNECTOR_CHILD_EXIT };

struct fc_vm_config {
	const char *mem_file;
	unsigned nregions;  /* guest memory regions, 1 to 15 (+1 with hotplug) */
	uint64_t page_size; /* 4096 or 2 MiB (hugetlbfs) */
	enum fc_version version;
	bool balloon;           /* the snapshot has a balloon device: before v1.12 the
	                         * only case EVENT_REMOVE is asked for */
	bool hotplug;           /* v1.14+: one more region, the hotplug area, whose
	                         * third quarter is an unplugged slot (PROT_NONE after
	                         * the hand-off) */
	bool guest_memfd;       /* secret-hiding: is_guest_memfd and three fds (the
	                         * second and third are memfd stand-ins) */
	bool unknown_fields;    /* add fields no release sends, as a newer one might */
	unsigned exitless_apf;  /* secret-hiding: "exitless_apf:N" with 3N eventfds
	                         * (N vCPUs) instead of "no_exitless_apf" */
	unsigned touch_percent; /* the guest uses this share of its memory, the same
	                         * pages every run (0 or 100: all) */
	bool remove_first;      /* the balloon takes its quarters back before the
	                         * touches (MADV_DONTNEED), which then find zeros
	                         * there: the removes come early in the VM's life */
};

struct fc_hole {
	uint64_t addr, len;
};

struct fc_vm {
	struct fc_vm_config cfg;
	struct fc_region regions[16];
	unsigned nregions;
	struct fc_hole holes[2]; /* PROT_NONE after the hand-off (hotplug) */
	unsigned nholes;
	int uffd;
	const char *uffd_how; /* "/dev/userfaultfd" or "userfaultfd(2)" */
	uint64_t features;    /* asked for with UFFDIO_API */
	int mem_fd;           /* the memory file, for verification */
	uint64_t size;        /* bytes of guest memory = the memory file's size */
	uint64_t page_size;
	int sock;                    /* connection to the handler, -1 when closed */
	enum fc_connector connector; /* set before fc_vm_handoff; SELF by default */
	pid_t child;                 /* the connecting child, 0 for none */
	int lifeline;                /* its end of a pipe: the child exits on EOF */
};

/* Maps the regions covering the whole memory file, makes and registers the
 * userfaultfd as cfg->version does. Returns 0 or -errno with `why`. */
int fc_vm_create(struct fc_vm *vm, const struct fc_vm_config *cfg, char *why, size_t whylen);

/* Connects to `socket_path` and sends the hand-off (or the broken one `bad`)
 * from vm->connector, then does what the release does after it (closes the
 * socket, keeps it, sends secret-hiding's second message, protects unplugged
 * slots). A refused hand-off's socket stays open for fc_vm_read_reply.
 * Returns 0 or -errno. */
int fc_vm_handoff(struct fc_vm *vm, const char *socket_path, enum fc_bad bad, char *why,
                  size_t whylen);

/* secret-hiding's older protocol: asks for the page at memory file offset
 * `offset` with a JSON fault request ({"vcpu":0,...,"token":42}) and waits up
 * to timeout_ms for the JSON reply, into buf. Returns its length or -errno. */
int fc_vm_fault_request(struct fc_vm *vm, uint64_t offset, char *buf, size_t len, int timeout_ms);

/* Is the page at memory file offset `offset` resident in the VM (mincore)? */
bool fc_vm_page_resident(const struct fc_vm *vm, uint64_t offset);

/* Waits until every page is resident (the handler installed it: --populate
 * all), without touching one. 0, or -ETIMEDOUT after timeout_ns. */
int fc_vm_wait_resident(struct fc_vm *vm, uint64_t timeout_ns, double *waited_s);

/* Waits up to timeout_ms for the handler's reply line (sent on refusal) into
 * buf. Returns its length, 0 on EOF / timeout without a reply, or -errno. */
int fc_vm_read_reply(struct fc_vm *vm, char *buf, size_t len, int timeout_ms);

struct fc_touch_result {
	uint64_t touches;    /* page touches over all threads */
	uint64_t mismatches; /* pages whose bytes differ from the memory file */
	uint64_t nonzero;    /* removed pages that did not read as zeros */
	uint64_t removed_pages;
	uint64_t hole_pages;    /* left alone: PROT_NONE */
	const char *remove_how; /* how the balloon removed, or why it did not */
	double touch_s;         /* wall time of the touch phase */
	/* Each page's first access (the fault's wait, when it faults): p50,
	 * p99 and max over all touching threads. */
	uint64_t touch_p50_ns, touch_p99_ns, touch_max_ns;
};

/* `threads` threads each touch every accessible page in their own random
 * order and compare it with the memory file; then, with check_remove, the
 * balloon takes back the second quarter of every region as the release's
 * balloon does (MADV_DONTNEED, or before v1.11 a fresh mapping over it) and
 * that quarter must read zeros while the rest still matches. With
 * cfg.remove_first it does so before the touches (MADV_DONTNEED only), and
 * the touches find zeros there. */
int fc_vm_touch_verify(struct fc_vm *vm, unsigned threads, unsigned seed, bool check_remove,
                       struct fc_touch_result *res);

/* Clears O_NONBLOCK on the userfaultfd, whose file description the handler
 * shares (a hostile peer). 0 or -errno. */
int fc_vm_clear_nonblock(struct fc_vm *vm);

void fc_vm_destroy(struct fc_vm *vm);

#endif
