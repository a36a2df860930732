/*
 * deadlock.c
 *		Deadlock detection across instances: after deadlock_timeout a waiter
 *		reads every lock key under the prefix at one revision, builds the
 *		wait-for graph of the SQL holders (their keys' values name what
 *		each waits for) and, on a cycle, fails the youngest waiter (40P01).
 *
 * May call: keys.h (listing), gateway.h. Called by the wait loop
 * (lockops.c).
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
		json_t	   *kv = ek_first_kv(responses, i, &ok);
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
	ek_append_prefix_range(&b, k->prefix, k->prefixlen);
	appendStringInfo(&b, ",\"keys_only\":true,\"limit\":\"%d\"}", r.max + 1);

	/*
	 * Detection must never end a wait by itself: if etcd refuses the read
	 * (a role that may not read the whole prefix, say), say so once in the
	 * log and go on waiting without it.
	 */
	if (!etcd_request("/v3/kv/range", b.data, ek_parse_listed, &r, &st))
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
	qsort(r.keys, r.n, sizeof(ListedKey), ek_listed_cmp);

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

				if (h->lease == w->lease || !ek_kinds_block(w->kind, h->kind))
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
