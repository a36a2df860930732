/*
 * lockops.c
 *		etcd_lock's lock algorithm, expressed as etcd requests.
 *
 * It is etcd's Go concurrency.Mutex algorithm, so both exclude each other:
 * a lock name N is the key range "<prefix>N/", each contender puts its key
 * "<prefix>N/<lease hex>" attached to its lease, and the holder is the key
 * with the lowest create_revision. A waiter watches only its predecessor
 * (the key created just before its own), so one release wakes one waiter.
 * See src/README.md for the invariants.
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

/*
 * etcd_key_marker is the suffix of a key of the given kind after the lease
 * hex ("" for exclusive keys, which are etcd's Go mutex keys).
 */
const char *
etcd_key_marker(EtcdKeyKind kind, int permits)
{
	switch (kind)
	{
		case ETCD_KEY_SHARED:
			return ".shared";
		case ETCD_KEY_SEMAPHORE:
			return psprintf(".sem%d", permits);
		default:
			return "";
	}
}

const char *
etcd_kind_name(EtcdKeyKind kind)
{
	switch (kind)
	{
		case ETCD_KEY_SHARED:
			return "shared";
		case ETCD_KEY_SEMAPHORE:
			return "semaphore";
		case ETCD_KEY_ELECTION:
			return "election";
		default:
			return "exclusive";
	}
}

/*
 * etcd_lock_keys fills k with the range prefix and our key for name, of
 * the given kind (permits: a semaphore's N).
 */
void
etcd_lock_keys(EtcdLockKeys *k, const char *prefix, const char *name,
			   int64 lease_id, EtcdKeyKind kind, int permits)
{
	k->prefix = pstrdup(prefix ? prefix : "");
	k->prefixlen = strlen(k->prefix);
	k->lease_id = lease_id;
	k->pfx = psprintf("%s%s/", prefix ? prefix : "", name);
	k->pfxlen = strlen(k->pfx);
	k->kind = kind;
	k->permits = kind == ETCD_KEY_SEMAPHORE ? permits : 0;
	k->key = psprintf("%s%llx%s", k->pfx, (unsigned long long) lease_id,
					  etcd_key_marker(kind, permits));
	k->keylen = strlen(k->key);
}

/*
 * append_range_end appends the base64 of the end of the range of all keys
 * starting with pfx: pfx with its last byte incremented, dropping trailing
 * 0xff bytes ("\0" means "to the end of the key space").
 */
static void
append_range_end(StringInfo buf, const char *pfx, int len)
{
	char	   *end = palloc(len + 1);
	int			n = len;

	memcpy(end, pfx, len);
	while (n > 0 && (unsigned char) end[n - 1] == 0xff)
		n--;
	if (n == 0)
	{
		end[0] = '\0';
		n = 1;
	}
	else
		end[n - 1]++;
	etcd_append_b64(buf, end, n);
	pfree(end);
}

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

/* ---- acquire ---- */

static EtcdKeyKind key_kind(const char *pfx, int pfxlen, const char *key,
							int keylen, int64 *lease, int *permits);
static bool parse_create_rev(json_t *root, void *arg);

#define TRY_PAGE	64			/* oldest keys a failed try-lock reads */

/*
 * kv_fields reads what the lock algorithm needs of one listed key: the key
 * (palloc'd, decoded), its create_revision, mod_revision and the lease etcd
 * listed with it — 0 when the answer does not say, which is not "no lease":
 * etcd 3.7.0-3.7.3 leave `lease` out of every keys-only answer (etcd issue
 * #22209). Only key_kind reads that lease, and it decides from the key's
 * name. False if the entry is malformed.
 */
static bool
kv_fields(json_t *kv, char **key, int *keylen, int64 *rev, int64 *modrev,
		  int64 *lease)
{
	json_t	   *jkey = json_object_get(kv, "key");

	if (!json_is_string(jkey) || !etcd_json_int64(kv, "create_revision", rev) ||
		!etcd_json_int64(kv, "lease", lease))
		return false;
	if (!etcd_json_int64(kv, "mod_revision", modrev))
		*modrev = *rev;
	*key = etcd_b64_decode(json_string_value(jkey), keylen);
	return *key != NULL;
}

/*
 * A name is a lock (exclusive and shared keys, Go mutex and election keys)
 * or a semaphore of N permits: mixing them on one name is an error, found
 * by whoever lists a key of the other family.
 */
static const char *
kind_conflict(const EtcdLockKeys *k, EtcdKeyKind kind, int permits)
{
	if ((k->kind == ETCD_KEY_SEMAPHORE) != (kind == ETCD_KEY_SEMAPHORE))
		return k->kind == ETCD_KEY_SEMAPHORE ? "lock" : "semaphore";
	if (kind == ETCD_KEY_SEMAPHORE && permits != k->permits)
		return psprintf("semaphore with %d permits", permits);
	return NULL;
}

/* an SQL lock holder's value (lt_value), as opposed to a candidate's */
static bool
is_lock_holder_value(const char *v)
{
	return v != NULL && strncmp(v, "{\"instance\":", 12) == 0;
}

/*
 * kinds_block is the one rule of which older lock key keeps a key from
 * holding (for keys of different leases: a session's own keys never block
 * each other): exclusive on either side blocks, shared keys never block
 * shared ones, and permit keys only count against permit keys (the first N
 * hold: the caller counts). Used by the waits, the try-lock, the deadlock
 * detector and etcd_lock_holders.
 */
static bool
kinds_block(EtcdKeyKind mine, EtcdKeyKind older)
{
	if (mine == ETCD_KEY_SEMAPHORE || older == ETCD_KEY_SEMAPHORE)
		return mine == older;
	return mine != ETCD_KEY_SHARED || older != ETCD_KEY_SHARED;
}

/*
 * key_blocks says whether a lock key of the name (kind, lease) keeps k's
 * key from holding when it is older (kinds_block), or for a semaphore
 * counts as one of the permit keys ahead.
 */
static bool
key_blocks(const EtcdLockKeys *k, EtcdKeyKind kind, int64 lease)
{
	return lease != k->lease_id && kinds_block(k->kind, kind);
}

/* The first lock key of a name found in a page of listed keys. */
typedef struct LockKeyScan
{
	char	   *key;			/* palloc'd; NULL if none in the page */
	int			keylen;
	int64		rev;
	int64		modrev;
	int			nread;			/* entries in the page */
	int64		last_rev;		/* create_revision of the page's last entry */
	int			nblocking;		/* keys in the page that block ours */
	char	  **blocking;		/* their keys, if asked for (keep_max > 0) */
	int		   *blockinglen;
	int			keep_max;
	const char *conflict;		/* the page's first lock key is of another
								 * kind family */
	bool		seen_lock_key;
	int			nties;			/* keys (ours or blocking) at key's revision,
								 * key included */
} LockKeyScan;

/*
 * scan_lock_keys looks through a page of keys (kvs of a range answer, in
 * the order asked for) for the first key that blocks ours (key_blocks) or
 * is ours, counts the blocking ones, and notes whether the page's first
 * lock key is of another kind family (kind_conflict). Keys of nested names
 * and other data are skipped.
 * False if the page is malformed.
 */
static bool
scan_lock_keys(const EtcdLockKeys *k, json_t *kvs, LockKeyScan *out)
{
	size_t		i;
	json_t	   *kv;
	int			keep_max = out->keep_max;

	memset(out, 0, sizeof(*out));
	out->keep_max = keep_max;
	if (keep_max > 0)
	{
		out->blocking = palloc(sizeof(char *) * keep_max);
		out->blockinglen = palloc(sizeof(int) * keep_max);
	}
	if (kvs == NULL)
		return true;
	if (!json_is_array(kvs))
		return false;
	json_array_foreach(kvs, i, kv)
	{
		char	   *key;
		int			keylen,
					permits = 0;
		int64		rev,
					modrev,
					lease;
		EtcdKeyKind kind;
		bool		mine,
					blocks;

		if (!kv_fields(kv, &key, &keylen, &rev, &modrev, &lease))
			return false;
		out->nread++;
		out->last_rev = rev;
		kind = key_kind(k->pfx, k->pfxlen, key, keylen, &lease, &permits);
		if (kind == ETCD_KEY_NONE)
		{
			pfree(key);
			continue;
		}
		/*
		 * Only the first lock key of the page counts (callers use it for
		 * pages read oldest first): the name's oldest key says what the
		 * name is. A newer key of another kind is its own client's error,
		 * found by that client; it must not fail the clients that agree
		 * with the holder.
		 */
		if (!out->seen_lock_key)
			out->conflict = kind_conflict(k, kind, permits);
		out->seen_lock_key = true;
		mine = keylen == k->keylen && memcmp(key, k->key, keylen) == 0;
		blocks = !mine && key_blocks(k, kind, lease);
		if (blocks)
		{
			if (out->nblocking < out->keep_max)
			{
				out->blocking[out->nblocking] = pnstrdup(key, keylen);
				out->blockinglen[out->nblocking] = keylen;
			}
			out->nblocking++;
		}
		if ((mine || blocks) && out->key != NULL && rev == out->rev)
			out->nties++;
		if (out->key == NULL && (mine || blocks))
		{
			out->key = key;
			out->keylen = keylen;
			out->rev = rev;
			out->modrev = modrev;
			out->nties = 1;
		}
		else
			pfree(key);
	}
	return true;
}

/*
 * raise_conflict ends the call if a key of another kind family was listed
 * under the name (see kind_conflict).
 */
