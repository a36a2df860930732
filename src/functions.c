/*
 * functions.c
 *		The SQL-callable functions: argument checks, then locktable.c.
 */
#include "postgres.h"

#include <limits.h>

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "etcd_lock.h"
#include "guc.h"
#include "locktable.h"

PG_FUNCTION_INFO_V1(etcd_lock_sql);
PG_FUNCTION_INFO_V1(etcd_try_lock_sql);
PG_FUNCTION_INFO_V1(etcd_xact_lock_sql);
PG_FUNCTION_INFO_V1(etcd_try_xact_lock_sql);
PG_FUNCTION_INFO_V1(etcd_unlock_sql);
PG_FUNCTION_INFO_V1(etcd_unlock_all_sql);
PG_FUNCTION_INFO_V1(etcd_lock_token_sql);

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
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd lock name must not be empty")));
	if (len > ETCD_MAX_NAME)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("etcd lock name is too long (%d bytes)", len),
				 errdetail("Lock names are limited to %d bytes.", ETCD_MAX_NAME)));
	return text_to_cstring(t);
}

/*
 * timeout_ms returns argument 1 in milliseconds: -1 for NULL (no limit),
 * an error for a negative interval (22023). Months count as 30 days.
 */
static int64
timeout_ms(FunctionCallInfo fcinfo)
{
	Interval   *iv;
	double		us;

	if (PG_NARGS() < 2 || PG_ARGISNULL(1))
		return -1;
	iv = PG_GETARG_INTERVAL_P(1);
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

static Datum
lock_common(FunctionCallInfo fcinfo, bool xact)
{
	char	   *name = lock_name(fcinfo);
	int64		timeout = timeout_ms(fcinfo);
	int64		token;

	(void) etcd_acquire(name, xact, true, timeout, &token);
	PG_RETURN_INT64(token);
}

static Datum
try_lock_common(FunctionCallInfo fcinfo, bool xact)
{
	char	   *name = lock_name(fcinfo);
	int64		token;

	PG_RETURN_BOOL(etcd_acquire(name, xact, false, -1, &token));
}

Datum
etcd_lock_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, false);
}

Datum
etcd_xact_lock_sql(PG_FUNCTION_ARGS)
{
	return lock_common(fcinfo, true);
}

Datum
etcd_try_lock_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, false);
}

Datum
etcd_try_xact_lock_sql(PG_FUNCTION_ARGS)
{
	return try_lock_common(fcinfo, true);
}

Datum
etcd_unlock_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);

	PG_RETURN_BOOL(etcd_release(name));
}

Datum
etcd_unlock_all_sql(PG_FUNCTION_ARGS)
{
	check_preloaded();
	etcd_release_all();
	PG_RETURN_VOID();
}

Datum
etcd_lock_token_sql(PG_FUNCTION_ARGS)
{
	char	   *name = lock_name(fcinfo);
	int64		token;

	if (!etcd_token(name, &token))
		PG_RETURN_NULL();
	PG_RETURN_INT64(token);
}
