/* libFuzzer target for the Firecracker handshake reader (make fuzz).
 *
 * Beyond "no crash, no sanitizer report", it checks what the rest of lazyvm
 * relies on, and abort()s when any of it fails:
 *   - fc_json_next answers 1, 0 or -EINVAL, and says 1, ending where the
 *     value ends, for anything the parser accepts (else a stream reader would
 *     wait forever for it, or cut it short);
 *   - a failed parse returns -EINVAL/-E2BIG/-ENOMEM, leaves *out empty and
 *     explains itself in a NUL-terminated message, whatever the buffer size;
 *   - an accepted handshake obeys every rule in fc_handshake.h;
 *   - checking against a file size only ever refuses more, and the smallest
 *     file the regions fit in is accepted while one page less is not;
 *   - format then parse gives back the same regions, in every release's shape;
 *   - a fault request is read or refused, never crashed on. */
#include "lazyvm/fc_handshake.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FUZZ_FILE_SIZE (1ull << 30)
#define ERRLEN         512

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void require(bool ok, const char *what)
{
	if (ok)
		return;
	fprintf(stderr, "fuzz_handshake: invariant violated: %s\n", what);
	abort();
}

static void check_failure(int rc, const struct fc_handshake *hs, const char *err)
{
	require(rc == -EINVAL || rc == -E2BIG || rc == -ENOMEM,
	        "failure is -EINVAL/-E2BIG/-ENOMEM");
	require(!hs->regions && hs->nregions == 0, "a failed parse leaves *out empty");
	require(memchr(err, '\0', ERRLEN) && err[0], "a failed parse explains itself");
}

static bool overlap(uint64_t a, uint64_t b, uint64_t len_a, uint64_t len_b)
{
	return a < b + len_b && b < a + len_a;
}

/* The rules of fc_handshake.h, checked the slow, obvious way. Returns the end
 * of the furthest file range. */
static uint64_t check_regions(const struct fc_handshake *hs, uint64_t file_size)
{
	uint64_t file_end = 0;

	require(hs->regions && hs->nregions >= 1, "success means at least one region");
	require(hs->nregions <= FC_HANDSHAKE_MAX_REGIONS, "at most FC_HANDSHAKE_MAX_REGIONS");
	for (size_t i = 0; i < hs->nregions; i++) {
		const struct fc_region *r = &hs->regions[i];
		uint64_t ps = r->page_size;

		require(ps == 4096 || ps == 2u << 20, "page_size is 4 KiB or 2 MiB");
		require(r->base_host_virt_addr % ps == 0, "base is page-aligned");
		require(r->size % ps == 0 && r->size > 0, "size is a non-zero page multiple");
		require(r->offset % ps == 0, "offset is page-aligned");
		require(r->base_host_virt_addr <= UINT64_MAX - r->size, "base + size fits");
		require(r->offset <= UINT64_MAX - r->size, "offset + size fits");
		require(!file_size || r->offset + r->size <= file_size,
		        "file range within the file");
		if (r->offset + r->size > file_end)
			file_end = r->offset + r->size;
		for (size_t j = 0; j < i; j++) {
			const struct fc_region *q = &hs->regions[j];

			require(!overlap(r->base_host_virt_addr, q->base_host_virt_addr, r->size,
			                 q->size),
			        "host ranges do not overlap");
			require(!overlap(r->offset, q->offset, r->size, q->size),
			        "file ranges do not overlap");
		}
	}
	return file_end;
}

static bool same_regions(const struct fc_handshake *a, const struct fc_handshake *b,
                         bool with_page_size)
{
	if (a->nregions != b->nregions)
		return false;
	for (size_t i = 0; i < a->nregions; i++) {
		const struct fc_region *x = &a->regions[i], *y = &b->regions[i];

		if (x->base_host_virt_addr != y->base_host_virt_addr || x->size != y->size ||
		    x->offset != y->offset || (with_page_size && x->page_size != y->page_size))
			return false;
	}
	return true;
}

