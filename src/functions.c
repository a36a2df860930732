/*
 * functions.c
 *		The SQL-callable functions: argument checks, then locktable.c.
 */
#include "postgres.h"

#include <limits.h>

#include "catalog/pg_authid_d.h"
#include "common/jsonapi.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/lsyscache.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "etcd_lock.h"
#include "group.h"
#include "guc.h"
#include "lockops.h"
#include "locktable.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(etcd_lock_sql);
PG_FUNCTION_INFO_V1(etcd_try_lock_sql);
PG_FUNCTION_INFO_V1(etcd_xact_lock_sql);
PG_FUNCTION_INFO_V1(etcd_try_xact_lock_sql);
PG_FUNCTION_INFO_V1(etcd_unlock_sql);
PG_FUNCTION_INFO_V1(etcd_unlock_all_sql);
PG_FUNCTION_INFO_V1(etcd_lock_token_sql);
PG_FUNCTION_INFO_V1(etcd_locks_sql);
PG_FUNCTION_INFO_V1(etcd_locks_v2_sql);
PG_FUNCTION_INFO_V1(etcd_lock_holders_sql);
PG_FUNCTION_INFO_V1(etcd_lock_status_sql);
PG_FUNCTION_INFO_V1(etcd_lock_shared_sql);
PG_FUNCTION_INFO_V1(etcd_try_lock_shared_sql);
PG_FUNCTION_INFO_V1(etcd_xact_lock_shared_sql);
PG_FUNCTION_INFO_V1(etcd_try_xact_lock_shared_sql);
PG_FUNCTION_INFO_V1(etcd_unlock_shared_sql);
PG_FUNCTION_INFO_V1(etcd_semaphore_sql);
PG_FUNCTION_INFO_V1(etcd_try_semaphore_sql);
PG_FUNCTION_INFO_V1(etcd_xact_semaphore_sql);
PG_FUNCTION_INFO_V1(etcd_try_xact_semaphore_sql);
PG_FUNCTION_INFO_V1(etcd_unlock_semaphore_sql);
PG_FUNCTION_INFO_V1(etcd_lock_holders_v2_sql);
PG_FUNCTION_INFO_V1(etcd_lock_many_sql);
PG_FUNCTION_INFO_V1(etcd_try_lock_many_sql);
PG_FUNCTION_INFO_V1(etcd_xact_lock_many_sql);
PG_FUNCTION_INFO_V1(etcd_try_xact_lock_many_sql);
PG_FUNCTION_INFO_V1(etcd_campaign_sql);
PG_FUNCTION_INFO_V1(etcd_try_campaign_sql);
PG_FUNCTION_INFO_V1(etcd_proclaim_sql);
PG_FUNCTION_INFO_V1(etcd_resign_sql);
PG_FUNCTION_INFO_V1(etcd_leader_sql);
PG_FUNCTION_INFO_V1(etcd_observe_sql);
PG_FUNCTION_INFO_V1(etcd_lock_key_sql);
PG_FUNCTION_INFO_V1(etcd_lock_stats_sql);
PG_FUNCTION_INFO_V1(etcd_lock_stats_reset_sql);

static void
check_preloaded(void)
{
	if (!etcd_lock_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("etcd_lock must be loaded via shared_preload_libraries"),
				 errhint("Add etcd_lock to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * check_name checks the length (len bytes) of a lock name: not empty, at
 * most ETCD_MAX_NAME bytes (22023).
 */
static void
check_name(int len)
{
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd lock name must not be empty")));
	if (len > ETCD_MAX_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd lock name is too long (%d bytes)", len),
				 errdetail("Lock names are limited to %d bytes.", ETCD_MAX_NAME)));
}

/*
 * lock_name returns argument 0 as a C string after checking it: not NULL
 * (22004), not empty and at most ETCD_MAX_NAME bytes (22023).
 */
static char *
lock_name(FunctionCallInfo fcinfo)
{
	text	   *t;
	int			len;

	check_preloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("etcd lock name must not be null")));
	t = PG_GETARG_TEXT_PP(0);
	len = VARSIZE_ANY_EXHDR(t);
	check_name(len);
	return text_to_cstring(t);
}

