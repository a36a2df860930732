/*
 * lease.c
 *		etcd lease requests: grant (with a client-chosen ID, so a resend is
 *		recognised), the keepalive answer, the revoke body.
 *
 * Owns the lease request bodies and their answers; knows nothing of locks.
 * May call: gateway.h. Called by the local lock table (a backend's own
 * grant) and the worker (the pool, renewals, revocations).
 */
#include "postgres.h"

#include <limits.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "guc.h"
#include "utils/wait_event.h"

#include <jansson.h>

#include "gateway.h"
#include "lockops.h"
#include "keys.h"

/* ---- lease calls ---- */

typedef struct LeaseReply
{
	int64		id;
	int64		ttl;
} LeaseReply;

static bool
parse_lease_grant(json_t *root, void *arg)
{
	LeaseReply *r = arg;

	return etcd_json_int64(root, "ID", &r->id) &&
		etcd_json_int64(root, "TTL", &r->ttl) && r->id != 0 && r->ttl > 0;
}

/*
 * etcd_parse_lease_grant reads a grant's answer: *(int64 *) arg is the
 * granted ID (0 if the answer has none).
 */
bool
etcd_parse_lease_grant(json_t *root, void *arg)
{
	LeaseReply	r = {0};

	if (!parse_lease_grant(root, &r))
		return false;
	*(int64 *) arg = r.id;
	return true;
}

/*
 * etcd_new_lease_id returns a random positive 63-bit lease ID (see
 * etcd_lease_grant), and the body of its grant in *body (palloc'd).
 */
int64
etcd_new_lease_id(int ttl, char **body)
{
	uint64		id = 0;

	while (id == 0)
	{
		if (!pg_strong_random(&id, sizeof(id)))
			elog(ERROR, "etcd_lock: could not generate a random lease ID");
		id &= UINT64CONST(0x7fffffffffffffff);
	}
	*body = psprintf("{\"ID\":\"" INT64_FORMAT "\",\"TTL\":\"%d\"}", (int64) id, ttl);
	return (int64) id;
}

/*
 * etcd_lease_grant asks etcd for the lease id (from etcd_new_lease_id, with
 * its body); returns its ID.
 *
 * The ID is chosen here (63 random bits), not by etcd, so the grant is safe
 * to resend: a grant applied once whose answer was lost, then resent (by
 * libcurl or by failover), answers "lease already exists" (HTTP 412, code
 * 9) the second time, and that lease is ours. A server-chosen ID would
 * leave an orphan lease behind each lost answer. A collision with another
 * client's lease is a 2^-63 chance per grant.
 */
int64
etcd_lease_grant(int64 id, const char *body)
{
	LeaseReply	r = {0};
	EtcdStatus	st;

	if (etcd_request("/v3/lease/grant", body, parse_lease_grant, &r, &st))
	{
		if (r.id != (int64) id)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("etcd_lock: could not grant a lease: etcd granted another ID than the one asked for")));
		return r.id;
	}
	if (st.kind == ETCD_ERROR_REPLY && st.grpc_code == GRPC_FAILED_PRECONDITION)
		return (int64) id;		/* our own earlier, resent grant */
	etcd_report_status(&st, "grant a lease");
}

/*
 * etcd_parse_keepalive reads a keepalive answer into *(int64 *) arg: the
 * new TTL, or 0 if the lease no longer exists (etcd then answers a result
 * without TTL).
 */
bool
etcd_parse_keepalive(json_t *root, void *arg)
{
	json_t	   *res = json_object_get(root, "result");

	if (!json_is_object(res))
		return false;
	return etcd_json_int64(res, "TTL", (int64 *) arg);
}

/*
 * etcd_lease_body is the body of a keepalive or revoke of lease_id.
 */
char *
etcd_lease_body(int64 lease_id)
{
	return psprintf("{\"ID\":\"" INT64_FORMAT "\"}", lease_id);
}