static void
raise_conflict(const EtcdLockKeys *k, const char *conflict)
{
	char	   *name;

	if (conflict == NULL)
		return;
	name = pnstrdup(k->pfx + k->prefixlen, k->pfxlen - k->prefixlen - 1);
	if (k->kind == ETCD_KEY_SEMAPHORE && strncmp(conflict, "semaphore", 9) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd semaphore \"%s\" is in use as a %s; this call asks for %d",
						name, conflict, k->permits),
				 errhint("Every client of a semaphore must give the same number of permits.")));
	ereport(ERROR,
			(errcode(ERRCODE_WRONG_OBJECT_TYPE),
			 errmsg("etcd %s name \"%s\" is in use as %s %s",
					k->kind == ETCD_KEY_SEMAPHORE ? "semaphore" :
					k->kind == ETCD_KEY_ELECTION ? "election" : "lock", name,
					conflict[0] == 'e' ? "an" : "a", conflict),
			 errhint("A name is a lock (exclusive or shared), a semaphore or an election.")));
}

typedef struct AcquireReply
{
	const EtcdLockKeys *k;
	const char *key_b64;		/* our key, base64 */
	bool		try_only;
	int64		rev;			/* our key's create_revision, 0 if none */
	bool		held;
	bool		undecided;		/* try: only other data seen, no lock key */
	const char *conflict;
} AcquireReply;

/*
 * try_scan looks through the oldest keys under the name (oldest first) for
 * the first key that blocks ours or is ours: ours (held), another's
 * (taken), or none in the page (undecided: only keys that do not block
 * ours, nested names' keys or other data, or too many of them).
 */
static bool
try_scan(AcquireReply *r, json_t *kvs)
{
	LockKeyScan ks = {0};

	if (!scan_lock_keys(r->k, kvs, &ks))
		return false;
	r->conflict = ks.conflict;
	if (r->k->kind == ETCD_KEY_SEMAPHORE)
	{
		/*
		 * N permit keys (and none of ours): taken. Otherwise the exact
		 * count of keys older than ours decides (etcd_lock_first).
		 */
		r->held = false;
		r->undecided = !(r->rev == 0 && ks.nblocking >= r->k->permits);
		return true;
	}
	r->undecided = ks.key == NULL;
	r->held = ks.key != NULL && r->rev > 0 && ks.rev == r->rev &&
		ks.keylen == r->k->keylen && memcmp(ks.key, r->k->key, ks.keylen) == 0;
	return true;
}

/*
 * first_kv returns kvs[0] of responses[i].response_range, or NULL if the
 * range is empty; sets *ok false on a malformed answer.
 */
static json_t *
first_kv(json_t *responses, size_t i, bool *ok)
{
	json_t	   *rr = json_object_get(json_array_get(responses, i), "response_range");
	json_t	   *kvs;

	if (!json_is_object(rr))
	{
		*ok = false;
		return NULL;
	}
	kvs = json_object_get(rr, "kvs");
	if (kvs == NULL)
		return NULL;
	if (!json_is_array(kvs))
	{
		*ok = false;
		return NULL;
	}
	return json_is_object(json_array_get(kvs, 0)) ? json_array_get(kvs, 0) : NULL;
}

static bool
parse_acquire(json_t *root, void *arg)
{
	AcquireReply *r = arg;
	json_t	   *responses = json_object_get(root, "responses");
	bool		succeeded = json_is_true(json_object_get(root, "succeeded"));
	bool		ok = true;
	int64		oldest_rev;
	json_t	   *mine,
			   *oldest,
			   *okey;

	if (!etcd_json_int64(json_object_get(root, "header"), "revision", &r->rev))
		return false;
	if (r->try_only && succeeded)
	{
		/* the whole range was empty: our put (at this revision) holds */
		r->held = true;
		return r->rev > 0;
	}
	if (!json_is_array(responses) || json_array_size(responses) != 2)
		return false;
	if (r->try_only)
	{
		json_t	   *rr = json_object_get(json_array_get(responses, 1), "response_range");

		/*
		 * Not empty. Our own key may be there: this very request, applied
		 * once already but its answer lost and resent (by libcurl, by
		 * failover). Then it is ours, and the holder if it is the oldest
		 * lock key.
		 */
		mine = first_kv(responses, 0, &ok);
		if (!ok || !etcd_json_int64(mine, "create_revision", &r->rev) ||
			!json_is_object(rr))
			return false;
		return try_scan(r, json_object_get(rr, "kvs"));
	}
	else if (!succeeded)
	{
		/* our key existed already: read its create_revision */
		mine = first_kv(responses, 0, &ok);
		if (!ok || !etcd_json_int64(mine, "create_revision", &r->rev))
			return false;
		if (mine == NULL)
			return false;		/* existed at compare, gone at range: cannot be */
	}
	oldest = first_kv(responses, 1, &ok);
	if (!ok || oldest == NULL ||
		!etcd_json_int64(oldest, "create_revision", &oldest_rev))
		return false;
	okey = json_object_get(oldest, "key");
	r->held = oldest_rev == r->rev && json_is_string(okey) &&
		strcmp(json_string_value(okey), r->key_b64) == 0;
	return r->rev > 0;
}

/*
 * acquire_request sends an acquire txn, shown as the EtcdLockAcquire wait
 * event while it is out.
 */
static void
acquire_request(const char *body, EtcdParseFn parse, void *arg, const char *what)
{
	int			prev = etcd_gateway_wait_kind(ETCD_WAIT_ACQUIRE);

	PG_TRY();
	{
		etcd_request_or_error("/v3/kv/txn", body, parse, arg, what);
	}
	PG_FINALLY();
	{
		etcd_gateway_wait_kind(prev);
	}
	PG_END_TRY();
}

/*
 * etcd_lock_acquire sends the one acquire request. Normal mode: put our key
 * with our lease if it does not exist, and read the oldest key under the
 * name, in one txn; *rev is our key's create_revision and the result says
 * whether it is the oldest (we hold the lock). try_only: put our key only
 * if no key exists under the name at all, so a failed try leaves nothing
 * behind; otherwise read our key and the oldest.
 *
 * Safe to resend (libcurl, endpoint failover): a second application finds
 * our key and reads it instead of creating it, so both modes answer with
 * our key's create_revision and whether it is the oldest; a try answers
 * *rev > 0 with false only if a key of ours exists that does not hold
 * (the caller removes it). Never "not ours" for a key we created.
 */
bool
etcd_lock_acquire(const EtcdLockKeys *k, int64 lease_id, const char *value,
				  bool try_only, int64 *rev)
{
	StringInfoData b;
	StringInfoData key64;
	AcquireReply r = {0};

	initStringInfo(&key64);
	etcd_append_b64(&key64, k->key, k->keylen);

	initStringInfo(&b);
	appendStringInfoString(&b, "{\"compare\":[{\"key\":\"");
	if (try_only)
	{
		etcd_append_b64(&b, k->pfx, k->pfxlen);
		appendStringInfoString(&b, "\",\"range_end\":\"");
		append_range_end(&b, k->pfx, k->pfxlen);
	}
	else
		appendStringInfoString(&b, key64.data);
	appendStringInfo(&b, "\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}],"
					 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"value\":\"", key64.data);
	etcd_append_b64(&b, value, strlen(value));
	appendStringInfo(&b, "\",\"lease\":\"" INT64_FORMAT "\"}}", lease_id);
	{
		StringInfoData oldest;

		initStringInfo(&oldest);
		appendStringInfoString(&oldest, "{\"request_range\":{\"key\":\"");
		etcd_append_b64(&oldest, k->pfx, k->pfxlen);
		appendStringInfoString(&oldest, "\",\"range_end\":\"");
		append_range_end(&oldest, k->pfx, k->pfxlen);
		/* a failed try reads a page, to tell lock keys from other data */
		appendStringInfo(&oldest, "\",\"sort_order\":\"ASCEND\",\"sort_target\":\"CREATE\","
						 "\"limit\":\"%d\",\"keys_only\":true}}", try_only ? TRY_PAGE : 1);
		/* a try needs no read on success: the range was empty */
		if (!try_only)
			appendStringInfo(&b, ",%s", oldest.data);
		appendStringInfo(&b, "],\"failure\":[{\"request_range\":{\"key\":\"%s\",\"keys_only\":true}},%s]",
						 key64.data, oldest.data);
		pfree(oldest.data);
	}
	appendStringInfoChar(&b, '}');

	r.k = k;
	r.key_b64 = key64.data;
	r.try_only = try_only;
	acquire_request(b.data, parse_acquire, &r, "acquire a lock");
	pfree(b.data);
	pfree(key64.data);
	*rev = r.rev;
	if (r.conflict)
	{
		/* a key of ours from this request stays a place to remove */
		raise_conflict(k, r.conflict);
	}
	if (try_only && r.undecided)
	{
		/*
		 * The name's range holds other data (nested names, foreign keys)
		 * and no lock key we could see. etcd's compares cannot say "no lock
		 * key under this range": put our key, then check whether a lock key
		 * is older. If one is, the caller removes ours (*rev > 0 with
		 * false): a release like any other.
		 */
		if (etcd_lock_acquire(k, lease_id, value, false, rev))
			return true;
		return etcd_lock_first(k, *rev);
	}
	return r.held;
}

/* ---- several names at once ---- */

typedef struct ManyReply
{
	EtcdLockKeys *ks;
	int			n;
	int64		rev;			/* the keys' create_revision */
	bool	   *held;
	bool		with_oldest;	/* success: the oldest key of each name too */
	bool		mixed;			/* failure: some keys exist, others do not */
} ManyReply;

