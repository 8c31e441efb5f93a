/* The Firecracker-playing client: see include/lazyvm/fc_client.h. What each
 * release does is from its source (docs/SNAPSHOT.md). */
#include "lazyvm/fc_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fc_internal.h"
#include "lazyvm/compat.h"
#include "lazyvm/fdio.h"
#include "lazyvm/uffd.h"

#define ALIGN_2M (2ull << 20)

static const char *const version_names[FC_VERSION_COUNT] = {
    [FC_V1_4] = "1.4",
    [FC_V1_7] = "1.7",
    [FC_V1_12] = "1.12",
    [FC_V_MAIN] = "main",
    [FC_V_SECRET_HIDING] = "secret-hiding",
};

/* The index of `name` in names[first..n), or -EINVAL. */
static int name_index(const char *const *names, int first, int n, const char *name)
{
	for (int i = first; i < n; i++)
		if (names[i] && strcmp(name, names[i]) == 0)
			return i;
	return -EINVAL;
}

static const char *const bad_names[FC_BAD_COUNT] = {
    [FC_BAD_NO_FD] = "no-fd",           [FC_BAD_TWO_FDS] = "two-fds",
    [FC_BAD_NOT_UFFD] = "not-uffd",     [FC_BAD_GARBAGE] = "garbage",
    [FC_BAD_TRUNCATED] = "truncated",   [FC_BAD_OVERSIZED] = "oversized",
    [FC_BAD_OVERLAP] = "overlap",       [FC_BAD_BEYOND_FILE] = "beyond-file",
    [FC_BAD_UNALIGNED] = "unaligned",   [FC_BAD_WRONG_TYPE] = "wrong-type",
    [FC_BAD_SILENT] = "silent",         [FC_BAD_BLOCKING] = "blocking",
    [FC_BAD_EVENT_FORK] = "event-fork",
};

const char *fc_version_name(enum fc_version v)
{
	return v < FC_VERSION_COUNT ? version_names[v] : NULL;
}

int fc_version_parse(const char *name, enum fc_version *out)
{
	int v = name_index(version_names, 0, FC_VERSION_COUNT, name);

	if (v >= 0)
		*out = (enum fc_version)v;
	return v < 0 ? v : 0;
}

const char *fc_bad_name(enum fc_bad b)
{
	return b < FC_BAD_COUNT ? bad_names[b] : NULL;
}

int fc_bad_parse(const char *name, enum fc_bad *out)
{
	int b = name_index(bad_names, 1, FC_BAD_COUNT, name);

	if (b >= 0)
		*out = (enum fc_bad)b;
	return b < 0 ? b : 0;
}

/* The userfaultfd as the release's userfaultfd crate makes it: v1.4 (0.5)
 * calls the system call with UFFD_USER_MODE_ONLY (again without it before
 * 5.11); v1.5 on (0.7+) prefer /dev/userfaultfd and use the system call only
 * when the device does not exist. Always O_CLOEXEC | O_NONBLOCK. */
static int make_uffd(struct fc_vm *vm)
{
	const int fl = O_CLOEXEC | O_NONBLOCK;
	int fd, dev;

	if (vm->cfg.version == FC_V1_4) {
		vm->uffd_how = "userfaultfd(2), user mode only";
		fd = (int)syscall(SYS_userfaultfd, fl | UFFD_USER_MODE_ONLY);
		if (fd < 0 && errno == EINVAL) {
			vm->uffd_how = "userfaultfd(2)";
			fd = (int)syscall(SYS_userfaultfd, fl);
		}
		return fd < 0 ? -errno : fd;
	}
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0 && errno == ENOENT) {
		vm->uffd_how = "userfaultfd(2)";
		fd = (int)syscall(SYS_userfaultfd, fl);
		return fd < 0 ? -errno : fd;
	}
	if (dev < 0)
		return -errno;
	vm->uffd_how = "/dev/userfaultfd";
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, fl);
	int saved = errno;
	close(dev);
	return fd < 0 ? -saved : fd;
}

/* EVENT_REMOVE always from v1.12; before, only for a snapshot with a balloon.
 * Nothing else, in any release (not even MISSING_HUGETLBFS for 2M pages). */
static uint64_t release_features(const struct fc_vm_config *cfg)
{
	return cfg->version >= FC_V1_12 || cfg->balloon ? UFFD_FEATURE_EVENT_REMOVE : 0;
}

int fc_client_open_uffd(struct fc_vm *vm, uint64_t features, char *why, size_t whylen)
{
	struct uffdio_api api = {.api = UFFD_API, .features = features};
	int fd = make_uffd(vm);

	if (fd < 0) {
		snprintf(why, whylen, "creating the userfaultfd (%s): %s", vm->uffd_how,
		         strerror(-fd));
		return fd;
	}
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int r = -errno;
		snprintf(why, whylen, "UFFDIO_API with features 0x%llx: %s",
		         (unsigned long long)features, strerror(errno));
		close(fd);
		return r;
	}
	return fd;
}

/* An anonymous private mapping as the release makes guest memory; main
 * aligns every region to 2 MiB (an over-sized PROT_NONE reservation trimmed
 * at both ends) and asks for transparent huge pages. */