/*
 * timeout_ms returns argument argno in milliseconds: -1 for NULL (no limit),
 * an error for a negative interval (22023). Months count as 30 days.
 */
static int64
timeout_ms(FunctionCallInfo fcinfo, int argno)
{
	Interval   *iv;
	double		us;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return -1;
	iv = PG_GETARG_INTERVAL_P(argno);
	us = (double) iv->time + (double) iv->day * USECS_PER_DAY +
		(double) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (us < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd lock timeout must not be negative")));
	if (us / 1000.0 > (double) INT_MAX)
		return INT_MAX;
	return (int64) (us / 1000.0);
}

/*
 * check_scope refuses session-level locks where etcd_lock.allow_session_locks
 * is off (clients behind a transaction pooler). The hint names the
 * transaction-level form of what was called (kind; many: a multi-lock), and
 * for a campaign, which has none, where elections can be used instead
 * (issue 23 item 7: the hint offered etcd_xact_lock for a campaign).
 */
static void
check_scope(bool xact, EtcdKeyKind kind, bool many)
{
	const char *alt;

	if (xact || etcd_lock_allow_session_locks)
		return;
	if (kind == ETCD_KEY_ELECTION)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("session-level etcd locks are not allowed here"),
				 errdetail("etcd_lock.allow_session_locks is off for this role or database; an election campaign is held by the session."),
				 errhint("Elections have no transaction-level form: campaign from a connection that is not behind a transaction pooler (one where allow_session_locks is on).")));
	alt = many ? "etcd_xact_lock_many() or etcd_try_xact_lock_many()" :
		kind == ETCD_KEY_SHARED ? "etcd_xact_lock_shared() or etcd_try_xact_lock_shared()" :
		kind == ETCD_KEY_SEMAPHORE ? "etcd_xact_semaphore() or etcd_try_xact_semaphore()" :
		"etcd_xact_lock() or etcd_try_xact_lock()";
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("session-level etcd locks are not allowed here"),
			 errdetail("etcd_lock.allow_session_locks is off for this role or database."),
			 errhint("Use %s: behind a transaction pooler, a session-level lock would outlive the transaction and pass to the next client.", alt)));
}

/*
 * permits_arg returns argument 1, a semaphore's number of permits: not NULL
 * (22004), 1 to ETCD_MAX_PERMITS (22023).
 */
static int
permits_arg(FunctionCallInfo fcinfo)
{
	int32		n;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("etcd semaphore permits must not be null")));
	n = PG_GETARG_INT32(1);
	if (n < 1 || n > ETCD_MAX_PERMITS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd semaphore permits must be between 1 and %d, not %d",
						ETCD_MAX_PERMITS, n)));
	return n;
}

/*
 * lock_common: the blocking lock functions (timeout is argument 1, or 2
 * for a semaphore, after its permits); try_lock_common: the try-variants.
 */
static Datum
lock_common(FunctionCallInfo fcinfo, EtcdKeyKind kind, bool xact)
{
	char	   *name = lock_name(fcinfo);
	int			permits = kind == ETCD_KEY_SEMAPHORE ? permits_arg(fcinfo) : 0;
	int64		timeout = timeout_ms(fcinfo, kind == ETCD_KEY_SEMAPHORE ? 2 : 1);
	int64		token;

	check_scope(xact, kind, false);
	(void) etcd_acquire(name, kind, permits, NULL, xact, true, timeout, &token);
	PG_RETURN_INT64(token);
}

static Datum
try_lock_common(FunctionCallInfo fcinfo, EtcdKeyKind kind, bool xact)
{
	char	   *name = lock_name(fcinfo);
	int			permits = kind == ETCD_KEY_SEMAPHORE ? permits_arg(fcinfo) : 0;
	int64		token;

	check_scope(xact, kind, false);
	PG_RETURN_BOOL(etcd_acquire(name, kind, permits, NULL, xact, false, -1, &token));
}

Datum
etcd_lock_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, ETCD_KEY_EXCLUSIVE, false);
}

Datum
etcd_xact_lock_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, ETCD_KEY_EXCLUSIVE, true);
}

Datum
etcd_try_lock_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, ETCD_KEY_EXCLUSIVE, false);
}

