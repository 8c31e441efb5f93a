/* Writing a snapshot of a paused VM, and reading/validating a state file. */
#include "snapshot.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lazyvm/crc32c.h"
#include "lazyvm/fdio.h"
#include "lazyvm/source.h"
#include "apf.h"
#include "devices.h"
#include "vcpu.h"
#include "vmm.h"

static bool reserve(struct snap_writer *w, size_t need)
{
	if (w->error)
		return false;
	if (w->len + need > w->cap) {
		size_t cap = w->cap ? w->cap : 65536;
		while (cap < w->len + need)
			cap *= 2;
		uint8_t *p = realloc(w->buf, cap);
		if (!p) {
			w->error = -ENOMEM;
			return false;
		}
		w->buf = p;
		w->cap = cap;
	}
	return true;
}

void snap_put(struct snap_writer *w, uint32_t type, uint32_t index, const void *data, uint64_t len)
{
	struct snap_section s = {.type = type, .index = index, .len = len};
	size_t padded = (size_t)((len + 7) & ~7ull);

	if (!reserve(w, sizeof(s) + padded))
		return;
	memcpy(w->buf + w->len, &s, sizeof(s));
	if (len)
		memcpy(w->buf + w->len + sizeof(s), data, len);
	memset(w->buf + w->len + sizeof(s) + len, 0, padded - len);
	w->len += sizeof(s) + padded;
}

/* Seals the file: the trailer's CRC covers every byte before it. */
static void snap_seal(struct snap_writer *w)
{
	struct snap_trailer t = {.magic = SNAP_TRAILER_MAGIC};

	if (!reserve(w, sizeof(t)))
		return;
	t.crc = crc32c(0, w->buf, w->len);
	memcpy(w->buf + w->len, &t, sizeof(t));
	w->len += sizeof(t);
}

int snap_reader_init(struct snap_reader *r, const uint8_t *buf, size_t len, char *why,
                     size_t whylen)
{
	struct snap_trailer t;

	memset(r, 0, sizeof(*r));
	if (len < sizeof(r->hdr) + sizeof(t)) {
		snprintf(why, whylen, "state file is %zu bytes, too short to be a snapshot", len);
		return -EINVAL;
	}
	memcpy(&r->hdr, buf, sizeof(r->hdr));
	if (memcmp(r->hdr.magic, SNAP_MAGIC, 8) != 0) {
		snprintf(why, whylen, "state file is not a lazyvm snapshot (bad magic)");
		return -EINVAL;
	}
	/* Before the trailer: a newer format may seal itself differently. */
	if (r->hdr.format_version != SNAP_FORMAT_VERSION) {
		uint32_t v = r->hdr.format_version;

		snprintf(why, whylen, "snapshot format %u, %s; this lazyvm reads format %u%s", v,
		         v == 0                    ? "which no lazyvm writes"
		         : v < SNAP_FORMAT_VERSION ? "written by an older lazyvm"
		                                   : "written by a newer lazyvm",
		         SNAP_FORMAT_VERSION,
		         v && v < SNAP_FORMAT_VERSION ? ": take the snapshot again" : "");
		return -EINVAL;
	}
	memcpy(&t, buf + len - sizeof(t), sizeof(t));
	if (t.magic != SNAP_TRAILER_MAGIC) {
		snprintf(why, whylen, "state file is truncated or damaged (no trailer)");
		return -EINVAL;
	}
	uint32_t crc = crc32c(0, buf, len - sizeof(t));
	if (crc != t.crc) {
		snprintf(why, whylen, "state file is corrupt: CRC-32C 0x%08x, trailer says 0x%08x",
		         crc, t.crc);
		return -EINVAL;
	}
	if (r->hdr.guest_abi_version != GUEST_ABI_VERSION) {
		snprintf(why, whylen,
		         "snapshot of guest ABI version %u; this lazyvm speaks version %u",
		         r->hdr.guest_abi_version, GUEST_ABI_VERSION);
		return -EINVAL;
	}
	r->buf = buf;
	r->len = len - sizeof(t);
	/* The sections must tile the rest exactly. */
	for (size_t off = sizeof(r->hdr); off < r->len;) {
		struct snap_section s;

		if (r->len - off < sizeof(s)) {
			snprintf(why, whylen, "state file: partial section header at byte %zu",
			         off);
			return -EINVAL;
		}
		memcpy(&s, buf + off, sizeof(s));
		if (s.len > r->len - off - sizeof(s) ||
		    ((s.len + 7) & ~7ull) > r->len - off - sizeof(s)) {
			snprintf(why, whylen,
			         "state file: section %u at byte %zu claims %llu bytes", s.type,
			         off, (unsigned long long)s.len);
			return -EINVAL;
		}
		off += sizeof(s) + ((s.len + 7) & ~7ull);
	}
	return 0;
}

