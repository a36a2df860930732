/*
 * guc.c
 *		Every configuration parameter of etcd_lock, defined in one place.
 *
 * endpoints and lease_ttl are PGC_SIGHUP: the background worker keeps the
 * backends' leases alive, so it must talk to the same etcd as they do.
 * prefix is superuser-only: it confines every key the extension touches.
 */
#include "postgres.h"

#include <ctype.h>

#include "miscadmin.h"
#include "utils/guc.h"

#include "guc.h"

char	   *etcd_lock_endpoints = NULL;
char	   *etcd_lock_prefix = NULL;
int			etcd_lock_lease_ttl = 10;
int			etcd_lock_request_timeout = 5000;
int			etcd_lock_on_lease_loss = ON_LOSS_CANCEL;
bool		etcd_lock_verify_on_commit = false;
bool		etcd_lock_group_commit = true;
int			etcd_lock_group_commit_inflight = 2;
int			etcd_lock_release_wait = 1000;
bool		etcd_lock_allow_session_locks = true;
int			etcd_lock_max_locks = 0;
int			etcd_lock_deadlock_max_keys = 10000;
char	   *etcd_lock_tls_ca_file = NULL;
char	   *etcd_lock_tls_cert_file = NULL;
char	   *etcd_lock_tls_key_file = NULL;
char	   *etcd_lock_username = NULL;
char	   *etcd_lock_password_file = NULL;

static const struct config_enum_entry on_lease_loss_options[] = {
	{"cancel", ON_LOSS_CANCEL, false},
	{"terminate", ON_LOSS_TERMINATE, false},
	{"warn", ON_LOSS_WARN, false},
	{NULL, 0, false}
};

/*
 * etcd_lock_parse_endpoints splits a comma-separated endpoint list into
 * malloc'd URL strings without trailing slashes. It checks each one: an
 * http:// or https:// scheme, a non-empty host, if present a port in
 * 1..65535, and no path (a trailing slash is dropped). Returns the number of endpoints, or -1 with a message in errbuf.
 * On success the caller owns out[0..n-1] (free them with free()).
 */
int
etcd_lock_parse_endpoints(const char *list, char **out, int max,
						  char *errbuf, size_t errlen)
{
	const char *p = list ? list : "";
	int			n = 0;

	while (*p)
	{
		const char *start,
				   *end,
				   *host,
				   *hostend,
				   *tail,
				   *q;
		size_t		len;
		char	   *url;

		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		if (!*p)
			break;
		start = p;
		while (*p && *p != ',')
			p++;
		end = p;
		while (end > start && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '/'))
			end--;
		len = end - start;

		if (len > 7 && strncmp(start, "http://", 7) == 0)
			host = start + 7;
		else if (len > 8 && strncmp(start, "https://", 8) == 0)
			host = start + 8;
		else
		{
			snprintf(errbuf, errlen, "endpoint \"%.*s\" must start with http:// or https://",
					 (int) Min(len, 200), start);
			goto fail;
		}
		hostend = host;
		if (*hostend == '[')
		{
			while (hostend < end && *hostend != ']')
				hostend++;
			if (hostend < end)
				hostend++;
		}
		else
			while (hostend < end && *hostend != ':' && *hostend != '/')
				hostend++;
		if (hostend == host)
		{
			snprintf(errbuf, errlen, "endpoint \"%.*s\" has no host",
					 (int) Min(len, 200), start);
			goto fail;
		}
		tail = hostend;
		if (hostend < end && *hostend == ':')
		{
			long		port = 0;

			q = hostend + 1;
			if (q == end || *q == '/')
			{
				snprintf(errbuf, errlen, "endpoint \"%.*s\" has an empty port",
						 (int) Min(len, 200), start);
				goto fail;
			}
			for (; q < end && *q != '/'; q++)
			{
				if (!isdigit((unsigned char) *q) || port > 65535)
				{
					port = -1;
					break;
				}
				port = port * 10 + (*q - '0');
			}
			if (port < 1 || port > 65535)
			{
				snprintf(errbuf, errlen, "endpoint \"%.*s\" has an invalid port",
						 (int) Min(len, 200), start);
				goto fail;
			}
			tail = q;
		}
		if (tail < end)
		{
			/* etcd's API is at /v3/... of every member: no path to give */
			snprintf(errbuf, errlen, "endpoint \"%.*s\" has a path: give the scheme, host and port only",
					 (int) Min(len, 200), start);
			goto fail;
		}
		for (q = host; q < end; q++)
			if (isspace((unsigned char) *q))
			{
				snprintf(errbuf, errlen, "endpoint \"%.*s\" contains white space",
						 (int) Min(len, 200), start);
				goto fail;
			}
		if (n >= max)
		{
			snprintf(errbuf, errlen, "at most %d endpoints are supported", max);
			goto fail;
		}
		url = malloc(len + 1);
		if (!url)
		{
			snprintf(errbuf, errlen, "out of memory");
			goto fail;
		}
		memcpy(url, start, len);
		url[len] = '\0';
		out[n++] = url;
	}
	if (n == 0)
	{
		snprintf(errbuf, errlen, "the endpoint list is empty");
		return -1;
	}
	return n;