Datum
etcd_try_xact_lock_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, ETCD_KEY_EXCLUSIVE, true);
}

Datum
etcd_unlock_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);

	PG_RETURN_BOOL(etcd_release(name, ETCD_KEY_EXCLUSIVE));
}

Datum
etcd_lock_shared_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, ETCD_KEY_SHARED, false);
}

Datum
etcd_xact_lock_shared_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, ETCD_KEY_SHARED, true);
}

Datum
etcd_try_lock_shared_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, ETCD_KEY_SHARED, false);
}

Datum
etcd_try_xact_lock_shared_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, ETCD_KEY_SHARED, true);
}

Datum
etcd_unlock_shared_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);

	PG_RETURN_BOOL(etcd_release(name, ETCD_KEY_SHARED));
}

Datum
etcd_semaphore_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, ETCD_KEY_SEMAPHORE, false);
}

Datum
etcd_xact_semaphore_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, ETCD_KEY_SEMAPHORE, true);
}

Datum
etcd_try_semaphore_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, ETCD_KEY_SEMAPHORE, false);
}

Datum
etcd_try_xact_semaphore_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, ETCD_KEY_SEMAPHORE, true);
}

Datum
etcd_unlock_semaphore_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);

	PG_RETURN_BOOL(etcd_release(name, ETCD_KEY_SEMAPHORE));
}

/*
 * text_array returns the elements of a text[] argument as C strings; NULL
 * elements are refused (22004).
 */
static char **
text_array(FunctionCallInfo fcinfo, int argno, const char *what, int *n)
{
	ArrayType  *a = PG_GETARG_ARRAYTYPE_P(argno);
	Datum	   *elems;
	bool	   *nulls;
	char	  **out;
	int			i;

	deconstruct_array(a, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	out = palloc(sizeof(char *) * Max(*n, 1));
	for (i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("etcd lock %s must not contain nulls", what)));
		out[i] = TextDatumGetCString(elems[i]);
	}
	return out;
}

/*
 * many_common: the multi-lock functions. Argument 0 is the names, then
 * (blocking) the timeout and the modes, or (try) the modes. Each name at
 * most once per mode; at most ETCD_MAX_TXN_NAMES names (54000), the
 * operations etcd allows in one txn. Returns the tokens in the order of
 * the names, or (try) whether all were taken.
 */
static Datum
many_common(FunctionCallInfo fcinfo, bool xact, bool wait)
{
	int			modes_arg = wait ? 2 : 1;
	char	  **names;
	char	  **modes = NULL;
	EtcdKeyKind *kinds;
	int64	   *tokens;
	int			n,
				nmodes = 0,
				i,
				j;
	int64		timeout = wait ? timeout_ms(fcinfo, 1) : -1;

	check_preloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("etcd lock names must not be null")));
	names = text_array(fcinfo, 0, "names", &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd lock names must not be empty")));
	if (n > ETCD_MAX_TXN_NAMES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many etcd lock names: %d", n),
				 errdetail("At most %d names can be taken at once: etcd allows %d operations in one transaction (--max-txn-ops).",
						   ETCD_MAX_TXN_NAMES, ETCD_MAX_TXN_NAMES)));
	if (PG_NARGS() > modes_arg && !PG_ARGISNULL(modes_arg))
	{
		modes = text_array(fcinfo, modes_arg, "modes", &nmodes);
		if (nmodes != n)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("etcd lock modes must have one element per name (%d names, %d modes)", n, nmodes)));
	}
	kinds = palloc(sizeof(EtcdKeyKind) * n);
	for (i = 0; i < n; i++)
	{
		check_name(strlen(names[i]));
		if (modes == NULL || strcmp(modes[i], "exclusive") == 0)
			kinds[i] = ETCD_KEY_EXCLUSIVE;
		else if (strcmp(modes[i], "shared") == 0)
			kinds[i] = ETCD_KEY_SHARED;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid etcd lock mode: \"%s\"", modes[i]),
					 errhint("Use \"exclusive\" or \"shared\".")));
		for (j = 0; j < i; j++)
			if (kinds[j] == kinds[i] && strcmp(names[j], names[i]) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("etcd lock name \"%s\" appears twice in the same mode", names[i])));
	}
	check_scope(xact, ETCD_KEY_EXCLUSIVE, true);
	tokens = palloc(sizeof(int64) * n);
	if (!etcd_acquire_many(names, kinds, n, xact, wait, timeout, tokens))
		PG_RETURN_BOOL(false);
	if (!wait)
		PG_RETURN_BOOL(true);
	{
		Datum	   *d = palloc(sizeof(Datum) * n);

		for (i = 0; i < n; i++)
			d[i] = Int64GetDatum(tokens[i]);
		PG_RETURN_ARRAYTYPE_P(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	}
}