static bool
parse_acquire_many(json_t *root, void *arg)
{
	ManyReply  *r = arg;
	json_t	   *responses = json_object_get(root, "responses");
	bool		succeeded = json_is_true(json_object_get(root, "succeeded"));
	int			i;

	if (!etcd_json_int64(json_object_get(root, "header"), "revision", &r->rev) ||
		!json_is_array(responses) ||
		(int) json_array_size(responses) != (succeeded && r->with_oldest ? 2 * r->n : r->n))
		return false;
	if (!succeeded)
	{
		int64		rev = 0;

		/*
		 * Our keys exist already: this very txn, applied once and resent
		 * (they then share one create_revision). Anything else is mixed.
		 */
		for (i = 0; i < r->n; i++)
		{
			bool		ok = true;
			json_t	   *mine = first_kv(responses, i, &ok);
			int64		krev = 0;

			if (!ok)
				return false;
			if (mine == NULL || !etcd_json_int64(mine, "create_revision", &krev) ||
				(rev != 0 && krev != rev))
				r->mixed = true;
			rev = krev;
		}
		r->rev = r->mixed ? 0 : rev;
		return true;
	}
	for (i = 0; i < r->n && r->with_oldest; i++)
	{
		bool		ok = true;
		json_t	   *oldest = first_kv(responses, r->n + i, &ok);
		json_t	   *okey;
		int64		orev = 0;
		char	   *key;
		int			keylen;

		if (!ok)
			return false;
		if (oldest == NULL)
			continue;
		okey = json_object_get(oldest, "key");
		if (!json_is_string(okey) || !etcd_json_int64(oldest, "create_revision", &orev))
			return false;
		key = etcd_b64_decode(json_string_value(okey), &keylen);
		if (key == NULL)
			return false;
		r->held[i] = orev == r->rev && keylen == r->ks[i].keylen &&
			memcmp(key, r->ks[i].key, keylen) == 0;
		pfree(key);
	}
	return r->rev > 0;
}

/*
 * etcd_lock_acquire_many puts the keys ks[0..n-1] (all ours, all absent)
 * in one txn, so they share one create_revision (*rev), and reads the
 * oldest key of each name (if 2n reads fit in the txn's 128 operations):
 * held[i] says whether ks[i] holds at once (the others wait, see
 * etcd_lock_wait). Two such requests over overlapping
 * names cannot deadlock: the one applied first is older on every name
 * they share. At most ETCD_MAX_TXN_NAMES keys (etcd's --max-txn-ops is 128
 * by default). Safe to resend: a second application finds all keys with
 * one create_revision and answers it. If only some exist (a key of this
 * session from before), errors: nothing was written.
 */
void
etcd_lock_acquire_many(EtcdLockKeys *ks, int n, int64 lease_id,
					   const char *value, int64 *rev, bool *held)
{
	StringInfoData b;
	StringInfoData val64;
	ManyReply	r = {0};
	int			i;

	initStringInfo(&val64);
	etcd_append_b64(&val64, value, strlen(value));
	initStringInfo(&b);
	appendStringInfoString(&b, "{\"compare\":[");
	for (i = 0; i < n; i++)
	{
		appendStringInfo(&b, "%s{\"key\":\"", i ? "," : "");
		etcd_append_b64(&b, ks[i].key, ks[i].keylen);
		appendStringInfoString(&b, "\",\"target\":\"CREATE\",\"result\":\"EQUAL\",\"create_revision\":\"0\"}");
	}
	appendStringInfoString(&b, "],\"success\":[");
	for (i = 0; i < n; i++)
	{
		appendStringInfo(&b, "%s{\"request_put\":{\"key\":\"", i ? "," : "");
		etcd_append_b64(&b, ks[i].key, ks[i].keylen);
		appendStringInfo(&b, "\",\"value\":\"%s\",\"lease\":\"" INT64_FORMAT "\"}}",
						 val64.data, lease_id);
	}
	/* each list of a txn holds at most 128 operations: reads if they fit */
	for (i = 0; i < n && 2 * n <= ETCD_MAX_TXN_NAMES; i++)
	{
		appendStringInfoString(&b, ",{\"request_range\":{\"key\":\"");
		etcd_append_b64(&b, ks[i].pfx, ks[i].pfxlen);
		appendStringInfoString(&b, "\",\"range_end\":\"");
		append_range_end(&b, ks[i].pfx, ks[i].pfxlen);
		appendStringInfoString(&b, "\",\"sort_order\":\"ASCEND\",\"sort_target\":\"CREATE\","
							   "\"limit\":\"1\",\"keys_only\":true}}");
	}
	appendStringInfoString(&b, "],\"failure\":[");
	for (i = 0; i < n; i++)
	{
		appendStringInfo(&b, "%s{\"request_range\":{\"key\":\"", i ? "," : "");
		etcd_append_b64(&b, ks[i].key, ks[i].keylen);
		appendStringInfoString(&b, "\",\"keys_only\":true}}");
	}
	appendStringInfoString(&b, "]}");

	r.ks = ks;
	r.n = n;
	r.with_oldest = 2 * n <= ETCD_MAX_TXN_NAMES;
	r.held = held;
	memset(held, 0, sizeof(bool) * n);
	acquire_request(b.data, parse_acquire_many, &r, "acquire locks");
	pfree(b.data);
	pfree(val64.data);
	if (r.mixed || r.rev <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: could not acquire the locks at once: a key of this session exists already for some of them"),
				 errhint("An earlier release of one of these locks may not have reached etcd yet; try again.")));
	*rev = r.rev;
}

/* ---- which keys are lock keys ---- */

/*
 * key_kind says what key (keylen bytes) is to the name whose range is pfx:
 * a lock key is a direct child whose last segment is a lease ID in
 * lower-case hex (as etcd's Go client and we name keys: no leading zero,
 * at most 63 bits), optionally followed by ".<marker>" ([a-z0-9_]+): none
 * is exclusive, "shared" shared, "sem<N>" one of N semaphore permits
 * (*permits = N). Keys of nested names ("<name>/x/...") and any other data
 * under the range are not lock keys (ETCD_KEY_NONE): they neither hold nor
 * queue. A marker this version does not know counts as exclusive, never as
 * nothing: a newer node's key must not be ignored during an upgrade.
 *
 * The decision rests on the key's name, which every answer carries, and
 * never on the absence of a field: *lease is the lease etcd listed with
 * the key, 0 if the answer did not say (etcd 3.7.0-3.7.3 omit it from
 * keys-only ranges, 3.4-3.6 and later 3.7 carry it; a mixed cluster answers
 * both ways). Unsaid, the key counts as a lock key of the lease its name
 * gives (fail closed: a leaseless key named like one blocks, as every key
 * under the name blocks a Go mutex). Only a lease etcd states and that
 * differs from the name makes the key other data. On a lock key *lease is
 * set to the lease its name gives.
 */
static EtcdKeyKind
key_kind(const char *pfx, int pfxlen, const char *key, int keylen, int64 *lease,
		 int *permits)
{
	const char *rest = key + pfxlen;
	int			restlen = keylen - pfxlen;
	uint64		named = 0;
	int			hexlen,
				i;
	const char *marker;
	int			mlen;

	if (restlen <= 0 || keylen < pfxlen ||
		memcmp(key, pfx, pfxlen) != 0 || memchr(rest, '/', restlen) != NULL)
		return ETCD_KEY_NONE;
	for (hexlen = 0; hexlen < restlen && hexlen <= 16; hexlen++)
	{
		char		c = rest[hexlen];

		if (c >= '0' && c <= '9')
			named = (named << 4) | (uint64) (c - '0');
		else if (c >= 'a' && c <= 'f')
			named = (named << 4) | (uint64) (c - 'a' + 10);
		else
			break;
	}
	/* canonical %llx of a positive int64: 1-16 digits, no leading zero */
	if (hexlen == 0 || hexlen > 16 || rest[0] == '0' || named > (uint64) PG_INT64_MAX)
		return ETCD_KEY_NONE;
	if (*lease != 0 && (uint64) *lease != named)
		return ETCD_KEY_NONE;
	*lease = (int64) named;
	if (restlen == hexlen)
		return ETCD_KEY_EXCLUSIVE;
	if (rest[hexlen] != '.' || restlen == hexlen + 1)
		return ETCD_KEY_NONE;
	for (i = hexlen + 1; i < restlen; i++)
		if (!((rest[i] >= 'a' && rest[i] <= 'z') || (rest[i] >= '0' && rest[i] <= '9') ||
			  rest[i] == '_'))
			return ETCD_KEY_NONE;
	marker = rest + hexlen + 1;
	mlen = restlen - hexlen - 1;
	if (mlen == 6 && memcmp(marker, "shared", 6) == 0)
		return ETCD_KEY_SHARED;
	if (mlen > 3 && mlen <= 7 && memcmp(marker, "sem", 3) == 0 && marker[3] != '0')
	{
		int			n = 0;

		for (i = 3; i < mlen && marker[i] >= '0' && marker[i] <= '9'; i++)
			n = n * 10 + (marker[i] - '0');
		if (i == mlen && n >= 1 && n <= ETCD_MAX_PERMITS)
		{
			if (permits)
				*permits = n;
			return ETCD_KEY_SEMAPHORE;
		}
	}
	return ETCD_KEY_EXCLUSIVE;	/* unknown marker: fail-safe */
}

/*
 * listed_lock_name says whether key (keylen bytes, attached to lease),
 * listed from a range over prefix, is the lock key of some name: returns
 * the length of that name (the part between the prefix and the last
 * slash) and the key's kind (*kind, *permits), or -1 for any other key
 * (lockops' rule, key_kind).
 */
static int
listed_lock_name(const char *prefix, int prefixlen, const char *key,
				 int keylen, int64 *lease, EtcdKeyKind *kind, int *permits)
{
	const char *slash = (int) strlen(key) == keylen ? strrchr(key, '/') : NULL;

	if (slash == NULL || keylen < prefixlen || slash < key + prefixlen + 1 ||
		memcmp(key, prefix, prefixlen) != 0)
		return -1;
	*permits = 0;
	*kind = key_kind(key, slash + 1 - key, key, keylen, lease, permits);
	if (*kind == ETCD_KEY_NONE)
		return -1;
	return (int) (slash - key) - prefixlen;
}

/* ---- every lock key under a prefix (deadlock detection, holders) ---- */

/* One lock key listed from a range over the prefix (listed_lock_name). */
typedef struct ListedKey
{
	char	   *name;			/* lock name (prefix stripped) */
	char	   *key;			/* full key */
	int			keylen;
	int64		rev;			/* create_revision */
	int64		lease;
	EtcdKeyKind kind;
	int			permits;
	char	   *value;			/* decoded; "" if none or keys only */
	int			lidx;			/* deadlock graph: index of its lease */
} ListedKey;