const void *snap_find(const struct snap_reader *r, uint32_t type, uint32_t index, uint64_t *len)
{
	for (size_t off = sizeof(r->hdr); off < r->len;) {
		struct snap_section s;

		memcpy(&s, r->buf + off, sizeof(s));
		if (s.type == type && s.index == index) {
			*len = s.len;
			return r->buf + off + sizeof(s);
		}
		off += sizeof(s) + ((s.len + 7) & ~7ull);
	}
	*len = 0;
	return NULL;
}

const void *snap_next(const struct snap_reader *r, size_t *off, struct snap_section *s)
{
	if (*off < sizeof(r->hdr))
		*off = sizeof(r->hdr);
	if (*off >= r->len)
		return NULL;
	/* snap_reader_init checked that the sections tile the file */
	memcpy(s, r->buf + *off, sizeof(*s));
	*off += sizeof(*s) + ((s->len + 7) & ~7ull);
	return r->buf + *off - ((s->len + 7) & ~7ull);
}

/* Creates `path` from n buffers, fsynced. 0 or -errno with why filled. */
static int write_parts(const char *path, const struct iovec *parts, unsigned n, char *why,
                       size_t whylen)
{
	int fd = lv_open_output(path, 0600, why, whylen); /* never blocks on a FIFO */
	int r = 0;

	if (fd < 0)
		return fd;
	for (unsigned i = 0; i < n && !r; i++)
		r = lv_write_all(fd, parts[i].iov_base, parts[i].iov_len);
	if (!r && fsync(fd) < 0)
		r = -errno;
	if (r)
		snprintf(why, whylen, "writing %s: %s", path, strerror(-r));
	close(fd);
	return r;
}

int snap_write_file(const char *path, const void *buf, size_t len, char *why, size_t whylen)
{
	struct iovec part = {.iov_base = (void *)buf, .iov_len = len};

	return write_parts(path, &part, 1, why, whylen);
}

/* Pages of anonymous guest RAM that were never touched (or were dropped)
 * are neither present nor swapped: they read as zeros without looking.
 * /proc/self/pagemap says so for 8 bytes a page, so a sparse 2 GiB guest is
 * classified by reading 4 MiB instead of 2 GiB. Fills absent[] (a bit a page
 * of the slot); false when pagemap cannot be read (then every page is looked at). */
#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
static bool untouched_pages(const struct mem_slot *s, uint64_t *absent)
{
	uint64_t n = s->size / SNAP_PAGE_SIZE, buf[4096];
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	bool ok = fd >= 0;

	for (uint64_t i = 0; ok && i < n;) {
		uint64_t want = n - i < 4096 ? n - i : 4096;
		off_t at = (off_t)(((uintptr_t)s->host / SNAP_PAGE_SIZE + i) * sizeof(uint64_t));
		ssize_t got = pread(fd, buf, want * sizeof(uint64_t), at);

		if (got <= 0 || got % sizeof(uint64_t)) {
			ok = false;
			break;
		}
		for (uint64_t k = 0; k < (uint64_t)got / sizeof(uint64_t); k++, i++)
			if (!(buf[k] & (PM_PRESENT | PM_SWAPPED)))
				absent[i / 64] |= 1ull << (i % 64);
	}
	if (fd >= 0)
		close(fd);
	return ok;
}