Datum
etcd_lock_many_sql(PG_FUNCTION_ARGS)
{
	return many_common(fcinfo, false, true);
}

Datum
etcd_xact_lock_many_sql(PG_FUNCTION_ARGS)
{
	return many_common(fcinfo, true, true);
}

Datum
etcd_try_lock_many_sql(PG_FUNCTION_ARGS)
{
	return many_common(fcinfo, false, false);
}

Datum
etcd_try_xact_lock_many_sql(PG_FUNCTION_ARGS)
{
	return many_common(fcinfo, true, false);
}

/*
 * value_arg returns argument 1, a candidate's value: not NULL (22004), at
 * most ETCD_MAX_VALUE bytes (22023).
 */
#define ETCD_MAX_VALUE	(64 * 1024)
static char *
value_arg(FunctionCallInfo fcinfo)
{
	text	   *t;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("etcd election value must not be null")));
	t = PG_GETARG_TEXT_PP(1);
	if (VARSIZE_ANY_EXHDR(t) > ETCD_MAX_VALUE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd election value is too long (%d bytes)", (int) VARSIZE_ANY_EXHDR(t)),
				 errdetail("Values are limited to %d bytes.", ETCD_MAX_VALUE)));
	return text_to_cstring(t);
}

/*
 * etcd_campaign(name, value, timeout): wait until this session leads the
 * election NAME (etcd's Go concurrency.Election on the same keys), with
 * VALUE; returns the token. Session scope only.
 */
Datum
etcd_campaign_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	char	   *value = value_arg(fcinfo);
	int64		timeout = timeout_ms(fcinfo, 2);
	int64		token;

	check_scope(false, ETCD_KEY_ELECTION, false);
	(void) etcd_acquire(name, ETCD_KEY_ELECTION, 0, value, false, true, timeout, &token);
	PG_RETURN_INT64(token);
}

Datum
etcd_try_campaign_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	char	   *value = value_arg(fcinfo);
	int64		token;

	check_scope(false, ETCD_KEY_ELECTION, false);
	PG_RETURN_BOOL(etcd_acquire(name, ETCD_KEY_ELECTION, 0, value, false, false, -1, &token));
}

Datum
etcd_proclaim_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	char	   *value = value_arg(fcinfo);

	PG_RETURN_INT64(etcd_proclaim(name, value));
}

Datum
etcd_resign_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);

	PG_RETURN_BOOL(etcd_release(name, ETCD_KEY_ELECTION));
}

/* the leader as a row: value, token, lease_id, revision, is_mine */
static Datum
leader_row(FunctionCallInfo fcinfo, const EtcdLeader *l, bool mine)
{
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {0};
	char		hex[24];

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (l->exists && pg_verify_mbstr(GetDatabaseEncoding(), l->value, strlen(l->value), true))
		values[0] = CStringGetTextDatum(l->value);
	else
		nulls[0] = true;		/* none, or not valid in this encoding */
	values[1] = Int64GetDatum(l->token);
	snprintf(hex, sizeof(hex), "%llx", (unsigned long long) l->lease_id);
	values[2] = CStringGetTextDatum(hex);
	values[3] = Int64GetDatum(l->revision);
	nulls[1] = nulls[2] = nulls[3] = !l->exists;
	values[4] = BoolGetDatum(mine);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

Datum
etcd_leader_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	EtcdLeader	l;
	bool		mine;

	etcd_leader_of(name, &l, &mine);
	return leader_row(fcinfo, &l, mine);
}