typedef struct ListedKeys
{
	const char *prefix;
	int			prefixlen;
	int			max;			/* more keys than this in the answer: too_many
								 * (0: no limit) */
	bool		too_many;
	bool		no_permits;		/* leave permit keys out */
	ListedKey  *keys;
	int			n;
	int			cap;
} ListedKeys;

/*
 * parse_listed keeps the lock keys among the keys of a range over the
 * prefix (other applications' keys are skipped): for each, the name is what
 * lies between the prefix and the last slash.
 */
static bool
parse_listed(json_t *root, void *arg)
{
	ListedKeys *r = arg;
	json_t	   *kvs = json_object_get(root, "kvs");
	json_t	   *kv;
	size_t		i;

	if (kvs == NULL)
		return true;
	if (!json_is_array(kvs))
		return false;
	if (r->max > 0 && (int) json_array_size(kvs) > r->max)
	{
		r->too_many = true;
		return true;
	}
	json_array_foreach(kvs, i, kv)
	{
		json_t	   *jval = json_object_get(kv, "value");
		int64		rev,
					modrev,
					lease;
		char	   *key,
				   *val = NULL;
		int			keylen,
					namelen,
					permits;
		EtcdKeyKind kind;
		ListedKey  *lk;

		if (!kv_fields(kv, &key, &keylen, &rev, &modrev, &lease))
			return false;
		namelen = listed_lock_name(r->prefix, r->prefixlen, key, keylen, &lease,
								   &kind, &permits);
		if (namelen < 0 || (r->no_permits && kind == ETCD_KEY_SEMAPHORE))
		{
			pfree(key);
			continue;
		}
		if (json_is_string(jval))
			val = etcd_b64_decode(json_string_value(jval), NULL);
		if (r->n >= r->cap)
		{
			r->cap = r->cap ? r->cap * 2 : 64;
			r->keys = r->keys ? repalloc(r->keys, r->cap * sizeof(ListedKey)) :
				palloc(r->cap * sizeof(ListedKey));
		}
		lk = &r->keys[r->n++];
		lk->name = pnstrdup(key + r->prefixlen, namelen);
		lk->key = key;
		lk->keylen = keylen;
		lk->rev = rev;
		lk->lease = lease;
		lk->kind = kind;
		lk->permits = permits;
		lk->value = val ? val : pstrdup("");
		lk->lidx = -1;
	}
	return true;
}

/* by name, then oldest first */
static int
listed_cmp(const void *a, const void *b)
{
	const ListedKey *x = a;
	const ListedKey *y = b;
	int			c = strcmp(x->name, y->name);

	if (c != 0)
		return c;
	return x->rev < y->rev ? -1 : x->rev > y->rev;
}

/*
 * append_prefix_range appends "key" and "range_end" (without the braces)
 * of every key starting with start; an empty start is the whole key space.
 */
static void
append_prefix_range(StringInfo b, const char *start, int len)
{
	appendStringInfoString(b, "\"key\":\"");
	if (len == 0)
	{
		etcd_append_b64(b, "\0", 1);
		appendStringInfoString(b, "\",\"range_end\":\"");
		etcd_append_b64(b, "\0", 1);
	}
	else
	{
		etcd_append_b64(b, start, len);
		appendStringInfoString(b, "\",\"range_end\":\"");
		append_range_end(b, start, len);
	}
	appendStringInfoChar(b, '"');
}

/* ---- deadlock detection across instances ---- */

typedef struct DlValues
{
	int			n;
	bool	   *sql;			/* the key holds an SQL holder's JSON value */
} DlValues;

static bool
parse_dl_values(json_t *root, void *arg)
{
	DlValues   *v = arg;
	json_t	   *responses = json_object_get(root, "responses");
	int			i;

	if (!json_is_array(responses) || (int) json_array_size(responses) != v->n)
		return false;
	for (i = 0; i < v->n; i++)
	{
		bool		ok = true;
		json_t	   *kv = first_kv(responses, i, &ok);
		json_t	   *jval;
		char	   *val;

		if (!ok)
			return false;
		v->sql[i] = false;
		jval = kv ? json_object_get(kv, "value") : NULL;
		if (!json_is_string(jval))
			continue;
		val = etcd_b64_decode(json_string_value(jval), NULL);
		v->sql[i] = val != NULL && val[0] == '{' && strstr(val, "\"instance\"") != NULL;
		if (val)
			pfree(val);
	}
	return true;
}

/*
 * etcd_deadlock_check raises 40P01 if this waiter (our key k->key, revision
 * rev) closes a cycle of waits and is its victim.
 *
 * The wait-for graph comes from one range read of every key under the
 * prefix (keys only; one revision, so all edges are seen at the same
 * moment): a lease waits for the holder (oldest lock key) of every name
 * where it has a lock key that does not hold. A cycle through our lease is
 * a deadlock. Exactly one victim per cycle: the youngest SQL wait key in it
 * (highest create_revision among the cycle's waiting keys whose value is an
 * SQL holder's JSON), like PostgreSQL's detector failing one waiter; every
 * other member keeps waiting, and the victim finds the same cycle at its own
 * next check. A Go session shares one lease across goroutines, so a cycle
 * through a Go lease may not be a real deadlock: an over-approximation there.
 * Does not use /v3/lease/timetolive with keys (it needs read permission on
 * every key of a lease since etcd 3.4.26 / 3.5.9, CVE-2023-32082).
 */
void
etcd_deadlock_check(const EtcdLockKeys *k, int64 rev)
{
	static bool said_too_many = false;
	static bool said_failed = false;
	EtcdStatus	st;
	ListedKeys	r = {0};
	StringInfoData b;
	int64	   *leases;
	int		   *name_start;		/* per key: index of its name's first key */
	int			nleases = 0,
				i,
				j;
	int		   *parent_edge;	/* per lease: the wait key by which it was
								 * reached */
	int		   *parent_tgt;		/* ... and the key it waits for */
	int		   *stack;
	int			sp = 0;
	bool	   *seen;
	int			our,
				found_edge = -1,
				found_tgt = -1;

	if (etcd_lock_deadlock_max_keys <= 0)
		return;
	r.prefix = k->prefix;
	r.prefixlen = k->prefixlen;
	r.max = etcd_lock_deadlock_max_keys;
	r.no_permits = true;		/* a semaphore wait is an OR-wait: left out */
	initStringInfo(&b);
	appendStringInfoChar(&b, '{');
	append_prefix_range(&b, k->prefix, k->prefixlen);
	appendStringInfo(&b, ",\"keys_only\":true,\"limit\":\"%d\"}", r.max + 1);

	/*
	 * Detection must never end a wait by itself: if etcd refuses the read
	 * (a role that may not read the whole prefix, say), say so once in the
	 * log and go on waiting without it.
	 */
	if (!etcd_request("/v3/kv/range", b.data, parse_listed, &r, &st))
	{
		if (!said_failed)
			ereport(LOG,
					(errmsg("etcd_lock: deadlock detection skipped: could not read the keys under the prefix"),
					 errdetail("%s", st.message),
					 errhint("Give the etcd role read access to all of etcd_lock.prefix, or set a prefix it can read.")));
		said_failed = true;
		return;
	}
	if (r.too_many)
	{
		if (!said_too_many)
			ereport(LOG,
					(errmsg("etcd_lock: deadlock detection skipped: more than %d keys under the prefix",
							r.max),
					 errhint("Raise etcd_lock.deadlock_max_keys, or set etcd_lock.prefix so that lock keys are apart from other data.")));
		said_too_many = true;
		return;
	}
	if (r.n < 2)
		return;
	qsort(r.keys, r.n, sizeof(ListedKey), listed_cmp);

	/* leases as graph nodes; each key knows where its name's keys start */
	leases = palloc(sizeof(int64) * r.n);
	name_start = palloc(sizeof(int) * r.n);
	for (i = 0; i < r.n; i++)
	{
		name_start[i] = (i > 0 && strcmp(r.keys[i].name, r.keys[i - 1].name) == 0) ?
			name_start[i - 1] : i;
		for (j = 0; j < nleases && leases[j] != r.keys[i].lease; j++)
			;
		if (j == nleases)
			leases[nleases++] = r.keys[i].lease;
		r.keys[i].lidx = j;
	}
	for (our = 0; our < nleases && leases[our] != k->lease_id; our++)
		;
	if (our == nleases)
		return;

	/*
	 * Depth-first search from our lease along "waits for" edges: key i of
	 * lease L waits for every older key j of its name that blocks it
	 * (another lease's key, exclusive on either side): an edge L ->
	 * lease(j) for each. A key waits until all of them are gone, so any
	 * cycle is a deadlock.
	 */
	parent_edge = palloc(sizeof(int) * nleases);
	parent_tgt = palloc(sizeof(int) * nleases);
	seen = palloc0(sizeof(bool) * nleases);
	stack = palloc(sizeof(int) * (nleases + 1));
	stack[sp++] = our;
	seen[our] = true;
	while (sp > 0 && found_edge < 0)
	{
		int			l = stack[--sp];

		for (i = 0; i < r.n && found_edge < 0; i++)
		{
			ListedKey  *w = &r.keys[i];

			if (w->lidx != l)
				continue;
			for (j = name_start[i]; j < i && found_edge < 0; j++)
			{
				ListedKey  *h = &r.keys[j];

				if (h->lease == w->lease || !kinds_block(w->kind, h->kind))
					continue;
				if (h->lidx == our)
				{
					found_edge = i; /* back at our lease: a cycle */
					found_tgt = j;
				}
				else if (!seen[h->lidx])
				{
					seen[h->lidx] = true;
					parent_edge[h->lidx] = i;
					parent_tgt[h->lidx] = j;
					stack[sp++] = h->lidx;
				}
			}
		}
	}
	if (found_edge < 0)
		return;

	/* the cycle's wait keys, from the closing edge back to our lease */
	{
		int		   *cyc = palloc(sizeof(int) * (nleases + 1));
		int		   *tgt = palloc(sizeof(int) * (nleases + 1));
		int			nc = 0,
					victim = -1,
					l;
		DlValues	v;
		StringInfoData detail;

		cyc[nc] = found_edge;
		tgt[nc++] = found_tgt;
		l = r.keys[found_edge].lidx;
		while (l != our && nc <= nleases)
		{
			cyc[nc] = parent_edge[l];
			tgt[nc++] = parent_tgt[l];
			l = r.keys[parent_edge[l]].lidx;
		}

		/* which of them are SQL sessions' keys: one read of their values */
		v.n = nc;
		v.sql = palloc0(sizeof(bool) * nc);
		resetStringInfo(&b);
		appendStringInfoString(&b, "{\"success\":[");
		for (i = 0; i < nc; i++)
		{
			appendStringInfo(&b, "%s{\"request_range\":{\"key\":\"", i ? "," : "");
			etcd_append_b64(&b, r.keys[cyc[i]].key, r.keys[cyc[i]].keylen);
			appendStringInfoString(&b, "\"}}");
		}
		appendStringInfoString(&b, "]}");
		if (!etcd_request("/v3/kv/txn", b.data, parse_dl_values, &v, &st))
			return;				/* checked again later */
		for (i = 0; i < nc; i++)
			if (v.sql[i] && (victim < 0 || r.keys[cyc[i]].rev > r.keys[cyc[victim]].rev))
				victim = i;
		if (victim < 0 || r.keys[cyc[victim]].lease != k->lease_id ||
			r.keys[cyc[victim]].rev != rev)
			return;				/* another member of the cycle is its victim */

		initStringInfo(&detail);
		for (i = nc - 1; i >= 0; i--)
		{
			ListedKey  *w = &r.keys[cyc[i]];
			ListedKey  *h = &r.keys[tgt[i]];

			appendStringInfo(&detail, "%sLease %llx waits for etcd lock \"%s\" (%s), held or awaited by lease %llx (%s).",
							 detail.len ? "\n" : "", (unsigned long long) w->lease, w->name,
							 etcd_kind_name(w->kind), (unsigned long long) h->lease,
							 etcd_kind_name(h->kind));
		}
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected"),
				 errdetail("%s", detail.data),
				 errhint("This session (lease %llx) was chosen as the victim: the youngest waiter in the cycle. See etcd_lock_holders() for who holds the locks.",
						 (unsigned long long) k->lease_id)));
	}
}