fail:
	while (n > 0)
		free(out[--n]);
	return -1;
}

static bool
check_endpoints(char **newval, void **extra, GucSource source)
{
	char	   *eps[ETCD_MAX_ENDPOINTS];
	char		err[300];
	int			n = etcd_lock_parse_endpoints(*newval, eps, ETCD_MAX_ENDPOINTS,
											  err, sizeof(err));

	if (n < 0)
	{
		/*
		 * At server start an invalid value is kept, not replaced by the
		 * default (which might be some other etcd, say a Kubernetes
		 * member's): every lock call then fails quoting it. At a reload,
		 * PostgreSQL keeps the old value with a WARNING, as for any setting:
		 * a typo must not turn into refusing every lock.
		 */
		if (process_shared_preload_libraries_in_progress)
		{
			ereport(WARNING,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("etcd_lock.endpoints is invalid: \"%s\"; etcd locks are refused until it is fixed",
							*newval ? *newval : ""),
					 errdetail("%s", err)));
			return true;
		}
		GUC_check_errdetail("%s", err);
		return false;
	}
	while (n > 0)
		free(eps[--n]);
	return true;
}

static bool
check_prefix(char **newval, void **extra, GucSource source)
{
	if (*newval && strlen(*newval) > ETCD_MAX_PREFIX)
	{
		GUC_check_errdetail("etcd_lock.prefix is limited to %d bytes.", ETCD_MAX_PREFIX);
		return false;
	}
	return true;
}

/*
 * etcd_lock_define_gucs defines the parameters and reserves the prefix.
 */
