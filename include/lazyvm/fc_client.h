/* A client that plays Firecracker's part of the UFFD hand-off, exactly as
 * released Firecracker does it: guest memory as anonymous MAP_PRIVATE regions
 * (MAP_HUGETLB for 2 MiB pages), one non-blocking userfaultfd with
 * UFFD_FEATURE_EVENT_REMOVE, every region registered in MISSING mode, one
 * message of JSON plus the UFFD as SCM_RIGHTS. Used by `lazyvm fc-client`,
 * `make demo`, the integration tests and the benchmarks. It can also send
 * deliberately broken hand-offs, to test a handler's refusals. */
#ifndef LAZYVM_FC_CLIENT_H
#define LAZYVM_FC_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "lazyvm/fc_handshake.h"

enum fc_bad {
	FC_BAD_NONE,
	FC_BAD_NO_FD,         /* JSON without SCM_RIGHTS */
	FC_BAD_TWO_FDS,       /* the UFFD twice */
	FC_BAD_NOT_UFFD,      /* the memory file's fd instead of the UFFD */
	FC_BAD_GARBAGE,       /* bytes that are not JSON */
	FC_BAD_TRUNCATED,     /* half the JSON, then close */
	FC_BAD_OVERSIZED,     /* more than FC_HANDSHAKE_MAX_BYTES */
	FC_BAD_OVERLAP,       /* two regions at the same address */
	FC_BAD_BEYOND_FILE,   /* a region reaching past the memory file */
	FC_BAD_UNALIGNED,     /* a base address off the page grid */
	FC_BAD_UNKNOWN_FIELD, /* an extra field in a region */
	FC_BAD_SILENT,        /* connect and send nothing */
	FC_BAD_BLOCKING,      /* a userfaultfd without O_NONBLOCK */
	FC_BAD_EVENT_FORK,    /* a userfaultfd with UFFD_FEATURE_EVENT_FORK */
	FC_BAD_COUNT
};

/* Names used by --bad: "no-fd", "two-fds", ... ; NULL for FC_BAD_NONE. */
const char *fc_bad_name(enum fc_bad b);
int fc_bad_parse(const char *name, enum fc_bad *out);

enum fc_fields { FC_FIELDS_BOTH, FC_FIELDS_PAGE_SIZE, FC_FIELDS_KIB };

/* Who connects and sends the hand-off: this process (as Firecracker does), or
 * a child forked for it that then stays (a bystander that is not the VM) or
 * exits at once; the memory and the userfaultfd stay this process's. */
enum fc_connector { FC_CONNECTOR_SELF, FC_CONNECTOR_CHILD, FC_CONNECTOR_CHILD_EXIT };

struct fc_vm {
	struct fc_region regions[16];
	unsigned nregions;
	int uffd;
	int mem_fd;    /* the memory file, for verification */
	uint64_t size; /* bytes of guest memory = the memory file's size */
	uint64_t page_size;
	int sock;                    /* connection to the handler, -1 before the hand-off */
	enum fc_connector connector; /* set before fc_vm_handoff; SELF by default */
	pid_t child;                 /* the connecting child, 0 for none */
	int lifeline;                /* its end of a pipe: the child exits on EOF */
};

/* Maps `nregions` regions covering the whole memory file (page_size 4096 or
 * 2 MiB), opens and registers the UFFD. Returns 0 or -errno with `why`. */
int fc_vm_create(struct fc_vm *vm, const char *mem_file, unsigned nregions, uint64_t page_size,
                 char *why, size_t whylen);

/* Connects to `socket_path` and sends the hand-off (or the broken one `bad`),
 * with the page size in the fields `fields` names, from vm->connector.
 * Returns 0 or -errno. */
int fc_vm_handoff(struct fc_vm *vm, const char *socket_path, enum fc_bad bad, enum fc_fields fields,
                  char *why, size_t whylen);

/* Waits up to timeout_ms for the handler's reply line (sent on refusal) into
 * buf. Returns its length, 0 on EOF / timeout without a reply, or -errno. */
int fc_vm_read_reply(struct fc_vm *vm, char *buf, size_t len, int timeout_ms);

struct fc_touch_result {
	uint64_t touches;    /* page touches over all threads */
	uint64_t mismatches; /* pages whose bytes differ from the memory file */
	uint64_t nonzero;    /* removed pages that did not read as zeros */
	uint64_t removed_pages;
	double touch_s; /* wall time of the touch phase */
};

/* `threads` threads each touch every page in their own random order and
 * compare it with the memory file; then, with check_remove, MADV_DONTNEED the
 * second quarter of every region and check that it reads zeros while the rest
 * still matches. */
int fc_vm_touch_verify(struct fc_vm *vm, unsigned threads, unsigned seed, bool check_remove,
                       struct fc_touch_result *res);

/* Clears O_NONBLOCK on the userfaultfd, whose file description the handler
 * shares (a hostile peer). 0 or -errno. */
int fc_vm_clear_nonblock(struct fc_vm *vm);

void fc_vm_destroy(struct fc_vm *vm);

#endif
