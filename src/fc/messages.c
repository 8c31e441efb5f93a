/* The messages that may follow the hand-off on Firecracker's socket (the
 * secret-hiding branch): fault requests in, fault replies out. Field names
 * and meanings are those of that branch's FaultRequest and FaultReply. */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "fc_json.h"
#include "lazyvm/fc_handshake.h"

/* An optional integer field: absent and null both mean "none" (serde's
 * Option). 1 present, 0 absent, -EINVAL bad. */
static int optional_u64(struct json_object *top, const char *name, uint64_t *v, char *err,
                        size_t errlen)
{
	struct json_object *o;

	if (!json_object_object_get_ex(top, name, &o) || json_object_get_type(o) == json_type_null)
		return 0;
	int rc = fc_json_u64(o, name, "in the fault request", v, err, errlen);

	return rc ? rc : 1;
}

int fc_fault_request_parse(const char *buf, size_t len, struct fc_fault_request *req, char *err,
                           size_t errlen)
{
	static const char *const required[] = {"vcpu", "offset", "flags"};
	struct json_object *top;
	uint64_t v[3];
	int rc;

	memset(req, 0, sizeof(*req));
	if (len > FC_HANDSHAKE_MAX_BYTES)
		return fc_err(err, errlen, -EINVAL, "a %zu-byte message after the hand-off", len);
	rc = fc_json_parse_one(buf, len, "message", &top, err, errlen);
	if (rc)
		return rc;
	if (json_object_get_type(top) != json_type_object ||
	    !json_object_object_get_ex(top, "offset", NULL)) {
		rc = fc_err(err, errlen, 0, "a message that is not a fault request (%s)",
		            fc_json_kind(top));
		goto out;
	}
	for (size_t i = 0; i < 3; i++) {
		rc = optional_u64(top, required[i], &v[i], err, errlen);
		if (rc == 0)
			rc = fc_err(err, errlen, -EINVAL, "fault request without \"%s\"",
			            required[i]);
		if (rc < 0)
			goto out;
	}
	if (v[0] > UINT32_MAX) {
		rc = fc_err(err, errlen, -EINVAL, "fault request for vCPU %" PRIu64 " (not a u32)",
		            v[0]);
		goto out;
	}
	req->vcpu = (uint32_t)v[0];
	req->offset = v[1];
	req->flags = v[2];
	rc = optional_u64(top, "gpa", &req->gpa, err, errlen);
	if (rc < 0)
		goto out;
	req->has_gpa = rc == 1;
	rc = optional_u64(top, "token", &req->token, err, errlen);
	if (rc < 0)
		goto out;
	req->has_token = rc == 1;
	rc = 1;
out:
	json_object_put(top);
	return rc;
}

int fc_fault_reply_format(const struct fc_fault_request *req, uint64_t offset, uint64_t len,
                          bool zero, char *buf, size_t buflen)
{
	char opt[48];
	int n;

	/* The field the request used comes back: "token" in that protocol,
	 * "gpa" otherwise. */
	if (req->has_token)
		snprintf(opt, sizeof(opt), "\"token\":%" PRIu64, req->token);
	else if (req->has_gpa)
		snprintf(opt, sizeof(opt), "\"gpa\":%" PRIu64, req->gpa);
	else
		snprintf(opt, sizeof(opt), "\"gpa\":null");
	n = snprintf(buf, buflen,
	             "{\"vcpu\":%" PRIu32 ",\"offset\":%" PRIu64 ",\"len\":%" PRIu64
	             ",\"flags\":%" PRIu64 ",%s,\"zero\":%s}",
	             req->vcpu, offset, len, req->flags, opt, zero ? "true" : "false");
	if (n < 0 || (size_t)n >= buflen) {
		if (buflen)
			buf[0] = '\0';
		return -ENOSPC;
	}
	return n;
}