static void check_round_trip(const struct fc_handshake *hs)
{
	size_t cap = hs->nregions * 220 + 3;
	char err[ERRLEN];
	char *buf = malloc(cap);
	size_t end;
	int n;

	require(buf != NULL, "malloc");
	for (int shape = FC_SHAPE_V1_4; shape <= FC_SHAPE_SECRET_HIDING; shape++) {
		struct fc_handshake again = {0};
		/* v1.4's shape has no page size: it reads back as 4 KiB pages,
		 * which 2 MiB-aligned regions also are. */
		bool ps = shape != FC_SHAPE_V1_4;

		n = fc_handshake_format(hs->regions, hs->nregions, (enum fc_shape)shape, buf, cap);
		require(n > 0 && (size_t)n < cap && strlen(buf) == (size_t)n,
		        "format fits and says its length");
		require(fc_json_next(buf, (size_t)n, &end) == 1 && end == (size_t)n,
		        "formatted output is complete where it ends");
		require(fc_handshake_parse(buf, (size_t)n, 0, &again, err, sizeof(err)) == 0,
		        "formatted output parses");
		require(same_regions(hs, &again, ps), "format then parse gives the same regions");
		fc_handshake_free(&again);
		require(fc_handshake_format(hs->regions, hs->nregions, (enum fc_shape)shape, buf,
		                            (size_t)n) == -ENOSPC,
		        "format without room for the NUL is -ENOSPC");
	}
	free(buf);
}

/* Parses with file_size and checks the result; returns the rc. */
static int parse_and_check(const char *buf, size_t len, uint64_t file_size, int complete)
{
	struct fc_handshake hs = {(struct fc_region *)&hs, 1};
	char err[ERRLEN];
	uint64_t file_end;
	int rc;

	memset(err, 'X', sizeof(err));
	rc = fc_handshake_parse(buf, len, file_size, &hs, err, sizeof(err));
	if (rc) {
		check_failure(rc, &hs, err);
		return rc;
	}
	require(err[0] == '\0', "success leaves an empty message");
	require(complete == 1, "what parses is complete");
	file_end = check_regions(&hs, file_size);
	check_round_trip(&hs);
	if (file_size == 0) {
		struct fc_handshake tight = {0};

		require(fc_handshake_parse(buf, len, file_end, &tight, err, sizeof(err)) == 0,
		        "the regions fit in a file that ends where the last one does");
		fc_handshake_free(&tight);
		if (file_end > 4096)
			require(fc_handshake_parse(buf, len, file_end - 4096, &tight, err,
			                           sizeof(err)) == -EINVAL,
			        "the regions do not fit in a page less");
	}
	fc_handshake_free(&hs);
	return 0;
}

/* A tiny error buffer must still get a NUL-terminated prefix of the message. */
static void check_small_err(const char *buf, size_t len, int want_rc)
{
	struct fc_handshake hs = {0};
	char err[9];

	memset(err, 'X', sizeof(err));
	require(fc_handshake_parse(buf, len, 0, &hs, err, 8) == want_rc,
	        "rc independent of errlen");
	require(memchr(err, '\0', 8) && err[8] == 'X', "message stays within errlen");
	fc_handshake_free(&hs);
	require(fc_handshake_parse(buf, len, 0, &hs, NULL, 0) == want_rc, "no error buffer");
	fc_handshake_free(&hs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct fc_fault_request q;
	char err[ERRLEN];
	size_t end = 0;
	int complete = fc_json_next(buf, size, &end);
	int rc0, rc1;

	/* A complete value followed by only white space is a whole message. */
	if (complete == 1) {
		while (end < size && memchr(" \t\r\n", buf[end], 4) && buf[end])
			end++;
		if (end < size)
			complete = -EINVAL;
	}
	if (size <= FC_HANDSHAKE_MAX_BYTES) {
		int fr = fc_fault_request_parse(buf, size, &q, err, sizeof(err));

		require(fr == 1 || fr == 0 || fr == -EINVAL || fr == -ENOMEM,
		        "a fault request is read, not one, or refused");
	}

	require(complete == 1 || complete == 0 || complete == -EINVAL, "complete's answers");
	rc0 = parse_and_check(buf, size, 0, complete);
	rc1 = parse_and_check(buf, size, FUZZ_FILE_SIZE, complete);
	require(rc0 == 0 || rc1 != 0, "a file size only ever refuses more");
	check_small_err(buf, size, rc0);
	/* A message that parses ends in ']': without it the stream is not done. */
	if (rc0 == 0) {
		size_t cut = size, e;

		while (cut && buf[cut - 1] != ']')
			cut--;
		require(cut > 0 && fc_json_next(buf, cut - 1, &e) == 0,
		        "a handshake missing its ']' is incomplete");
	}
	return 0;
}