Datum
etcd_observe_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	int64		last = PG_ARGISNULL(1) ? 0 : PG_GETARG_INT64(1);
	int64		timeout = timeout_ms(fcinfo, 2);
	EtcdLeader	l;
	bool		mine;

	etcd_observe_leader(name, last, timeout, &l, &mine);
	return leader_row(fcinfo, &l, mine);
}

Datum
etcd_unlock_all_sql(PG_FUNCTION_ARGS)
{
	check_preloaded();
	etcd_release_all();
	PG_RETURN_VOID();
}

/*
 * etcd_lock_key(name) (1.2): the key range of a lock on name under the
 * current etcd_lock.prefix, "<prefix><name>/" — what etcdctl and etcd's
 * Go client must name (without the slash) to exclude the SQL holders.
 * Made by etcd_lock_keys, which makes the keys themselves; sends nothing.
 */
Datum
etcd_lock_key_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	EtcdLockKeys k;

	etcd_lock_keys(&k, etcd_lock_prefix, name, 0, ETCD_KEY_EXCLUSIVE, 0);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(k.pfx, k.pfxlen));
}

Datum
etcd_lock_token_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	int64		token;

	/* the exclusive lock's token; else the shared lock's, the permit's */
	if (!etcd_token(name, ETCD_KEY_EXCLUSIVE, &token) &&
		!etcd_token(name, ETCD_KEY_SHARED, &token) &&
		!etcd_token(name, ETCD_KEY_SEMAPHORE, &token) &&
		!etcd_token(name, ETCD_KEY_ELECTION, &token))
		PG_RETURN_NULL();
	PG_RETURN_INT64(token);
}

/*
 * etcd_locks_sql returns one row per lock held or awaited by any backend of
 * this instance, from shared memory (no etcd call), like pg_locks.
 */
/*
 * locks_common returns the rows of etcd_locks: the 8 columns of version
 * 1.0, or (v2, version 1.1) those plus state, database and key. The 1.0
 * function stays, so a server with the new library still serves a
 * database whose extension is at 1.0.
 */