static void *map_region(const struct fc_vm *vm, uint64_t size)
{
	int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;

	if (vm->page_size > 4096)
		return mmap(NULL, size, PROT_READ | PROT_WRITE, flags | MAP_HUGETLB, -1, 0);
	if (vm->cfg.version != FC_V_MAIN)
		return mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
	char *p = mmap(NULL, size + ALIGN_2M, PROT_NONE, flags, -1, 0);
	if (p == MAP_FAILED)
		return p;
	uint64_t head = (ALIGN_2M - (uint64_t)(uintptr_t)p % ALIGN_2M) % ALIGN_2M;
	if (head)
		munmap(p, head);
	munmap(p + head + size, ALIGN_2M - head);
	p += head;
	if (mprotect(p, size, PROT_READ | PROT_WRITE) < 0 || madvise(p, size, MADV_HUGEPAGE) < 0) {
		munmap(p, size);
		return MAP_FAILED;
	}
	return p;
}

int fc_vm_create(struct fc_vm *vm, const struct fc_vm_config *cfg, char *why, size_t whylen)
{
	unsigned nregions = cfg->nregions + (cfg->hotplug ? 1 : 0);
	uint64_t pages, per, off = 0;
	struct stat st;
	int r;

	*vm = (struct fc_vm){.cfg = *cfg,
	                     .uffd = -1,
	                     .mem_fd = -1,
	                     .sock = -1,
	                     .lifeline = -1,
	                     .page_size = cfg->page_size};
	if (cfg->nregions < 1 || nregions > sizeof(vm->regions) / sizeof(vm->regions[0]) ||
	    (cfg->page_size != 4096 && cfg->page_size != ALIGN_2M) ||
	    cfg->version >= FC_VERSION_COUNT) {
		snprintf(why, whylen, "1 to 15 regions (16 with hotplug) of 4 KiB or 2 MiB pages");
		return -EINVAL;
	}
	if (cfg->hotplug && (cfg->version < FC_V1_12 || cfg->page_size != 4096)) {
		snprintf(why, whylen,
		         "memory hotplug is Firecracker v1.14 and later (here: "
		         "--fc-version 1.12, main or secret-hiding), 4 KiB pages");
		return -EINVAL;
	}
	if (cfg->guest_memfd && cfg->version != FC_V_SECRET_HIDING) {
		snprintf(why, whylen, "guest_memfd is the secret-hiding branch's");
		return -EINVAL;
	}
	if ((r = vm->mem_fd = lv_open_input(cfg->mem_file, 0, &st, why, whylen)) < 0)
		goto err;
	vm->size = (uint64_t)st.st_size;
	pages = vm->size / vm->page_size;
	if (vm->size % vm->page_size || pages < nregions * (cfg->hotplug ? 4u : 1u)) {
		snprintf(why, whylen,
		         "memory file %s (%llu bytes) is not %u or more whole %llu-byte pages",
		         cfg->mem_file, (unsigned long long)vm->size, nregions * 4,
		         (unsigned long long)vm->page_size);
		r = -EINVAL;
		goto err;
	}
	vm->features = release_features(cfg);
	vm->uffd = r = fc_client_open_uffd(vm, vm->features, why, whylen);
	if (r < 0)
		goto err;
	/* Each region its own mapping, registered on its own (MISSING mode),
	 * the file offsets the running sum of the sizes. */
	per = pages / nregions;
	for (unsigned i = 0; i < nregions; i++) {
		uint64_t size =
		    (i == nregions - 1 ? pages - per * (nregions - 1) : per) * vm->page_size;
		void *p = map_region(vm, size);

		if (p == MAP_FAILED) {
			r = -errno;
			snprintf(why, whylen, "mapping region %u (%llu bytes): %s", i,
			         (unsigned long long)size, strerror(errno));
			goto err;
		}
		vm->regions[i] = (struct fc_region){.base_host_virt_addr = (uint64_t)(uintptr_t)p,
		                                    .size = size,
		                                    .offset = off,
		                                    .page_size = vm->page_size,
		                                    .gpa_start = off + (i ? 1ull << 32 : 0),
		                                    .guest_memfd = cfg->guest_memfd};
		vm->nregions++;
		off += size;
		r = uffd_register(vm->uffd, (uint64_t)(uintptr_t)p, size,
		                  UFFDIO_REGISTER_MODE_MISSING, 0, why, whylen);
		if (r < 0) {
			snprintf(why, whylen, "registering region %u: %s", i, strerror(-r));
			goto err;
		}
	}
	if (cfg->hotplug) {
		/* One slot in the middle of the hotplug area is unplugged: after the
		 * hand-off (as v1.14's restore does) it becomes PROT_NONE, splitting
		 * the registered mapping in three. */
		const struct fc_region *hp = &vm->regions[nregions - 1];
		uint64_t slot = hp->size / 4 / vm->page_size * vm->page_size;

		vm->holes[vm->nholes++] =
		    (struct fc_hole){.addr = hp->base_host_virt_addr + 2 * slot, .len = slot};
	}
	return 0;
err:
	fc_vm_destroy(vm);
	return r;
}

void fc_vm_destroy(struct fc_vm *vm)
{
	for (unsigned i = 0; i < vm->nregions; i++)
		munmap((void *)(uintptr_t)vm->regions[i].base_host_virt_addr, vm->regions[i].size);
	vm->nregions = 0;
	if (vm->sock >= 0)
		close(vm->sock);
	if (vm->uffd >= 0)
		close(vm->uffd);
	if (vm->mem_fd >= 0)
		close(vm->mem_fd);
	if (vm->lifeline >= 0)
		close(vm->lifeline); /* a waiting connecting child exits */
	if (vm->child > 0)
		waitpid(vm->child, NULL, 0);
	vm->sock = vm->uffd = vm->mem_fd = vm->lifeline = -1;
	vm->child = 0;
}