/* ---- wait ---- */


#define PRED_PAGE	64			/* keys read per page when looking for a predecessor */

typedef struct PredReply
{
	const EtcdLockKeys *k;
	bool		with_mine;		/* responses[0] is our key (a txn) */
	bool		counting;		/* a follow-up page of the oldest keys */
	bool		with_holder;	/* responses[3]: the oldest key, with value */
	int64		header_rev;		/* the revision the txn read at */
	int64		my_rev;			/* create_revision of our key now, 0 if gone */
	char	   *pred;			/* predecessor key (palloc'd), NULL if none */
	int			predlen;
	int64		pred_rev;		/* its create_revision */
	int64		pred_modrev;	/* and mod_revision */
	int64		pred_cut;		/* newest-first page cut at this revision:
								 * read it whole, then page below it */
	int64		oldest_cut;		/* oldest-first page cut at this revision */
	int			oldest_ties;	/* keys (ours or blocking) created with the
								 * oldest blocking one, it included */
	bool		oldest_seen;	/* the oldest-first pages reached a lock key */
	char	   *oldest;			/* the oldest blocking key below ours, if seen */
	int			oldestlen;
	int64		oldest_rev;
	bool		pred_oldest;	/* the predecessor is the only blocking key:
								 * its deletion makes us the holder */
	const char *conflict;		/* a key of another kind family */
	/* semaphores: permit keys older than ours, counted up to permits + 1 */
	int			nahead;
	char	  **ahead;			/* the first of them (permits at most) */
	int		   *aheadlen;
} PredReply;

/*
 * page_cut makes a page of keys read with a limit safe to page on from. The
 * page ends at some create revision L; when it is full, more keys created
 * at L may lie beyond the limit (one txn creates many keys at one
 * revision: a multi-lock's, a name's and its nested name's), and paging on
 * "below L" or "above L" would skip them. So the page's entries at L are
 * dropped and L is returned: the caller reads every key created at L
 * (append_rev_range: one revision holds at most one txn's keys) and pages
 * on past L. Returns 0 when the page is not full (nothing beyond it).
 */
static int64
page_cut(json_t *kvs, int limit)
{
	size_t		n;
	int64		last = 0,
				rev = 0;

	if (!json_is_array(kvs) || (n = json_array_size(kvs)) < (size_t) limit || n == 0 ||
		!etcd_json_int64(json_array_get(kvs, n - 1), "create_revision", &last) || last <= 0)
		return 0;				/* not full (or malformed: the scan says so) */
	while (n > 0 && etcd_json_int64(json_array_get(kvs, n - 1), "create_revision", &rev) &&
		   rev == last)
		json_array_remove(kvs, --n);
	return last;
}

/*
 * append_rev_range appends a range request (JSON object body) of every key
 * under the name created at revision rev (no limit: one txn's keys).
 */
static void
append_rev_range(StringInfo b, const EtcdLockKeys *k, int64 rev, bool keys_only)
{
	appendStringInfoString(b, "{\"key\":\"");
	etcd_append_b64(b, k->pfx, k->pfxlen);
	appendStringInfoString(b, "\",\"range_end\":\"");
	append_range_end(b, k->pfx, k->pfxlen);
	appendStringInfo(b, "\",%s\"min_create_revision\":\"" INT64_FORMAT "\","
					 "\"max_create_revision\":\"" INT64_FORMAT "\"}",
					 keys_only ? "\"keys_only\":true," : "", rev, rev);
}

/*
 * pred_scan looks through a page of keys (newest first) for the first key
 * that blocks ours: our predecessor. A full page is cut at its last
 * revision (r->pred_cut, see page_cut) unless it is a whole revision.
 */
static bool
pred_scan(PredReply *r, json_t *kvs, bool whole_rev)
{
	LockKeyScan ks = {0};

	if (!whole_rev)
		r->pred_cut = page_cut(kvs, PRED_PAGE);
	if (!scan_lock_keys(r->k, kvs, &ks))
		return false;
	if (r->pred == NULL && ks.key != NULL)
	{
		r->pred = ks.key;
		r->predlen = ks.keylen;
		r->pred_rev = ks.rev;
		r->pred_modrev = ks.modrev;
	}
	return true;
}

/*
 * oldest_scan finds the oldest blocking key in a page of keys (oldest
 * first), or for a semaphore counts the permit keys older than ours.
 */
static bool
oldest_scan(PredReply *r, json_t *kvs, bool whole_rev)
{
	LockKeyScan ks = {0};
	int			i;

	ks.keep_max = r->k->kind == ETCD_KEY_SEMAPHORE ? r->k->permits + 1 : 0;
	if (!whole_rev)
		r->oldest_cut = page_cut(kvs, PRED_PAGE);
	if (!scan_lock_keys(r->k, kvs, &ks))
		return false;
	/*
	 * The name's oldest lock key decides what the name is: the first lock
	 * key of the oldest-first pages, however many other keys (nested
	 * names, other data) come before it. A conflict already found (the
	 * holder's value, with_holder) stays.
	 */
	if (!r->oldest_seen)
	{
		if (r->conflict == NULL)
			r->conflict = ks.conflict;
		r->oldest_seen = ks.seen_lock_key;
	}
	if (r->k->kind == ETCD_KEY_SEMAPHORE)
	{
		for (i = 0; i < Min(ks.nblocking, ks.keep_max) &&
			 r->nahead < r->k->permits + 1; i++, r->nahead++)
		{
			r->ahead[r->nahead] = ks.blocking[i];
			r->aheadlen[r->nahead] = ks.blockinglen[i];
		}
		return true;
	}
	if (r->oldest == NULL)
	{
		r->oldest = ks.key;
		r->oldestlen = ks.keylen;
		r->oldest_rev = ks.rev;
		r->oldest_ties = ks.nties;
	}
	return true;
}

/*
 * parse_pred_more reads a follow-up txn of a queue read: every key created
 * at the revision the last page was cut at (responses[0]), then the next
 * page past it (responses[1]), both in the direction being read.
 */
static bool
parse_pred_more(json_t *root, void *arg)
{
	PredReply  *r = arg;
	json_t	   *responses = json_object_get(root, "responses");
	json_t	   *r0,
			   *r1;

	if (!json_is_array(responses) || json_array_size(responses) != 2)
		return false;
	r0 = json_object_get(json_array_get(responses, 0), "response_range");
	r1 = json_object_get(json_array_get(responses, 1), "response_range");
	if (!json_is_object(r0) || !json_is_object(r1))
		return false;
	if (r->counting)
		return oldest_scan(r, json_object_get(r0, "kvs"), true) &&
			oldest_scan(r, json_object_get(r1, "kvs"), false);
	if (!pred_scan(r, json_object_get(r0, "kvs"), true))
		return false;
	if (r->pred != NULL)
	{
		r->pred_cut = 0;		/* found: the next page does not matter */
		return true;
	}
	return pred_scan(r, json_object_get(r1, "kvs"), false);
}

