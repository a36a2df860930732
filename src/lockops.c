/*
 * lockops.c
 *		etcd_lock's lock algorithm, expressed as etcd requests: acquire
 *		(one name or several in one txn), wait (the predecessor watch,
 *		handoff, semaphore admission), release, verification.
 *
 * It is etcd's Go concurrency.Mutex algorithm, so both exclude each other:
 * a lock name N is the key range "<prefix>N/", each contender puts its key
 * "<prefix>N/<lease hex>" attached to its lease, and the holder is the key
 * with the lowest create_revision. A waiter watches only its predecessor
 * (the key created just before its own), so one release wakes one waiter.
 * See src/README.md for the invariants.
 *
 * May call: keys.h (the key scheme), deadlock detection, gateway.h. The key
 * scheme, lease requests, deadlock detection, elections and the holders
 * report are in keys.c, lease.c, deadlock.c, election.c and holders.c.
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
#include "group.h"
#include "keys.h"

/* ---- acquire ---- */

static bool parse_create_rev(json_t *root, void *arg);

#define TRY_PAGE	64			/* oldest keys a failed try-lock reads */

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
 * the order asked for) for the first key that blocks ours (ek_key_blocks) or
 * is ours, counts the blocking ones, and notes whether the page's first
 * lock key is of another kind family (ek_kind_conflict). Keys of nested names
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

		if (!ek_kv_fields(kv, &key, &keylen, &rev, &modrev, &lease))
			return false;
		out->nread++;
		out->last_rev = rev;
		kind = ek_key_kind(k->pfx, k->pfxlen, key, keylen, &lease, &permits);
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
			out->conflict = ek_kind_conflict(k, kind, permits);
		out->seen_lock_key = true;
		mine = keylen == k->keylen && memcmp(key, k->key, keylen) == 0;
		blocks = !mine && ek_key_blocks(k, kind, lease);
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
 * under the name (see ek_kind_conflict).
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
		mine = ek_first_kv(responses, 0, &ok);
		if (!ok || !etcd_json_int64(mine, "create_revision", &r->rev) ||
			!json_is_object(rr))
			return false;
		return try_scan(r, json_object_get(rr, "kvs"));
	}
	else if (!succeeded)
	{
		/* our key existed already: read its create_revision */
		mine = ek_first_kv(responses, 0, &ok);
		if (!ok || !etcd_json_int64(mine, "create_revision", &r->rev))
			return false;
		if (mine == NULL)
			return false;		/* existed at compare, gone at range: cannot be */
	}
	oldest = ek_first_kv(responses, 1, &ok);
	if (!ok || oldest == NULL ||
		!etcd_json_int64(oldest, "create_revision", &oldest_rev))
		return false;
	okey = json_object_get(oldest, "key");
	r->held = oldest_rev == r->rev && json_is_string(okey) &&
		strcmp(json_string_value(okey), r->key_b64) == 0;
	return r->rev > 0;
}

/*
 * acquire_send sends an acquire txn, shown as the EtcdLockAcquire wait
 * event while it is out.
 */
static void
acquire_send(const char *body, EtcdParseFn parse, void *arg, const char *what,
			 char *const *tags, const int *taglens, int ntags)
{
	int			prev = etcd_gateway_wait_kind(ETCD_WAIT_ACQUIRE);

	PG_TRY();
	{
		EtcdStatus	st;

		if (!etcd_group_request(ETCD_GROUP_ACQUIRE, body, parse, arg,
								tags, taglens, ntags, &st))
			etcd_report_status(&st, what);
	}
	PG_FINALLY();
	{
		etcd_gateway_wait_kind(prev);
	}
	PG_END_TRY();
}

/* ks[0..n-1]: the names it writes; a batch never holds two txns of one */
static void
acquire_request(const char *body, EtcdParseFn parse, void *arg, const char *what,
				const EtcdLockKeys *ks, int n)
{
	char	   *tags[ETCD_GROUP_MAX_TAGS];
	int			taglens[ETCD_GROUP_MAX_TAGS];
	int			ntags = n <= ETCD_GROUP_MAX_TAGS ? n : 0;

	for (int i = 0; i < ntags; i++)
	{
		tags[i] = ks[i].pfx;
		taglens[i] = ks[i].pfxlen;
	}
	acquire_send(body, parse, arg, what, tags, taglens, ntags);
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
		ek_append_range_end(&b, k->pfx, k->pfxlen);
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
		ek_append_range_end(&oldest, k->pfx, k->pfxlen);
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
	acquire_request(b.data, parse_acquire, &r, "acquire a lock", k, 1);
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
			json_t	   *mine = ek_first_kv(responses, i, &ok);
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
		json_t	   *oldest = ek_first_kv(responses, r->n + i, &ok);
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
		ek_append_range_end(&b, ks[i].pfx, ks[i].pfxlen);
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
	memset(held, 0, sizeof(bool) * (size_t) Max(n, 0));
	/* a multi-lock of a few names may go in a batch: its keys still share one
	 * revision, and no other txn of these names is in that batch */
	acquire_request(b.data, parse_acquire_many, &r, "acquire locks", ks,
					r.with_oldest ? n : 0);
	pfree(b.data);
	pfree(val64.data);
	if (r.mixed || r.rev <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock: could not acquire the locks at once: a key of this session exists already for some of them"),
				 errhint("An earlier release of one of these locks may not have reached etcd yet; try again.")));
	*rev = r.rev;
}

