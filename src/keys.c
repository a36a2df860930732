/*
 * keys.c
 *		The key scheme: how a lock name becomes etcd keys, what a listed key
 *		is (a lock key of which kind and lease, or other data), the one rule
 *		of which kinds block which, and reading lists and pages of keys.
 *
 * Owns the key names and their parsing; knows nothing of waiting, leases
 * or SQL. May call: gateway.h (base64, JSON helpers). Called by the
 * algorithm's modules (lockops.c, deadlock.c, election.c, holders.c) and,
 * through lockops.h, by the local lock table and the worker.
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
 * ek_append_range_end appends the base64 of the end of the range of all keys
 * starting with pfx: pfx with its last byte incremented, dropping trailing
 * 0xff bytes ("\0" means "to the end of the key space").
 */
void
ek_append_range_end(StringInfo buf, const char *pfx, int len)
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

/*
 * ek_kv_fields reads what the lock algorithm needs of one listed key: the key
 * (palloc'd, decoded), its create_revision, mod_revision and the lease etcd
 * listed with it — 0 when the answer does not say, which is not "no lease":
 * etcd 3.7.0-3.7.3 leave `lease` out of every keys-only answer (etcd issue
 * #22209). Only ek_key_kind reads that lease, and it decides from the key's
 * name. False if the entry is malformed.
 */
bool
ek_kv_fields(json_t *kv, char **key, int *keylen, int64 *rev, int64 *modrev,
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
const char *
ek_kind_conflict(const EtcdLockKeys *k, EtcdKeyKind kind, int permits)
{
	if ((k->kind == ETCD_KEY_SEMAPHORE) != (kind == ETCD_KEY_SEMAPHORE))
		return k->kind == ETCD_KEY_SEMAPHORE ? "lock" : "semaphore";
	if (kind == ETCD_KEY_SEMAPHORE && permits != k->permits)
		return psprintf("semaphore with %d permits", permits);
	return NULL;
}

/* an SQL lock holder's value (lt_value), as opposed to a candidate's */
bool
ek_is_lock_holder_value(const char *v)
{
	return v != NULL && strncmp(v, "{\"instance\":", 12) == 0;
}

/*
 * ek_kinds_block is the one rule of which older lock key keeps a key from
 * holding (for keys of different leases: a session's own keys never block
 * each other): exclusive on either side blocks, shared keys never block
 * shared ones, and permit keys only count against permit keys (the first N
 * hold: the caller counts). Used by the waits, the try-lock, the deadlock
 * detector and etcd_lock_holders.
 */
bool
ek_kinds_block(EtcdKeyKind mine, EtcdKeyKind older)
{
	if (mine == ETCD_KEY_SEMAPHORE || older == ETCD_KEY_SEMAPHORE)
		return mine == older;
	return mine != ETCD_KEY_SHARED || older != ETCD_KEY_SHARED;
}

/*
 * ek_key_blocks says whether a lock key of the name (kind, lease) keeps k's
 * key from holding when it is older (ek_kinds_block), or for a semaphore
 * counts as one of the permit keys ahead.
 */
bool
ek_key_blocks(const EtcdLockKeys *k, EtcdKeyKind kind, int64 lease)
{
	return lease != k->lease_id && ek_kinds_block(k->kind, kind);
}

/*
 * ek_first_kv returns kvs[0] of responses[i].response_range, or NULL if the
 * range is empty; sets *ok false on a malformed answer.
 */
json_t *
ek_first_kv(json_t *responses, size_t i, bool *ok)
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

/* ---- which keys are lock keys ---- */

/*
 * ek_key_kind says what key (keylen bytes) is to the name whose range is pfx:
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
EtcdKeyKind
ek_key_kind(const char *pfx, int pfxlen, const char *key, int keylen, int64 *lease,
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
 * ek_listed_lock_name says whether key (keylen bytes, attached to lease),
 * listed from a range over prefix, is the lock key of some name: returns
 * the length of that name (the part between the prefix and the last
 * slash) and the key's kind (*kind, *permits), or -1 for any other key
 * (lockops' rule, ek_key_kind).
 */
int
ek_listed_lock_name(const char *prefix, int prefixlen, const char *key,
				 int keylen, int64 *lease, EtcdKeyKind *kind, int *permits)
{
	const char *slash = (int) strlen(key) == keylen ? strrchr(key, '/') : NULL;

	if (slash == NULL || keylen < prefixlen || slash < key + prefixlen + 1 ||
		memcmp(key, prefix, prefixlen) != 0)
		return -1;
	*permits = 0;
	*kind = ek_key_kind(key, slash + 1 - key, key, keylen, lease, permits);
	if (*kind == ETCD_KEY_NONE)
		return -1;
	return (int) (slash - key) - prefixlen;
}

/*
 * ek_parse_listed keeps the lock keys among the keys of a range over the
 * prefix (other applications' keys are skipped): for each, the name is what
 * lies between the prefix and the last slash.
 */
bool
ek_parse_listed(json_t *root, void *arg)
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

		if (!ek_kv_fields(kv, &key, &keylen, &rev, &modrev, &lease))
			return false;
		namelen = ek_listed_lock_name(r->prefix, r->prefixlen, key, keylen, &lease,
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
int
ek_listed_cmp(const void *a, const void *b)
{
	const ListedKey *x = a;
	const ListedKey *y = b;
	int			c = strcmp(x->name, y->name);

	if (c != 0)
		return c;
	return x->rev < y->rev ? -1 : x->rev > y->rev;
}

/*
 * ek_append_prefix_range appends "key" and "range_end" (without the braces)
 * of every key starting with start; an empty start is the whole key space.
 */
void
ek_append_prefix_range(StringInfo b, const char *start, int len)
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
		ek_append_range_end(b, start, len);
	}
	appendStringInfoChar(b, '"');
}

/*
 * ek_page_cut makes a page of keys read with a limit safe to page on from. The
 * page ends at some create revision L; when it is full, more keys created
 * at L may lie beyond the limit (one txn creates many keys at one
 * revision: a multi-lock's, a name's and its nested name's), and paging on
 * "below L" or "above L" would skip them. So the page's entries at L are
 * dropped and L is returned: the caller reads every key created at L
 * (ek_append_rev_range: one revision holds at most one txn's keys) and pages
 * on past L. Returns 0 when the page is not full (nothing beyond it).
 */
int64
ek_page_cut(json_t *kvs, int limit)
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
 * ek_append_rev_range appends a range request (JSON object body) of every key
 * under the name created at revision rev (no limit: one txn's keys).
 */
void
ek_append_rev_range(StringInfo b, const EtcdLockKeys *k, int64 rev, bool keys_only)
{
	appendStringInfoString(b, "{\"key\":\"");
	etcd_append_b64(b, k->pfx, k->pfxlen);
	appendStringInfoString(b, "\",\"range_end\":\"");
	ek_append_range_end(b, k->pfx, k->pfxlen);
	appendStringInfo(b, "\",%s\"min_create_revision\":\"" INT64_FORMAT "\","
					 "\"max_create_revision\":\"" INT64_FORMAT "\"}",
					 keys_only ? "\"keys_only\":true," : "", rev, rev);
}