static bool
parse_pred(json_t *root, void *arg)
{
	PredReply  *r = arg;
	json_t	   *responses,
			   *mine,
			   *rr,
			   *ro;
	bool		ok = true;

	if (!etcd_json_int64(json_object_get(root, "header"), "revision", &r->header_rev))
		return false;
	responses = json_object_get(root, "responses");
	if (!json_is_array(responses) || json_array_size(responses) != (r->with_holder ? 4 : 3))
		return false;
	if (r->with_holder)
	{
		json_t	   *h = first_kv(responses, 3, &ok);
		json_t	   *jval = h ? json_object_get(h, "value") : NULL;
		char	   *key,
				   *val;
		int			keylen;
		int64		hrev,
					hmod,
					hlease;

		if (!ok)
			return false;
		if (h && kv_fields(h, &key, &keylen, &hrev, &hmod, &hlease) &&
			key_kind(r->k->pfx, r->k->pfxlen, key, keylen, &hlease, NULL) == ETCD_KEY_EXCLUSIVE &&
			json_is_string(jval) &&
			(val = etcd_b64_decode(json_string_value(jval), NULL)) != NULL)
		{
			/*
			 * A name is a lock or an election: an SQL lock holder's record
			 * under an election, or a candidate's value (not a Go mutex's
			 * empty one) under a lock, is a mix-up.
			 */
			if (r->k->kind == ETCD_KEY_ELECTION && is_lock_holder_value(val))
				r->conflict = "lock";
			else if (r->k->kind != ETCD_KEY_ELECTION && r->k->kind != ETCD_KEY_SEMAPHORE &&
					 val[0] != '\0' && !is_lock_holder_value(val))
				r->conflict = "election";
		}
	}
	mine = first_kv(responses, 0, &ok);
	if (!ok || !etcd_json_int64(mine, "create_revision", &r->my_rev))
		return false;
	rr = json_object_get(json_array_get(responses, 1), "response_range");
	ro = json_object_get(json_array_get(responses, 2), "response_range");
	if (!json_is_object(rr) || !json_is_object(ro))
		return false;
	return pred_scan(r, json_object_get(rr, "kvs"), false) &&
		oldest_scan(r, json_object_get(ro, "kvs"), false);
}

/*
 * append_pred_range appends a range request (JSON object body) of the keys
 * under the name created before revision below (and after above, if not
 * 0), newest or oldest first, one page.
 */
static void
append_pred_range(StringInfo b, const EtcdLockKeys *k, int64 below, int64 above,
				  bool oldest_first)
{
	appendStringInfoString(b, "{\"key\":\"");
	etcd_append_b64(b, k->pfx, k->pfxlen);
	appendStringInfoString(b, "\",\"range_end\":\"");
	append_range_end(b, k->pfx, k->pfxlen);
	appendStringInfo(b, "\",\"sort_order\":\"%s\",\"sort_target\":\"CREATE\","
					 "\"limit\":\"%d\",\"keys_only\":true,\"max_create_revision\":\"" INT64_FORMAT "\"",
					 oldest_first ? "ASCEND" : "DESCEND", PRED_PAGE, below - 1);
	if (above > 0)
		appendStringInfo(b, ",\"min_create_revision\":\"" INT64_FORMAT "\"", above + 1);
	appendStringInfoChar(b, '}');
}

/*
 * read_past_cut sends the follow-up of a page cut at revision cut
 * (page_cut): one txn of every key at that revision and the next page
 * (below/above as append_pred_range), parsed by parse_pred_more.
 */
static void
read_past_cut(StringInfo b, const EtcdLockKeys *k, PredReply *r, int64 cut,
			  int64 below, int64 above, bool oldest_first, const char *what)
{
	resetStringInfo(b);
	appendStringInfoString(b, "{\"success\":[{\"request_range\":");
	append_rev_range(b, k, cut, true);
	appendStringInfoString(b, "},{\"request_range\":");
	append_pred_range(b, k, below, above, oldest_first);
	appendStringInfoString(b, "}]}");
	etcd_request_or_error("/v3/kv/txn", b->data, parse_pred_more, r, what);
}

/*
 * read_pred reads, in one txn, our key, our predecessor in the queue (the
 * blocking key of the name created last before ours: see key_blocks; keys
 * of nested names and other data under the range are skipped; where they
 * are many, more pages follow) and the oldest blocking key. For a
 * semaphore it counts the permit keys older than ours instead (up to
 * permits + 1, more pages where other data is in the way).
 */
static void
read_pred_ex(const EtcdLockKeys *k, int64 rev, PredReply *r, bool with_holder)
{
	StringInfoData b;

	memset(r, 0, sizeof(*r));
	r->k = k;
	r->with_mine = true;
	r->with_holder = with_holder;
	if (k->kind == ETCD_KEY_SEMAPHORE)
	{
		r->ahead = palloc(sizeof(char *) * (k->permits + 1));
		r->aheadlen = palloc(sizeof(int) * (k->permits + 1));
	}
	initStringInfo(&b);
	appendStringInfoString(&b, "{\"success\":[{\"request_range\":{\"key\":\"");
	etcd_append_b64(&b, k->key, k->keylen);
	appendStringInfoString(&b, "\",\"keys_only\":true}},{\"request_range\":");
	append_pred_range(&b, k, rev, 0, false);
	appendStringInfoString(&b, "},{\"request_range\":");
	append_pred_range(&b, k, rev, 0, true);
	if (with_holder)
	{
		/* the oldest key with its value: what kind of name this is */
		appendStringInfoString(&b, "},{\"request_range\":{\"key\":\"");
		etcd_append_b64(&b, k->pfx, k->pfxlen);
		appendStringInfoString(&b, "\",\"range_end\":\"");
		append_range_end(&b, k->pfx, k->pfxlen);
		appendStringInfoString(&b, "\",\"sort_order\":\"ASCEND\",\"sort_target\":\"CREATE\",\"limit\":\"1\"}");
	}
	appendStringInfoString(&b, "}]}");
	etcd_request_or_error("/v3/kv/txn", b.data, parse_pred, r, "read the lock queue");
	r->with_mine = false;
	/* no predecessor in a full page: the rest of its last revision, on */
	while (r->pred == NULL && r->pred_cut > 0)
	{
		int64		cut = r->pred_cut;

		r->pred_cut = 0;
		read_past_cut(&b, k, r, cut, cut, 0, false, "read the lock queue");
	}
	/*
	 * The oldest-first pages go on while a semaphore still counts, and for
	 * every kind until the name's oldest lock key is seen (it says what
	 * the name is: an exclusive key does not block on permit keys, so a
	 * lock and a semaphore mixed up would both hold). Each page starts
	 * past the last one's cut: the loop ends below rev.
	 */
	r->counting = true;
	while ((k->kind == ETCD_KEY_SEMAPHORE ? r->nahead <= k->permits : !r->oldest_seen) &&
		   r->oldest_cut > 0 && r->oldest_cut < rev)
	{
		int64		cut = r->oldest_cut;

		r->oldest_cut = 0;
		read_past_cut(&b, k, r, cut, rev, cut, true,
					  k->kind == ETCD_KEY_SEMAPHORE ? "read the semaphore queue" : "read the lock queue");
	}
	r->counting = false;
	pfree(b.data);
	raise_conflict(k, r->conflict);

	/*
	 * The predecessor is the oldest blocking key of the name (the only
	 * one): no other blocking key is older than ours, and none can be
	 * created older. Its deletion alone then makes us the holder (see
	 * wait_loop).
	 */
	r->pred_oldest = r->pred != NULL && r->oldest != NULL &&
		r->oldest_rev == r->pred_rev && r->oldestlen == r->predlen &&
		memcmp(r->oldest, r->pred, r->predlen) == 0 &&
		r->oldest_ties == 1;	/* and no other created with it */
}

static void
read_pred(const EtcdLockKeys *k, int64 rev, PredReply *r)
{
	read_pred_ex(k, rev, r, false);
}

/*
 * holds_now says, from a queue read, whether our key holds: no blocking key
 * is older (locks), or fewer than permits permit keys are (semaphores).
 */
static bool
holds_now(const EtcdLockKeys *k, const PredReply *p)
{
	if (k->kind == ETCD_KEY_SEMAPHORE)
		return p->nahead < k->permits;
	return p->pred == NULL;
}

/*
 * etcd_lock_first says whether our key (create_revision rev) holds: no
 * blocking lock key was created before it (for a semaphore: fewer than N
 * permit keys). Keys of nested names and other data do not count.
 */
bool
etcd_lock_first(const EtcdLockKeys *k, int64 rev)
{
	PredReply	p;

	read_pred(k, rev, &p);
	if (p.my_rev != rev)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: this session's place in the lock queue disappeared"),
				 errdetail("The key of this session's lease is gone from etcd; the lease probably expired.")));
	return holds_now(k, &p);
}

/*
 * etcd_key_range_body is the body of a keys-only read of one key.
 */
char *
etcd_key_range_body(const char *key, int keylen)
{
	StringInfoData b;

	initStringInfo(&b);
	appendStringInfoString(&b, "{\"key\":\"");
	etcd_append_b64(&b, key, keylen);
	appendStringInfoString(&b, "\",\"keys_only\":true}");
	return b.data;
}

bool
etcd_parse_create_rev(json_t *root, void *arg)
{
	return parse_create_rev(root, arg);
}

static bool
parse_create_rev(json_t *root, void *arg)
{
	json_t	   *kvs = json_object_get(root, "kvs");

	*(int64 *) arg = 0;
	if (kvs == NULL)
		return true;
	if (!json_is_array(kvs))
		return false;
	return json_array_size(kvs) == 0 ||
		etcd_json_int64(json_array_get(kvs, 0), "create_revision", (int64 *) arg);
}

/*
 * pred_still_there says whether key still exists with create_revision rev.
 * Comparing the revision matters: the predecessor's owner may have released
 * and taken the lock again, re-creating the same key name behind us; that
 * new key is not our predecessor, and waiting for its deletion would stall.
 */
static bool
pred_still_there(const char *key, int keylen, int64 rev)
{
	StringInfoData b;
	int64		cur = 0;

	initStringInfo(&b);
	appendStringInfoString(&b, "{\"key\":\"");
	etcd_append_b64(&b, key, keylen);
	appendStringInfoString(&b, "\",\"keys_only\":true}");
	etcd_request_or_error("/v3/kv/range", b.data, parse_create_rev, &cur, "read the lock queue");
	pfree(b.data);
	return cur == rev;
}