static Datum
locks_common(FunctionCallInfo fcinfo, bool v2)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EtcdLockInfo *copy;
	bool	   *lost;
	int			n = 0,
				i;
	EtcdMono	now = etcd_mono_now();
	uint32		unshown;

	check_preloaded();
	InitMaterializedSRF(fcinfo, 0);

	/* copy under the lock, build tuples after */
	copy = palloc(sizeof(EtcdLockInfo) * etcd_shared->ninfos);
	lost = palloc(sizeof(bool) * etcd_shared->ninfos);
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	for (i = 0; i < etcd_shared->ninfos; i++)
	{
		EtcdLockInfo *li = &etcd_shared->infos[i];
		EtcdLeaseSlot *slot;

		if (li->mode == LOCKINFO_FREE)
			continue;
		slot = li->owner >= 0 && li->owner < etcd_shared->nslots ?
			&etcd_shared->slots[li->owner] : NULL;
		/* the lease lapsed or etcd reported it gone: not held any more */
		lost[n] = slot == NULL || slot->lease_id != li->lease_id ||
			slot->state != LEASE_LIVE || now >= slot->deadline;
		copy[n++] = *li;
	}
	LWLockRelease(etcd_shared->lock);
	unshown = pg_atomic_read_u32(&etcd_shared->counters.unshown);

	for (i = 0; i < n; i++)
	{
		Datum		values[13];
		bool		nulls[13] = {0};
		EtcdLockInfo *li = &copy[i];
		bool		held = li->mode == LOCKINFO_HELD;
		char		hex[24];

		values[0] = Int32GetDatum(li->pid);
		values[1] = CStringGetTextDatum(li->name);
		values[2] = CStringGetTextDatum(li->nsession > 0 && li->nxact > 0 ? "session+xact" :
										li->nxact > 0 ? "xact" : "session");
		values[3] = CStringGetTextDatum(held ? "held" : "waiting");
		values[4] = Int32GetDatum(held ? li->nsession + li->nxact : 0);
		values[5] = Int64GetDatum(li->token);
		nulls[5] = !held;
		snprintf(hex, sizeof(hex), "%llx", (unsigned long long) li->lease_id);
		values[6] = CStringGetTextDatum(hex);
		values[7] = TimestampTzGetDatum(li->since);
		if (v2)
		{
			char	   *db = get_database_name(li->dbid);

			values[8] = CStringGetTextDatum(lost[i] ? "lost" : held ? "held" : "waiting");
			values[9] = CStringGetTextDatum(db ? db : "");
			nulls[9] = db == NULL;
			values[10] = CStringGetTextDatum(psprintf("%s%s/%s%s", li->prefix, li->name, hex,
													  etcd_key_marker(li->kind, li->permits)));
			values[11] = CStringGetTextDatum(etcd_kind_name(li->kind));
			values[12] = Int32GetDatum(li->permits);
			nulls[12] = li->kind != ETCD_KEY_SEMAPHORE;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	if (unshown > 0)
		ereport(NOTICE,
				(errmsg("etcd_locks: %u lock(s) of this instance are not shown", unshown),
				 errhint("Raise etcd_lock.max_locks (needs a restart).")));
	return (Datum) 0;
}

Datum
etcd_locks_sql(PG_FUNCTION_ARGS)
{
	return locks_common(fcinfo, false);
}

Datum
etcd_locks_v2_sql(PG_FUNCTION_ARGS)
{
	return locks_common(fcinfo, true);
}

/*
 * etcd_lock_status_sql: the instance's etcd_lock state in one row, from
 * shared memory (no etcd call): worker, etcd reachability as the worker
 * sees it, leases, release queue, counters.
 */
Datum
etcd_lock_status_sql(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[16];
	bool		nulls[16] = {0};
	int			i,
				leases = 0,
				queued = 0,
				attempted = 0;
	pid_t		worker;
	bool		reachable;
	TimestampTz since;
	char		endpoint[256];
	char		last_error[256];
	char		auth_error[256];
	EtcdCounters *c;

	check_preloaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	worker = etcd_shared->worker_pid;
	reachable = etcd_shared->etcd_reachable;
	since = etcd_shared->reachable_since;
	strlcpy(endpoint, etcd_shared->endpoint, sizeof(endpoint));
	strlcpy(last_error, etcd_shared->last_error, sizeof(last_error));
	strlcpy(auth_error, etcd_shared->auth_error, sizeof(auth_error));
	for (i = 0; i < etcd_shared->nbackends; i++)
		if (etcd_shared->slots[i].state == LEASE_LIVE)
			leases++;
	for (i = 0; i < etcd_shared->nrelused; i++)
	{
		EtcdRelease *r = &etcd_shared->releases[i];

		if (r->state == REL_FREE)
			continue;
		queued++;
		if (r->attempted)
			attempted++;
	}
	LWLockRelease(etcd_shared->lock);
	c = &etcd_shared->counters;

	values[0] = Int32GetDatum(worker);
	nulls[0] = worker == 0;
	values[1] = BoolGetDatum(reachable);
	values[2] = TimestampTzGetDatum(since);
	values[3] = CStringGetTextDatum(endpoint);
	nulls[3] = endpoint[0] == '\0';
	values[4] = Int32GetDatum(leases);
	values[5] = Int32GetDatum(queued);
	values[6] = Int32GetDatum(attempted);
	values[7] = Int32GetDatum((int32) pg_atomic_read_u32(&c->owed));
	values[8] = Int64GetDatum((int64) pg_atomic_read_u64(&c->requests));
	values[9] = Int64GetDatum((int64) pg_atomic_read_u64(&c->failures));
	values[10] = Int64GetDatum((int64) pg_atomic_read_u64(&c->failovers));
	values[11] = Int64GetDatum((int64) pg_atomic_read_u64(&c->leases_lost));
	values[12] = Int64GetDatum((int64) pg_atomic_read_u64(&c->authentications));
	values[13] = Int32GetDatum((int32) pg_atomic_read_u32(&c->unshown));
	/* 1.2's view has two more columns; 1.1's ends here */
	values[14] = CStringGetTextDatum(last_error);
	nulls[14] = last_error[0] == '\0';
	values[15] = CStringGetTextDatum(auth_error);
	nulls[15] = auth_error[0] == '\0';
	if (tupdesc->natts != 14 && tupdesc->natts != 16)
		elog(ERROR, "etcd_lock_status: %d columns, expected 14 or 16", tupdesc->natts);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * etcd_lock_stats_sql: what this instance's locks cost etcd, since the last
 * etcd_lock_stats_reset (1.3): the acquire and release txns and the etcd
 * requests they took (group commit's batches, their sizes), lock calls by
 * outcome, waits and handoffs, the instance's HTTP requests, failures,
 * failovers and lost leases, and the txns' latency percentiles.
 */
#define STATS_COLS 23
Datum
etcd_lock_stats_sql(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[STATS_COLS];
	bool		nulls[STATS_COLS] = {0};
	EtcdGroupStats g;
	EtcdStatsBase base;
	EtcdCounters *c = NULL;
	int			i = 0;
	double		q[3] = {0.5, 0.9, 0.99};

	check_preloaded();
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != STATS_COLS)
		elog(ERROR, "etcd_lock_stats: %d columns, expected %d", tupdesc->natts, STATS_COLS);
	etcd_group_stats(&g);
	LWLockAcquire(etcd_shared->lock, LW_SHARED);
	base = etcd_shared->stats_base;
	LWLockRelease(etcd_shared->lock);
	c = &etcd_shared->counters;

	values[i++] = Int64GetDatum((int64) g.txns[ETCD_GROUP_ACQUIRE]);
	values[i++] = Int64GetDatum((int64) g.txns[ETCD_GROUP_RELEASE]);
	values[i++] = Int64GetDatum((int64) g.requests);
	values[i++] = Int64GetDatum((int64) g.batches);
	values[i++] = Int64GetDatum((int64) g.members);
	nulls[i] = g.batches == 0;
	values[i++] = Float8GetDatum(g.batches ? (double) g.members / (double) g.batches : 0);
	values[i++] = Int32GetDatum(g.max_members);
	values[i++] = Int64GetDatum((int64) g.resent_alone);
	values[i++] = Int32GetDatum(g.max_ops);
	/* acquired, busy, timed out, failed, waits, handoffs: the view's order */
	for (int k = 0; k < ETCD_CALL_NKINDS; k++)
		values[i++] = Int64GetDatum((int64) pg_atomic_read_u64(&c->calls[k]));
	values[i++] = Int64GetDatum((int64) (pg_atomic_read_u64(&c->requests) - base.requests));
	values[i++] = Int64GetDatum((int64) (pg_atomic_read_u64(&c->failures) - base.failures));
	values[i++] = Int64GetDatum((int64) (pg_atomic_read_u64(&c->failovers) - base.failovers));
	values[i++] = Int64GetDatum((int64) (pg_atomic_read_u64(&c->leases_lost) - base.leases_lost));
	for (int j = 0; j < 3; j++)
	{
		double		ms = etcd_group_percentile(&g, q[j]);

		nulls[i] = ms < 0;
		values[i++] = Float8GetDatum(ms);
	}
	values[i++] = TimestampTzGetDatum(base.reset_at);
	Assert(i == STATS_COLS);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* etcd_lock_stats_reset: etcd_lock_stats counts from now */
Datum
etcd_lock_stats_reset_sql(PG_FUNCTION_ARGS)
{
	check_preloaded();
	etcd_group_stats_reset();
	etcd_stats_reset();
	PG_RETURN_VOID();
}

/*
 * has_wide_escape says whether JSON text has a \u escape of a non-ASCII
 * code point (conservatively: any "\u" followed by 4 hex digits >= 0x80).
 */
static bool
has_wide_escape(const char *v)
{
	const char *p;

	for (p = strstr(v, "\\u"); p != NULL; p = strstr(p + 1, "\\u"))
	{
		unsigned int c = 0;
		int			i;

		for (i = 2; i < 6 && isxdigit((unsigned char) p[i]); i++)
			c = c * 16 + (unsigned int) (isdigit((unsigned char) p[i]) ? p[i] - '0' :
										 (tolower((unsigned char) p[i]) - 'a' + 10));
		if (i == 6 && c >= 0x80)
			return true;
	}
	return false;
}

/*
 * holder_jsonb turns a holder's key value into jsonb, or NULL when it is
 * not a JSON object (etcd's Go mutex stores an empty value), or cannot be
 * one in this database (*unrepresentable): in a database that is not
 * UTF8, jsonb refuses a \u escape of a character outside the encoding
 * (22P05), and any etcd client may write such a value - the report must
 * not fail for it.
 */
static bool
holder_jsonb(const char *value, Datum *out, bool *unrepresentable)
{
	JsonLexContext *lex;

	if (value[0] != '{' || strstr(value, "\\u0000") != NULL)
		return false;
	if (GetDatabaseEncoding() != PG_UTF8 && has_wide_escape(value))
	{
		*unrepresentable = true;
		return false;
	}
	if (pg_verify_mbstr(GetDatabaseEncoding(), value, strlen(value), true) == false)
		return false;
	lex = etcd_json_lex(pstrdup(value), strlen(value), GetDatabaseEncoding());
	if (pg_parse_json(lex, &nullSemAction) != JSON_SUCCESS)
		return false;
	*out = DirectFunctionCall1(jsonb_in, CStringGetDatum(value));
	return true;
}

/*
 * etcd_lock_holders_sql reads etcd: one row per lock name under the given
 * name prefix, with its holder, waiters and the holder lease's TTL. The
 * holder's details (who, where) are shown only to members of
 * pg_read_all_stats (and superusers); others see names and tokens.
 */
static Datum holders_common(FunctionCallInfo fcinfo, bool v2);

Datum
etcd_lock_holders_sql(PG_FUNCTION_ARGS)
{
	return holders_common(fcinfo, false);
}

/*
 * etcd_lock_holders_v2_sql (1.1): one row per holder (a shared lock or a
 * semaphore has several), with its mode and a semaphore's permits.
 */
Datum
etcd_lock_holders_v2_sql(PG_FUNCTION_ARGS)
{
	return holders_common(fcinfo, true);
}

static Datum
holders_common(FunctionCallInfo fcinfo, bool v2)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name_prefix;
	EtcdHolder *h;
	int			n,
				i,
				nbad = 0,
				nwide = 0;
	bool		details;

	check_preloaded();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("etcd lock name prefix must not be null")));
	name_prefix = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strlen(name_prefix) > ETCD_MAX_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd lock name prefix is too long")));
	details = has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);

	InitMaterializedSRF(fcinfo, 0);
	h = etcd_lock_holders(etcd_lock_prefix, name_prefix, &n);
	for (i = 0; i < n; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {0};
		char		hex[24];
		bool		wide = false;

		/*
		 * Names come from etcd, where any client may write any bytes: one
		 * that is not valid in the database encoding is never made a text
		 * value.
		 */
		if (!pg_verify_mbstr(GetDatabaseEncoding(), h[i].name, strlen(h[i].name), true))
		{
			nbad++;
			continue;
		}
		values[0] = CStringGetTextDatum(h[i].name);
		values[1] = Int64GetDatum(h[i].token);
		snprintf(hex, sizeof(hex), "%llx", (unsigned long long) h[i].lease_id);
		values[2] = CStringGetTextDatum(hex);
		nulls[3] = !details || !holder_jsonb(h[i].value, &values[3], &wide);
		nwide += wide;
		wide = false;
		values[4] = Int32GetDatum(h[i].waiters);
		values[5] = Int64GetDatum(h[i].ttl);
		nulls[5] = h[i].ttl < 0;
		if (v2)
		{
			values[6] = CStringGetTextDatum(etcd_kind_name(h[i].kind));
			values[7] = Int32GetDatum(h[i].permits);
			nulls[7] = h[i].kind != ETCD_KEY_SEMAPHORE;
		}
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	if (nwide > 0)
		ereport(NOTICE,
				(errmsg("etcd_lock_holders: %d holder value(s) shown as NULL: not representable in the database encoding", nwide),
				 errhint("Some client wrote holder values with characters that %s cannot hold.",
						 GetDatabaseEncodingName())));
	if (nbad > 0)
		ereport(NOTICE,
				(errmsg("etcd_lock_holders: skipped %d lock name(s) not valid in the database encoding", nbad),
				 errhint("Some client wrote lock keys whose names are not valid %s.",
						 GetDatabaseEncodingName())));
	return (Datum) 0;
}
