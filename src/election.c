/*
 * election.c
 *		Leader election as etcd's Go concurrency.Election does it: the
 *		leader is the oldest candidate key of the name; proclaim rewrites its
 *		value; observe waits for the leader or its value to change.
 *
 * May call: keys.h, lockops.h (the candidate's acquire and wait are the
 * lock algorithm's), gateway.h. Called by the local lock table.
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

/* ---- elections ---- */

static bool
parse_proclaim(json_t *root, void *arg)
{
	struct
	{
		bool	   *s;
		int64	   *r;
	}		   *out = arg;

	*out->s = json_is_true(json_object_get(root, "succeeded"));
	return etcd_json_int64(json_object_get(root, "header"), "revision", out->r);
}

typedef struct LeaderReply
{
	const EtcdLockKeys *k;
	EtcdLeader *out;
	int64		cut;			/* the page was cut at this revision */
} LeaderReply;

static bool leader_scan(LeaderReply *r, json_t *kvs, bool whole_rev);

static bool
parse_leader(json_t *root, void *arg)
{
	LeaderReply *r = arg;

	if (!etcd_json_int64(json_object_get(root, "header"), "revision", &r->out->header_rev))
		return false;
	return leader_scan(r, json_object_get(root, "kvs"), false);
}

/* a follow-up: every key at the cut revision, then the next page */
static bool
parse_leader_more(json_t *root, void *arg)
{
	LeaderReply *r = arg;
	json_t	   *responses = json_object_get(root, "responses");
	json_t	   *r0,
			   *r1;

	if (!etcd_json_int64(json_object_get(root, "header"), "revision", &r->out->header_rev) ||
		!json_is_array(responses) || json_array_size(responses) != 2)
		return false;
	r0 = json_object_get(json_array_get(responses, 0), "response_range");
	r1 = json_object_get(json_array_get(responses, 1), "response_range");
	if (!json_is_object(r0) || !json_is_object(r1) ||
		!leader_scan(r, json_object_get(r0, "kvs"), true))
		return false;
	if (r->out->exists)
	{
		r->cut = 0;
		return true;
	}
	return leader_scan(r, json_object_get(r1, "kvs"), false);
}

/*
 * leader_scan takes the first lock key of a page (oldest first) as the
 * leader; a full page is cut at its last revision first (ek_page_cut).
 */
static bool
leader_scan(LeaderReply *r, json_t *kvs, bool whole_rev)
{
	json_t	   *kv;
	size_t		i;

	if (!whole_rev)
		r->cut = ek_page_cut(kvs, PRED_PAGE);
	if (kvs == NULL)
		return true;
	if (!json_is_array(kvs))
		return false;
	json_array_foreach(kvs, i, kv)
	{
		char	   *key;
		int			keylen;
		int64		rev,
					modrev,
					lease;
		json_t	   *jval = json_object_get(kv, "value");

		if (!ek_kv_fields(kv, &key, &keylen, &rev, &modrev, &lease))
			return false;
		if (r->out->exists ||
			ek_key_kind(r->k->pfx, r->k->pfxlen, key, keylen, &lease, NULL) == ETCD_KEY_NONE)
		{
			pfree(key);
			continue;
		}
		r->out->exists = true;
		r->out->token = rev;
		r->out->revision = modrev;
		r->out->lease_id = lease;
		r->out->value = json_is_string(jval) ?
			etcd_b64_decode(json_string_value(jval), NULL) : pstrdup("");
		if (r->out->value == NULL)
			return false;
		pfree(key);
	}
	return true;
}

/*
 * etcd_election_leader reads the leader of k's election: its oldest lock
 * key, with the value (etcd's Go Election.Leader reads the same). Nested
 * names' keys and other data are skipped, a page at a time. A
 * linearizable read: callers may act on it.
 */