typedef struct KeyRevs
{
	int64		rev;
	int64		modrev;
} KeyRevs;

static bool
parse_key_revs(json_t *root, void *arg)
{
	KeyRevs    *r = arg;
	json_t	   *kvs = json_object_get(root, "kvs");
	json_t	   *kv;

	r->rev = r->modrev = 0;
	if (kvs == NULL)
		return true;
	if (!json_is_array(kvs))
		return false;
	kv = json_array_get(kvs, 0);
	if (kv == NULL)
		return true;
	return etcd_json_int64(kv, "create_revision", &r->rev) &&
		etcd_json_int64(kv, "mod_revision", &r->modrev);
}

/*
 * pred_unchanged says whether key still exists with create_revision rev
 * and mod_revision modrev: a semaphore waiter's predecessor has neither
 * gone nor been admitted (an admitted waiter touches its key).
 */
static bool
pred_unchanged(const char *key, int keylen, int64 rev, int64 modrev)
{
	char	   *body = etcd_key_range_body(key, keylen);
	KeyRevs		cur;

	etcd_request_or_error("/v3/kv/range", body, parse_key_revs, &cur, "read the semaphore queue");
	pfree(body);
	return cur.rev == rev && cur.modrev == modrev;
}

/*
 * etcd_lock_touch changes our key's mod_revision (not its value, lease or
 * create_revision) if it still has create_revision rev: a semaphore
 * waiter admitted after waiting tells the waiter behind it, which watches
 * its key for any change. Only a hint: if it is lost, that waiter looks
 * again within its 1 s safety net.
 */
void
etcd_lock_touch(const EtcdLockKeys *k, int64 rev)
{
	StringInfoData b;
	StringInfoData key64;
	EtcdStatus	st;

	initStringInfo(&key64);
	etcd_append_b64(&key64, k->key, k->keylen);
	initStringInfo(&b);
	appendStringInfo(&b, "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
					 "\"create_revision\":\"" INT64_FORMAT "\"}],"
					 "\"success\":[{\"request_put\":{\"key\":\"%s\",\"ignore_value\":true,\"ignore_lease\":true}}]}",
					 key64.data, rev, key64.data);
	(void) etcd_request("/v3/kv/txn", b.data, NULL, NULL, &st);
	pfree(b.data);
	pfree(key64.data);
}

static void
check_mine(const PredReply *p, int64 rev)
{
	if (p->my_rev != rev)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: this session's place in the lock queue disappeared"),
				 errdetail("The key of this session's lease is gone from etcd; the lease probably expired.")));
}

/*
 * watch_backoff: a watch that cannot be had or keeps breaking must not turn
 * into a request storm. After a broken one, back off (10 ms doubling to
 * 1 s, never past deadline) until a watch works again, sleeping on the
 * latch so interrupts still end it; any other outcome resets the backoff.
 */
static void
watch_backoff(EtcdWatchResult wr, TimestampTz deadline, int *backoff_ms)
{
	long		left;

	if (wr != WATCH_BROKEN)
	{
		*backoff_ms = 0;
		return;
	}
	left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
	*backoff_ms = *backoff_ms ? Min(*backoff_ms * 2, 1000) : 10;
	if (left > 0)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(*backoff_ms, left), etcd_wait_event(ETCD_WAIT_PREDECESSOR));
		ResetLatch(MyLatch);
	}
}

/*
 * sem_wait_once is one round of a semaphore wait, after read p showed at
 * least N permit keys older than ours. Returns true if we now hold a
 * permit; else *wr says how the round ended (the caller reads again).
 *
 * Waking one waiter per release, without losing any: the first waiter
 * (exactly N older keys, all holders) watches the name's whole range for
 * deletions: the deletion of any of those N keys admits it, without
 * another read (no key can be created older than ours). A waiter further
 * back watches its predecessor for any change: a deletion (it gave up) or
 * a touch (it was admitted, see etcd_lock_touch), and then reads again,
 * now perhaps the first waiter. So a release wakes the first waiter, whose
 * admission wakes the next: O(1) each, and admission lags a release by one
 * event.
 */
static bool
sem_wait_once(const EtcdLockKeys *k, int64 rev, PredReply *p,
			  TimestampTz deadline, bool (*lease_ok) (void), EtcdWatchResult *wr)
{
	EtcdStatus	st;
	TimestampTz until = Min(deadline,
							TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000));
	bool		held = false;

	*wr = WATCH_BROKEN;
	if (p->nahead == k->permits)
	{
		PredReply	q;

		if (!etcd_watch_open_ex(k->pfx, k->pfxlen, true, p->header_rev, false, &st))
			return false;
		/* confirm: a deletion before the watch existed is seen here */
		read_pred(k, rev, &q);
		check_mine(&q, rev);
		if (holds_now(k, &q))
			held = true;
		else if (q.nahead == k->permits)
		{
			etcd_watch_rearm(q.header_rev);
			*wr = etcd_watch_wait(until);
			if (*wr == WATCH_DELETED && (lease_ok == NULL || lease_ok()))
			{
				int			i;

				for (i = 0; i < q.nahead && !held; i++)
					held = etcd_watch_saw_delete(q.ahead[i], q.aheadlen[i]);
			}
		}
		else
			*wr = WATCH_DELETED;	/* the queue moved: read again */
	}
	else if (etcd_watch_open_ex(p->pred, p->predlen, false, p->pred_modrev, true, &st))
	{
		if (pred_unchanged(p->pred, p->predlen, p->pred_rev, p->pred_modrev))
			*wr = etcd_watch_wait(until);
		else
			*wr = WATCH_DELETED;
	}
	etcd_watch_close();
	return held;
}

/*
 * etcd_lock_wait waits until our key (create_revision rev) is the oldest
 * under the name. Each round reads our predecessor, watches it (a watch
 * without a start revision, so etcd delivers its deletion at once), then
 * re-reads it so a deletion between the read and the watch is not missed.
 * Returns true when we hold the lock, false if the deadline passed (0 = no
 * deadline). Errors if our key vanished (our lease expired) or lease_ok()
 * says the lease was lost. The caller removes our key on false or error.
 */
static bool
wait_loop(const EtcdLockKeys *k, int64 rev, TimestampTz deadline,
		  bool (*lease_ok) (void))
{
	int			backoff_ms = 0;
	char	   *gone_key = NULL;	/* predecessor last found gone */
	int64		gone_rev = 0;
	TimestampTz next_dl_check = 0;
	int			dl_interval = Max(DeadlockTimeout, 10);
	bool		waited = false;

	if (deadline == 0)
		deadline = DT_NOEND;
	/* a semaphore wait is an OR-wait: not part of the wait-for graph */
	if (DeadlockTimeout > 0 && k->kind != ETCD_KEY_SEMAPHORE)
		next_dl_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DeadlockTimeout);
	for (;;)
	{
		PredReply	p;
		EtcdStatus	st;
		EtcdWatchResult wr = WATCH_TIMEOUT;

		CHECK_FOR_INTERRUPTS();

		/*
		 * After deadlock_timeout, look for a cycle through our lease in the
		 * wait-for graph of every lock under the prefix; again with growing
		 * intervals (up to 16 x deadlock_timeout), since a cycle can close
		 * after our first look and only its victim ends it.
		 */
		if (next_dl_check != 0 && GetCurrentTimestamp() >= next_dl_check)
		{
			etcd_deadlock_check(k, rev);
			dl_interval = Min(dl_interval * 2, Max(DeadlockTimeout, 10) * 16);
			next_dl_check = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), dl_interval);
		}
		if (lease_ok && !lease_ok())
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("etcd_lock: the lease of this session expired while it waited for a lock")));
		read_pred_ex(k, rev, &p, !waited);
		check_mine(&p, rev);
		if (holds_now(k, &p))
		{
			if (waited && k->kind == ETCD_KEY_SEMAPHORE)
				etcd_lock_touch(k, rev);
			return true;
		}
		if (GetCurrentTimestamp() >= deadline)
			return false;
		waited = true;
		if (k->kind == ETCD_KEY_SEMAPHORE)
		{
			if (sem_wait_once(k, rev, &p, deadline, lease_ok, &wr))
			{
				etcd_lock_touch(k, rev);
				return true;
			}
		}
		else if (etcd_watch_open(p.pred, p.predlen, p.pred_rev, &st))
		{
			if (pred_still_there(p.pred, p.predlen, p.pred_rev))
			{
				/*
				 * Any outcome (deletion, broken stream, a second without
				 * news as a safety net) leads to reading the queue again.
				 */
				TimestampTz until = Min(deadline,
										TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000));

				if (next_dl_check != 0)
					until = Min(until, next_dl_check);
				wr = etcd_watch_wait(until);
			}
			else if (gone_key && p.pred_rev == gone_rev && strcmp(gone_key, p.pred) == 0)
				wr = WATCH_BROKEN;	/* "gone" twice, yet listed: the peer is
									 * inconsistent; do not spin */
			else
			{
				wr = WATCH_DELETED;
				if (gone_key)
					pfree(gone_key);
				gone_key = pstrdup(p.pred);
				gone_rev = p.pred_rev;
			}
		}
		else
			wr = WATCH_BROKEN;
		etcd_watch_close();
		if (p.pred)
			pfree(p.pred);

		/*
		 * Handoff without a read: our last read showed the predecessor as
		 * the oldest lock key of the name, and it is gone. No lock key can
		 * be created with a lower revision than ours, so none is older than
		 * ours now: we hold the lock. Rely on it only under the invariant:
		 * our key was created under our lease (this wait's own key, seen in
		 * that read with our revision) and the lease's deadline has not
		 * passed (lease_ok) -- not a watch on our own key: etcd does not
		 * order events across watchers.
		 */
		if (wr == WATCH_DELETED && k->kind != ETCD_KEY_SEMAPHORE && p.pred_oldest &&
			(lease_ok == NULL || lease_ok()))
			return true;

		watch_backoff(wr, deadline, &backoff_ms);
	}
}