/* Checksums every page of guest RAM into crcs[] and sets bit i of zero[] for
 * every page that is all zeros (its CRC is then known without computing it).
 * Returns the number of zero pages. */
static uint64_t checksum_memory(struct vm *vm, uint32_t *crcs, uint64_t *zero)
{
	uint64_t nzero = 0;

	static const uint8_t zpage[SNAP_PAGE_SIZE];
	uint32_t zcrc = crc32c(0, zpage, SNAP_PAGE_SIZE);

	for (unsigned i = 0; i < vm->mem.nslots; i++) {
		const struct mem_slot *s = &vm->mem.slots[i];
		uint64_t *absent = NULL;

		if (!vm->mem.file_mapped) {
			absent = calloc((s->size / SNAP_PAGE_SIZE + 63) / 64, sizeof(*absent));
			if (absent && !untouched_pages(s, absent)) {
				free(absent);
				absent = NULL;
			}
		}
		for (uint64_t off = 0; off < s->size; off += SNAP_PAGE_SIZE) {
			uint64_t pg = (s->file_off + off) / SNAP_PAGE_SIZE,
			         k = off / SNAP_PAGE_SIZE;
			const uint8_t *p = s->host + off;

			if ((absent && (absent[k / 64] >> (k % 64) & 1)) ||
			    (p[0] == 0 && !memcmp(p, p + 1, SNAP_PAGE_SIZE - 1))) {
				zero[pg / 64] |= 1ull << (pg % 64);
				crcs[pg] = zcrc;
				nzero++;
			} else {
				crcs[pg] = crc32c(0, p, SNAP_PAGE_SIZE);
			}
		}
		free(absent);
	}
	return nzero;
}

void snapshot_image_free(struct snap_image *img)
{
	free(img->w.buf);
	free(img->crcs);
	free(img->zero);
	memset(img, 0, sizeof(*img));
}

