/* What the readers of Firecracker's messages share (handshake.c, messages.c). */
#ifndef LAZYVM_FC_JSON_H
#define LAZYVM_FC_JSON_H

#include <stddef.h>
#include <stdint.h>

struct json_object;

/* Writes one sentence into err (may be NULL) and returns rc. */
int fc_err(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* "a string", "an object", ...: for "is X, not Y" messages. */
const char *fc_json_kind(const struct json_object *o);

/* A non-negative integer that fits in u64 (no fraction, no exponent), or -EINVAL
 * naming the field (`name`) and where it is (`where`, e.g. "in region 2"). */
int fc_json_u64(const struct json_object *o, const char *name, const char *where, uint64_t *out,
                char *err, size_t errlen);

/* Exactly one JSON value in buf[0..len), with white space around it; `what`
 * names it in errors ("handshake"). 0 with *out (json_object_put it), or
 * -EINVAL/-ENOMEM with err set. len must not exceed INT_MAX. */
int fc_json_parse_one(const char *buf, size_t len, const char *what, struct json_object **out,
                      char *err, size_t errlen);

#endif