bool
etcd_lock_wait(const EtcdLockKeys *k, int64 rev, TimestampTz deadline,
			   bool (*lease_ok) (void))
{
	bool		result;
	int			prev = etcd_gateway_wait_kind(ETCD_WAIT_PREDECESSOR);

	PG_TRY();
	{
		result = wait_loop(k, rev, deadline, lease_ok);
	}
	PG_CATCH();
	{
		etcd_watch_close();
		etcd_gateway_wait_kind(prev);
		PG_RE_THROW();
	}
	PG_END_TRY();
	etcd_gateway_wait_kind(prev);
	return result;
}

/* ---- release ---- */

/*
 * etcd_lock_release deletes key if its create_revision still equals token,
 * so a late release can never remove a newer acquisition. True once etcd
 * answered (whether or not the key was still there).
 */
bool
etcd_lock_release(const char *key, int keylen, int64 token, EtcdStatus *st)
{
	char	   *body;
	const char *path = etcd_release_request(key, keylen, token, &body);
	bool		ok;

	ok = etcd_request(path, body, NULL, NULL, st);
	pfree(body);
	return ok;
}

/*
 * etcd_release_request builds the request that deletes key: a txn that
 * deletes it only if its create_revision is token, or, with token 0 (a
 * queue place whose revision is unknown), a plain delete. Returns the path;
 * *body is palloc'd. Both are safe to resend: the compare makes a late or
 * repeated delete a no-op once the key was re-created; a token-0 delete is
 * only queued while this backend does not use the key (it waits for it).
 */
const char *
etcd_release_request(const char *key, int keylen, int64 token, char **body)
{
	StringInfoData b;
	StringInfoData key64;

	initStringInfo(&key64);
	etcd_append_b64(&key64, key, keylen);
	initStringInfo(&b);
	if (token == 0)
	{
		appendStringInfo(&b, "{\"key\":\"%s\"}", key64.data);
		*body = b.data;
		pfree(key64.data);
		return "/v3/kv/deleterange";
	}
	appendStringInfo(&b, "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
					 "\"create_revision\":\"" INT64_FORMAT "\"}],"
					 "\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}]}",
					 key64.data, token, key64.data);
	pfree(key64.data);
	*body = b.data;
	return "/v3/kv/txn";
}

/*
 * etcd_release_batch_body builds one txn that releases n keys at once, each
 * in a nested txn of its own (etcd 3.3+): delete keys[i] if its
 * create_revision is still tokens[i]. Each compare applies on its own, so
 * one key already gone does not keep the others; as safe to resend as the
 * single release. n is at most ETCD_MAX_TXN_NAMES.
 */
char *
etcd_release_batch_body(char **keys, int *keylens, int64 *tokens, int n)
{
	StringInfoData b;
	int			i;

	initStringInfo(&b);
	appendStringInfoString(&b, "{\"success\":[");
	for (i = 0; i < n; i++)
	{
		StringInfoData k64;

		initStringInfo(&k64);
		etcd_append_b64(&k64, keys[i], keylens[i]);
		appendStringInfo(&b, "%s{\"request_txn\":{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\","
						 "\"result\":\"EQUAL\",\"create_revision\":\"" INT64_FORMAT "\"}],"
						 "\"success\":[{\"request_delete_range\":{\"key\":\"%s\"}}]}}",
						 i ? "," : "", k64.data, tokens[i], k64.data);
		pfree(k64.data);
	}
	appendStringInfoString(&b, "]}");
	return b.data;
}

/* ---- verification ---- */

static bool
parse_succeeded(json_t *root, void *arg)
{
	*(bool *) arg = json_is_true(json_object_get(root, "succeeded"));
	return true;
}

/*
 * etcd_locks_still_held checks, with linearizable reads (read-only txns of
 * compares, up to 128 per txn), that every key still exists with its
 * create_revision: then each is still the oldest under its name, so still
 * held. False if any is gone.
 */
bool
etcd_locks_still_held(char **keys, int *keylens, int64 *tokens, int n)
{
	int			done = 0;

	while (done < n)
	{
		int			batch = Min(n - done, 128);
		int			i;
		bool		succeeded = false;
		StringInfoData b;

		initStringInfo(&b);
		appendStringInfoString(&b, "{\"compare\":[");
		for (i = done; i < done + batch; i++)
		{
			appendStringInfo(&b, "%s{\"key\":\"", i > done ? "," : "");
			etcd_append_b64(&b, keys[i], keylens[i]);
			appendStringInfo(&b, "\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
							 "\"create_revision\":\"" INT64_FORMAT "\"}", tokens[i]);
		}
		appendStringInfoString(&b, "]}");
		etcd_request_or_error("/v3/kv/txn", b.data, parse_succeeded, &succeeded,
							  "verify the locks of this session");
		pfree(b.data);
		if (!succeeded)
			return false;
		done += batch;
	}
	return true;
}

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
 * leader; a full page is cut at its last revision first (page_cut).
 */
static bool
leader_scan(LeaderReply *r, json_t *kvs, bool whole_rev)
{
	json_t	   *kv;
	size_t		i;

	if (!whole_rev)
		r->cut = page_cut(kvs, PRED_PAGE);
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

		if (!kv_fields(kv, &key, &keylen, &rev, &modrev, &lease))
			return false;
		if (r->out->exists ||
			key_kind(r->k->pfx, r->k->pfxlen, key, keylen, &lease, NULL) == ETCD_KEY_NONE)
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
			append_rev_range(&b, k, after, false);
			appendStringInfoString(&b, "},{\"request_range\":");
		}
		appendStringInfoString(&b, "{\"key\":\"");
		etcd_append_b64(&b, k->pfx, k->pfxlen);
		appendStringInfoString(&b, "\",\"range_end\":\"");
		append_range_end(&b, k->pfx, k->pfxlen);
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
		watch_backoff(wr, deadline, &backoff_ms);
	}
}

/* ---- listing holders ---- */

static bool
parse_ttl(json_t *root, void *arg)
{
	return etcd_json_int64(root, "TTL", (int64 *) arg);
}

/*
 * holders_match: name is the name asked for (arg), or nested under it
 * (arg/...), or arg ends with '/' and name is under it; '' is every name.
 * Whole path components: '/sw' is not '/swx'.
 */
static bool
holders_match(const char *name, const char *arg)
{
	size_t		alen = strlen(arg);

	if (alen == 0)
		return true;
	if (strncmp(name, arg, alen) != 0)
		return false;
	return arg[alen - 1] == '/' || name[alen] == '\0' || name[alen] == '/';
}

/*
 * etcd_lock_holders reads every lock key of the name name_prefix and of the
 * names nested under it (holders_match; under etcd_lock.prefix) and returns one entry per holder (kinds_block;
 * a shared lock or a semaphore has several): its key's token, lease and
 * value, its name's number of keys that do not hold, and the lease's
 * remaining TTL. One range read plus one lease lookup per distinct lease.
 */
EtcdHolder *
etcd_lock_holders(const char *prefix, const char *name_prefix, int *nholders)
{
	ListedKeys	r = {0};
	StringInfoData b;
	char	   *start = psprintf("%s%s", prefix ? prefix : "", name_prefix);
	EtcdHolder *items;
	int			i,
				out = 0;

	r.prefix = prefix ? prefix : "";
	r.prefixlen = strlen(r.prefix);
	initStringInfo(&b);
	appendStringInfoChar(&b, '{');
	append_prefix_range(&b, start, strlen(start));

	/*
	 * A report, never an ownership decision: a serializable read (served
	 * by the member asked, without a quorum round) is enough.
	 */
	appendStringInfoString(&b, ",\"serializable\":true}");
	etcd_request_or_error("/v3/kv/range", b.data, parse_listed, &r, "list locks");

	if (r.n > 1)
		qsort(r.keys, r.n, sizeof(ListedKey), listed_cmp);
	items = palloc(sizeof(EtcdHolder) * Max(r.n, 1));

	/*
	 * Keep the keys that hold (the oldest, every shared key with no older
	 * exclusive key of another lease, the first N permit keys); count the
	 * rest of their name as its waiters.
	 */
	for (i = 0; i < r.n;)
	{
		int			end = i,
					j,
					nsem = 0,
					nwait = 0,
					first = out;

		while (end < r.n && strcmp(r.keys[end].name, r.keys[i].name) == 0)
			end++;
		if (!holders_match(r.keys[i].name, name_prefix))
		{
			i = end;
			continue;
		}
		for (j = i; j < end; j++)
		{
			ListedKey  *h = &r.keys[j];
			bool		holds = true;
			int			m;

			if (h->kind == ETCD_KEY_SEMAPHORE)
				holds = nsem++ < h->permits;
			else
				for (m = i; m < j && holds; m++)
					if (r.keys[m].lease != h->lease && kinds_block(h->kind, r.keys[m].kind))
						holds = false;
			if (!holds)
			{
				nwait++;
				continue;
			}
			items[out].name = h->name;
			items[out].token = h->rev;
			items[out].lease_id = h->lease;
			items[out].value = h->value;
			items[out].ttl = -1;
			items[out].kind = h->kind;
			items[out].permits = h->permits;
			out++;
		}
		for (j = first; j < out; j++)
			items[j].waiters = nwait;
		i = end;
	}
	for (i = 0; i < out; i++)
	{
		char		body[64];
		int64		ttl = -1;
		int			j;

		/* a lease holding several names is looked up once */
		for (j = 0; j < i && items[j].lease_id != items[i].lease_id; j++)
			;
		if (j < i)
		{
			items[i].ttl = items[j].ttl;
			continue;
		}
		snprintf(body, sizeof(body), "{\"ID\":\"" INT64_FORMAT "\"}", items[i].lease_id);
		etcd_request_or_error("/v3/lease/timetolive", body, parse_ttl, &ttl,
							  "read a lease");
		items[i].ttl = ttl;
	}
	*nholders = out;
	return items;
}