int snapshot_build(struct vm *vm, struct snap_image *img, char *why, size_t whylen)
{
	uint64_t npages = vm->mem.size / SNAP_PAGE_SIZE;
	struct snap_writer *w = &img->w;
	struct snap_header hdr = {.format_version = SNAP_FORMAT_VERSION,
	                          .guest_abi_version = GUEST_ABI_VERSION,
	                          .mem_size = vm->mem.size,
	                          .nr_vcpus = vm->nvcpus,
	                          .nr_regions = vm->mem.nslots,
	                          .page_size = SNAP_PAGE_SIZE};
	int r;

	memcpy(hdr.magic, SNAP_MAGIC, 8);
	memset(img, 0, sizeof(*img));
	img->npages = npages;
	w->buf = malloc(w->cap = 1 << 20);
	img->crcs = malloc(npages * sizeof(*img->crcs));
	img->zero = calloc((npages + 63) / 64, sizeof(*img->zero));
	if (!w->buf || !img->crcs || !img->zero) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	memcpy(w->buf, &hdr, sizeof(hdr));
	w->len = sizeof(hdr);
	for (unsigned i = 0; i < vm->mem.nslots; i++) {
		const struct mem_slot *s = &vm->mem.slots[i];
		struct snap_region reg = {.gpa = s->gpa, .size = s->size, .file_off = s->file_off};
		snap_put(w, SNAP_REGION, i, &reg, sizeof(reg));
	}
	for (unsigned i = 0; i < vm->nvcpus; i++) {
		r = arch_vcpu_save(&vm->vcpus[i], w);
		if (r < 0) {
			snprintf(why, whylen, "saving vCPU %u: %s", i, strerror(-r));
			return r;
		}
	}
	for (unsigned i = 0; vm->apf && i < vm->nvcpus; i++) {
		struct snap_apf sa = {.msr_en = vm->apf->vcpus[i].msr_en,
		                      .vector = vm->apf->vcpus[i].vector};
		snap_put(w, SNAP_APF, i, &sa, sizeof(sa));
	}
	if ((r = devices_save(vm, w)) < 0) {
		snprintf(why, whylen, "saving the devices' state: %s", strerror(-r));
		return r;
	}
	for (uint32_t chip = 0; chip < 3; chip++) {
		struct kvm_irqchip ic = {.chip_id = chip};
		if (ioctl(vm->fd, KVM_GET_IRQCHIP, &ic) < 0) {
			r = -errno;
			snprintf(why, whylen, "KVM_GET_IRQCHIP %u: %s", chip, strerror(errno));
			return r;
		}
		snap_put(w, SNAP_IRQCHIP, chip, &ic, sizeof(ic));
	}
	struct kvm_clock_data clock = {0};
	if (ioctl(vm->fd, KVM_GET_CLOCK, &clock) == 0)
		snap_put(w, SNAP_CLOCK, 0, &clock, sizeof(clock));
	/* The zero-page map: a lazy restore never reads those pages (from a
	 * remote store or a migration source, that is traffic saved). */
	uint32_t *crcs = img->crcs;
	img->pages_zero = checksum_memory(vm, crcs, img->zero);
	snap_put(w, SNAP_ZERO_PAGES, 0, img->zero, (npages + 63) / 64 * sizeof(*img->zero));
	/* The page checksums go to their own file, read lazily on restore; the
	 * state file keeps one CRC per chunk of it, so it stays small. */
	uint64_t nchunks = (npages + CSUM_CHUNK_PAGES - 1) / CSUM_CHUNK_PAGES;
	uint32_t *chunk_crcs = malloc(nchunks * sizeof(*chunk_crcs));
	if (!chunk_crcs) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	for (uint64_t c = 0; c < nchunks; c++) {
		uint64_t n = npages - c * CSUM_CHUNK_PAGES;
		chunk_crcs[c] =
		    crc32c(0, crcs + c * CSUM_CHUNK_PAGES,
		           (n < CSUM_CHUNK_PAGES ? n : CSUM_CHUNK_PAGES) * sizeof(*crcs));
	}
	snap_put(w, SNAP_CSUM_CHUNKS, 0, chunk_crcs, nchunks * sizeof(*chunk_crcs));
	free(chunk_crcs);
	snap_seal(w);
	if (w->error) {
		snprintf(why, whylen, "building the state file: %s", strerror(-w->error));
		return w->error;
	}
	return 0;
}

int snapshot_save(struct vm *vm, char *why, size_t whylen)
{
	const char *dir = vm->cfg.snapshot_dir;
	struct snap_image img;
	struct iovec parts[VMM_MAX_SLOTS];
	char path[4096], tmp[4096];
	int r;

	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		snprintf(why, whylen, "cannot create directory %s: %s", dir, strerror(errno));
		return -errno;
	}
	if ((r = snapshot_build(vm, &img, why, whylen)) < 0)
		goto out;
	for (unsigned i = 0; i < vm->mem.nslots; i++)
		parts[i] = (struct iovec){.iov_base = vm->mem.slots[i].host,
		                          .iov_len = vm->mem.slots[i].size};
	snprintf(path, sizeof(path), "%s/memory", dir);
	if ((r = write_parts(path, parts, vm->mem.nslots, why, whylen)) < 0)
		goto out;
	snprintf(path, sizeof(path), "%s/checksums", dir);
	r = snap_write_file(path, img.crcs, img.npages * sizeof(*img.crcs), why, whylen);
	if (r < 0)
		goto out;
	/* Write then rename: a state file is either whole or absent. */
	snprintf(tmp, sizeof(tmp), "%s/state.tmp", dir);
	snprintf(path, sizeof(path), "%s/state", dir);
	if ((r = snap_write_file(tmp, img.w.buf, img.w.len, why, whylen)) < 0)
		goto out;
	if (rename(tmp, path) < 0) {
		r = -errno;
		snprintf(why, whylen, "renaming %s to %s: %s", tmp, path, strerror(errno));
		goto out;
	}
	r = 0;
out:
	snapshot_image_free(&img);
	return r;
}