void
etcd_election_leader(const EtcdLockKeys *k, EtcdLeader *out)
{
	LeaderReply r = {0};
	StringInfoData b;
	int64		after = 0;

	memset(out, 0, sizeof(*out));
	r.k = k;
	r.out = out;
	initStringInfo(&b);
	do
	{
		resetStringInfo(&b);
		if (after > 0)
		{
			/* every key at the revision the last page was cut at, then on */
			appendStringInfoString(&b, "{\"success\":[{\"request_range\":");
			ek_append_rev_range(&b, k, after, false);
			appendStringInfoString(&b, "},{\"request_range\":");
		}
		appendStringInfoString(&b, "{\"key\":\"");
		etcd_append_b64(&b, k->pfx, k->pfxlen);
		appendStringInfoString(&b, "\",\"range_end\":\"");
		ek_append_range_end(&b, k->pfx, k->pfxlen);
		appendStringInfo(&b, "\",\"sort_order\":\"ASCEND\",\"sort_target\":\"CREATE\",\"limit\":\"%d\"",
						 PRED_PAGE);
		if (after > 0)
			appendStringInfo(&b, ",\"min_create_revision\":\"" INT64_FORMAT "\"}}]", after + 1);
		appendStringInfoChar(&b, '}');
		if (after > 0)
			etcd_request_or_error("/v3/kv/txn", b.data, parse_leader_more, &r, "read the leader");
		else
			etcd_request_or_error("/v3/kv/range", b.data, parse_leader, &r, "read the leader");
		after = r.cut;
	} while (!out->exists && after > 0);
	pfree(b.data);
}

/*
 * etcd_election_proclaim puts value as our key's value if the key still
 * has create_revision token (we are still the leader): the token stays,
 * the mod_revision changes (returned). Errors if the key is gone.
 */
int64
etcd_election_proclaim(const EtcdLockKeys *k, int64 token, const char *value)
{
	StringInfoData b;
	StringInfoData key64;
	bool		succeeded = false;
	int64		rev = 0;
	struct
	{
		bool	   *s;
		int64	   *r;
	}			out = {&succeeded, &rev};

	initStringInfo(&key64);
	etcd_append_b64(&key64, k->key, k->keylen);
	initStringInfo(&b);
	appendStringInfo(&b, "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
					 "\"create_revision\":\"" INT64_FORMAT "\"}],"
					 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"",
					 key64.data, token, key64.data);
	etcd_append_b64(&b, value, strlen(value));
	appendStringInfo(&b, "\",\"lease\":\"" INT64_FORMAT "\"}}]}", k->lease_id);
	etcd_request_or_error("/v3/kv/txn", b.data, parse_proclaim, &out, "proclaim a value");
	pfree(b.data);
	pfree(key64.data);
	if (!succeeded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: this session is no longer the leader: its key is gone from etcd"),
				 errdetail("The lease of this session probably expired.")));
	return rev;
}

/*
 * observe_watch watches the name's range for any change after the read in
 * *out, reads again once the watch exists, and waits for an event (or the
 * deadline) if nothing changed. The watch is closed on every path.
 */
static EtcdWatchResult
observe_watch(const EtcdLockKeys *k, int64 last_revision, TimestampTz deadline,
			  EtcdLeader *out)
{
	EtcdStatus	st;
	volatile EtcdWatchResult wr = WATCH_BROKEN;

	PG_TRY();
	{
		if (etcd_watch_open_ex(k->pfx, k->pfxlen, true, out->header_rev, true, &st))
		{
			/* confirm: a change before the watch existed is seen here */
			etcd_election_leader(k, out);
			if ((out->exists ? out->revision : 0) != last_revision)
				wr = WATCH_DELETED;
			else
			{
				etcd_watch_rearm(out->header_rev);
				wr = etcd_watch_wait(deadline);
			}
		}
	}
	PG_CATCH();
	{
		etcd_watch_close();
		PG_RE_THROW();
	}
	PG_END_TRY();
	etcd_watch_close();
	return wr;
}

/*
 * etcd_election_observe returns (true) as soon as the leader of k's
 * election, or its value, differs from what the caller saw last
 * (last_revision: the leader key's mod_revision, 0 for nothing seen):
 * a new leader, a proclaimed value, or no leader. Else it watches the
 * name's range (any change) and reads again after each event, until
 * deadline (0: none), when it returns false with the current state. *out
 * is the leader read last.
 */
bool
etcd_election_observe(const EtcdLockKeys *k, int64 last_revision,
					  TimestampTz deadline, EtcdLeader *out)
{
	int			backoff_ms = 0;

	if (deadline == 0)
		deadline = DT_NOEND;
	for (;;)
	{
		EtcdWatchResult wr;

		CHECK_FOR_INTERRUPTS();
		etcd_election_leader(k, out);
		if ((out->exists ? out->revision : 0) != last_revision)
			return true;
		if (GetCurrentTimestamp() >= deadline)
			return false;
		wr = observe_watch(k, last_revision, deadline, out);
		ek_watch_backoff(wr, deadline, &backoff_ms);
	}
}