/* ---- wait ---- */



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
 * pred_scan looks through a page of keys (newest first) for the first key
 * that blocks ours: our predecessor. A full page is cut at its last
 * revision (r->pred_cut, see ek_page_cut) unless it is a whole revision.
 */
static bool
pred_scan(PredReply *r, json_t *kvs, bool whole_rev)
{
	LockKeyScan ks = {0};

	if (!whole_rev)
		r->pred_cut = ek_page_cut(kvs, PRED_PAGE);
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
		r->oldest_cut = ek_page_cut(kvs, PRED_PAGE);
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
		json_t	   *h = ek_first_kv(responses, 3, &ok);
		json_t	   *jval = h ? json_object_get(h, "value") : NULL;
		char	   *key,
				   *val;
		int			keylen;
		int64		hrev,
					hmod,
					hlease;

		if (!ok)
			return false;
		if (h && ek_kv_fields(h, &key, &keylen, &hrev, &hmod, &hlease) &&
			ek_key_kind(r->k->pfx, r->k->pfxlen, key, keylen, &hlease, NULL) == ETCD_KEY_EXCLUSIVE &&
			json_is_string(jval) &&
			(val = etcd_b64_decode(json_string_value(jval), NULL)) != NULL)
		{
			/*
			 * A name is a lock or an election: an SQL lock holder's record
			 * under an election, or a candidate's value (not a Go mutex's
			 * empty one) under a lock, is a mix-up.
			 */
			if (r->k->kind == ETCD_KEY_ELECTION && ek_is_lock_holder_value(val))
				r->conflict = "lock";
			else if (r->k->kind != ETCD_KEY_ELECTION && r->k->kind != ETCD_KEY_SEMAPHORE &&
					 val[0] != '\0' && !ek_is_lock_holder_value(val))
				r->conflict = "election";
		}
	}
	mine = ek_first_kv(responses, 0, &ok);
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
	ek_append_range_end(b, k->pfx, k->pfxlen);
	appendStringInfo(b, "\",\"sort_order\":\"%s\",\"sort_target\":\"CREATE\","
					 "\"limit\":\"%d\",\"keys_only\":true,\"max_create_revision\":\"" INT64_FORMAT "\"",
					 oldest_first ? "ASCEND" : "DESCEND", PRED_PAGE, below - 1);
	if (above > 0)
		appendStringInfo(b, ",\"min_create_revision\":\"" INT64_FORMAT "\"", above + 1);
	appendStringInfoChar(b, '}');
}

/*
 * read_past_cut sends the follow-up of a page cut at revision cut
 * (ek_page_cut): one txn of every key at that revision and the next page
 * (below/above as append_pred_range), parsed by parse_pred_more.
 */
static void
read_past_cut(StringInfo b, const EtcdLockKeys *k, PredReply *r, int64 cut,
			  int64 below, int64 above, bool oldest_first, const char *what)
{
	resetStringInfo(b);
	appendStringInfoString(b, "{\"success\":[{\"request_range\":");
	ek_append_rev_range(b, k, cut, true);
	appendStringInfoString(b, "},{\"request_range\":");
	append_pred_range(b, k, below, above, oldest_first);
	appendStringInfoString(b, "}]}");
	etcd_request_or_error("/v3/kv/txn", b->data, parse_pred_more, r, what);
}

/*
 * read_pred reads, in one txn, our key, our predecessor in the queue (the
 * blocking key of the name created last before ours: see ek_key_blocks; keys
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
		ek_append_range_end(&b, k->pfx, k->pfxlen);
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
 * ek_watch_backoff: a watch that cannot be had or keeps breaking must not turn
 * into a request storm. After a broken one, back off (10 ms doubling to
 * 1 s, never past deadline) until a watch works again, sleeping on the
 * latch so interrupts still end it; any other outcome resets the backoff.
 */
void
ek_watch_backoff(EtcdWatchResult wr, TimestampTz deadline, int *backoff_ms)
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

		ek_watch_backoff(wr, deadline, &backoff_ms);
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
	int			namelen = keylen;
	bool		ok;

	while (namelen > 0 && key[namelen - 1] != '/')
		namelen--;

	/* a compare-and-delete may go in a batch, under its name (group.c) */
	if (token != 0 && namelen > 0)
	{
		char	   *tag = unconstify(char *, key);

		ok = etcd_group_request(ETCD_GROUP_RELEASE, body, NULL, NULL, &tag, &namelen, 1, st);
	}
	else
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