void
etcd_lock_define_gucs(void)
{
	DefineCustomStringVariable("etcd_lock.endpoints",
							   "Comma-separated etcd client URLs (http:// or https://).",
							   "Requests fail over to the next endpoint on connection errors.",
							   &etcd_lock_endpoints,
							   "http://127.0.0.1:2379",
							   PGC_SIGHUP, 0,
							   check_endpoints, NULL, NULL);
	DefineCustomStringVariable("etcd_lock.prefix",
							   "Prefix prepended to every lock name to form its etcd key.",
							   "Empty by default, so lock names match etcd's Go concurrency.Mutex.",
							   &etcd_lock_prefix,
							   "",
							   PGC_SUSET, 0,
							   check_prefix, NULL, NULL);
	DefineCustomIntVariable("etcd_lock.lease_ttl",
							"TTL of each backend's etcd lease.",
							"Locks of a backend that dies without releasing them free after this long.",
							&etcd_lock_lease_ttl,
							10, 2, 3600,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("etcd_lock.request_timeout",
							"Upper bound for one etcd request, over all endpoints tried.",
							NULL,
							&etcd_lock_request_timeout,
							5000, 100, 600000,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomEnumVariable("etcd_lock.on_lease_loss",
							 "What happens to a session whose etcd lease is lost while it holds locks.",
							 "cancel: its running statement is cancelled; terminate: the session ends; "
							 "warn: a WARNING at its next statement. In every mode its next lock call fails.",
							 &etcd_lock_on_lease_loss,
							 ON_LOSS_CANCEL, on_lease_loss_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("etcd_lock.verify_on_commit",
							 "Verify at COMMIT, with one linearizable etcd read, that the session still holds its etcd locks.",
							 "If a lock was lost, the COMMIT fails and the transaction rolls back.",
							 &etcd_lock_verify_on_commit,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("etcd_lock.group_commit",
							 "Send this session's acquire and release requests together with those of other sessions of the instance.",
							 "While another session's acquire or release is in flight, this one waits for it and then goes "
							 "with every other waiting one in one etcd txn of nested txns (group commit); alone, it is sent at once.",
							 &etcd_lock_group_commit,
							 true,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("etcd_lock.group_commit_inflight",
							"How many acquire and release requests of the instance may be in flight before the next ones wait to go together.",
							"Below this many a session's txn is sent at once, alone; at it, txns queue and each request that "
							"returns hands the queue, as one batch, to the first of them. 1: one request in flight at a time.",
							&etcd_lock_group_commit_inflight,
							2, 1, 16,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("etcd_lock.release_wait",
							"How long COMMIT and ROLLBACK wait for the worker to send the releases of the locks they end.",
							"The worker sends them (no network I/O in commit); the ending transaction waits for its "
							"first attempt, at most this long, so a released lock is free everywhere when COMMIT returns. "
							"0: do not wait.",
							&etcd_lock_release_wait,
							1000, 0, 60000,
							PGC_USERSET, GUC_UNIT_MS,
							NULL, NULL, NULL);
	/* sizes shared memory: only where the library is preloaded */
	if (process_shared_preload_libraries_in_progress)
		DefineCustomIntVariable("etcd_lock.max_locks",
								"Locks held or awaited at once on this instance that etcd_locks can show.",
								"0: max(1024, 8 per backend). Locks beyond it work but are not shown "
								"(etcd_lock_status.locks_not_shown counts them).",
								&etcd_lock_max_locks,
								0, 0, 1000000,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	DefineCustomIntVariable("etcd_lock.deadlock_max_keys",
							"Most keys under etcd_lock.prefix that deadlock detection reads.",
							"After deadlock_timeout a waiter reads every key under the prefix (keys only) "
							"to look for a cycle of waits; with more keys than this it skips detection. 0: off.",
							&etcd_lock_deadlock_max_keys,
							10000, 0, 1000000,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("etcd_lock.allow_session_locks",
							 "Whether the session-level lock functions may be used.",
							 "Set it off (per role or database) for clients behind a transaction pooler: "
							 "a session lock would outlive the client's transaction.",
							 &etcd_lock_allow_session_locks,
							 true,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	/*
	 * Security settings are server-wide (the worker authenticates too) and
	 * hidden from non-superusers. There is deliberately no password setting:
	 * PostgreSQL logs every changed parameter's new value on reload.
	 */
	DefineCustomStringVariable("etcd_lock.tls_ca_file",
							   "CA certificate file that etcd's server certificate must be signed by.",
							   "Empty: the system's trusted CAs. Server certificate and host name are always verified.",
							   &etcd_lock_tls_ca_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("etcd_lock.tls_cert_file",
							   "Client certificate file for etcd (--client-cert-auth).",
							   NULL,
							   &etcd_lock_tls_cert_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("etcd_lock.tls_key_file",
							   "Private key file of the client certificate.",
							   NULL,
							   &etcd_lock_tls_key_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("etcd_lock.username",
							   "etcd user to authenticate as (etcd auth enabled).",
							   "Empty: no etcd authentication.",
							   &etcd_lock_username, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("etcd_lock.password_file",
							   "File holding the etcd user's password (readable only by the server's OS user).",
							   NULL,
							   &etcd_lock_password_file, "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	MarkGUCPrefixReserved("etcd_lock");
}
