/*
 * auth.c
 *		etcd authentication for the gateway: the process's token (one per
 *		instance, shared through the hooks), the password file, the
 *		synchronous authentication of backends, the worker's asynchronous
 *		one, and the check of changed credentials after a reload.
 *
 * Owns every piece of authentication state (GwAuth, one struct); neither
 * the password nor the token ever enters a message. May call the
 * transport (gateway_int.h: one request, one request in flight, the
 * headers); knows nothing of locks.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <curl/curl.h>
#include <jansson.h>

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "gateway.h"
#include "gateway_int.h"
#include "guc.h"

/*
 * The authentication state of this process. The worker authenticates as
 * one more asynchronous request (etcd_gateway_async_auth): requests that
 * need a token meanwhile are not sent (ETCD_AUTH_PENDING) and the worker's
 * loop goes on.
 */
typedef struct GwAuth
{
	char	   *token;			/* malloc'd; never logged */
	char	   *token_user;		/* who token belongs to */
	char	   *rejected;		/* the token etcd rejected last (malloc'd) */
	bool		async;			/* authenticate as a request in flight */
	bool		recheck_after;	/* etcd_gateway_recheck_credentials */
	bool		inflight;		/* that request is in flight */
	char	   *new_token;		/* parse_token's, malloc'd */
	char	   *for_user;		/* the user it was asked for */
} GwAuth;

static GwAuth gw_auth;

/*
 * gw_auth_token is the token requests carry (NULL: none).
 */
const char *
gw_auth_token(void)
{
	return gw_auth.token;
}

void
gw_drop_token(void)
{
	if (gw_auth.token)
	{
		explicit_bzero(gw_auth.token, strlen(gw_auth.token));
		free(gw_auth.token);
		gw_auth.token = NULL;
		gw_set_headers();
	}
}

/*
 * gw_reject_token drops a token etcd rejected (expired), remembering it so
 * that the shared cache, which may still hold it, is not taken again.
 */
void
gw_reject_token(void)
{
	if (gw_auth.token == NULL)
		return;
	if (gw_auth.rejected)
	{
		explicit_bzero(gw_auth.rejected, strlen(gw_auth.rejected));
		free(gw_auth.rejected);
	}
	gw_auth.rejected = strdup(gw_auth.token);
	gw_drop_token();
}

/*
 * gw_read_password reads etcd_lock.password_file, refusing a file that its
 * group or others may read. The path appears in the server log only.
 */
static char *
gw_read_password(void)
{
	const char *path = etcd_lock_password_file;
	struct stat stb;
	FILE	   *f;
	char		buf[1024];
	size_t		n;

	if (path == NULL || path[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("etcd_lock: etcd_lock.username is set but etcd_lock.password_file is not")));
	if (stat(path, &stb) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("etcd_lock: could not read the etcd password file"),
				 errdetail_log("stat(\"%s\") failed: %m.", path)));
	if (!S_ISREG(stb.st_mode) || (stb.st_mode & (S_IRWXG | S_IRWXO)) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("etcd_lock: the etcd password file must be a plain file readable only by the server's user"),
				 errhint("chmod 0600 the file named by etcd_lock.password_file."),
				 errdetail_log("File \"%s\" has mode %04o.", path, (unsigned) (stb.st_mode & 07777))));
	f = AllocateFile(path, "r");
	if (f == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIG_FILE_ERROR),
				 errmsg("etcd_lock: could not read the etcd password file"),
				 errdetail_log("open(\"%s\") failed: %m.", path)));
	n = fread(buf, 1, sizeof(buf) - 1, f);
	FreeFile(f);
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		buf[--n] = '\0';
	{
		char	   *pw = pstrdup(buf);

		explicit_bzero(buf, sizeof(buf));
		return pw;
	}
}

static bool
parse_token(json_t *root, void *arg)
{
	json_t	   *t = json_object_get(root, "token");

	if (!json_is_string(t))
		return false;
	*(char **) arg = strdup(json_string_value(t));
	return *(char **) arg != NULL;
}

/*
 * gw_authenticate gets a token for etcd_lock.username. Neither the password
 * nor the token ever enters a message.
 */
static void
gw_auth_body(StringInfo b)
{
	char	   *password = gw_read_password();

	initStringInfo(b);
	appendStringInfoString(b, "{\"name\":");
	escape_json(b, etcd_lock_username);
	appendStringInfoString(b, ",\"password\":");
	escape_json(b, password);
	appendStringInfoChar(b, '}');
	explicit_bzero(password, strlen(password));
	pfree(password);
}

/*
 * gw_auth_failed words a failed authentication; never echoes the answer
 * (it may hold a token).
 */
static void
gw_auth_failed(EtcdStatus *st, const char *user)
{
	char		why[sizeof(st->message)];

	if (st->kind == ETCD_BAD_REPLY)
		snprintf(st->message, sizeof(st->message), "unexpected answer");
	snprintf(why, sizeof(why), "%s", st->message);
	snprintf(st->message, sizeof(st->message), "authentication as etcd user \"%s\" failed: %s",
			 user, why);
	st->log_message[0] = '\0';
}

/*
 * gw_install_token makes token (malloc'd, taken over) this process's, for
 * user, and publishes it for the instance's other processes.
 */
static void
gw_install_token(char *token, const char *user)
{
	gw_drop_token();
	gw_auth.token = token;
	if (gw_auth.token_user)
		free(gw_auth.token_user);
	gw_auth.token_user = strdup(user);
	gw_set_headers();
	if (gw_hooks && gw_hooks->token_put)
		gw_hooks->token_put(user, gw_auth.token);
}

bool
gw_authenticate(EtcdStatus *st, int timeout_ms)
{
	StringInfoData b;
	char	   *token = NULL;
	bool		ok;

	gw_auth_body(&b);
	gw_drop_token();
	GW_COUNT(GW_EV_AUTHENTICATE);
	ok = gw_request("/v3/auth/authenticate", b.data, parse_token, &token, st, timeout_ms);
	explicit_bzero(b.data, b.len);
	pfree(b.data);
	if (!ok)
	{
		gw_auth_failed(st, etcd_lock_username);
		return false;
	}
	gw_install_token(token, etcd_lock_username);
	return true;
}

/*
 * gw_auth_async_start starts the worker's authentication as a request in
 * flight, unless one is. Always false: st says ETCD_AUTH_PENDING, or why
 * it could not start.
 */
static bool
gw_auth_async_start_ex(EtcdStatus *st, bool keep_token)
{
	StringInfoData b;
	bool		started;

	if (!gw_auth.inflight)
	{
		gw_auth_body(&b);
		if (!keep_token)
			gw_drop_token();
		if (gw_auth.for_user)
			free(gw_auth.for_user);
		gw_auth.for_user = strdup(etcd_lock_username);
		if (gw_auth.for_user == NULL)
			elog(ERROR, "etcd_lock: out of memory");
		GW_COUNT(GW_EV_AUTHENTICATE);
		started = gw_async_begin("/v3/auth/authenticate", b.data, parse_token,
								 &gw_auth.new_token, etcd_lock_request_timeout,
								 ETCD_ASYNC_AUTH_TAG, st);
		explicit_bzero(b.data, b.len);
		pfree(b.data);
		if (!started)
			return false;
		gw_auth.inflight = true;
	}
	memset(st, 0, sizeof(*st));
	st->kind = ETCD_AUTH_PENDING;
	snprintf(st->message, sizeof(st->message), "waiting for the authentication as etcd user \"%s\"",
			 gw_auth.for_user ? gw_auth.for_user : "");
	return false;
}

static bool
gw_auth_async_start(EtcdStatus *st)
{
	return gw_auth_async_start_ex(st, false);
}

/*
 * etcd_gateway_recheck_credentials (the worker, after a reload changed
 * etcd_lock.username, etcd_lock.password_file or that file): authenticates
 * with the credentials now set, as a request in flight like
 * etcd_gateway_async_auth's, but keeping the current token until the new
 * one is had. The answer comes under ETCD_ASYNC_AUTH_TAG. False if it did
 * not start: st says why (the password file is bad), or says nothing (no
 * user set; or an earlier authentication is in flight, and the check is
 * started after it, see etcd_gateway_recheck_pending).
 */
bool
etcd_gateway_recheck_credentials(EtcdStatus *st)
{
	volatile bool ok = true;
	MemoryContext cxt = CurrentMemoryContext;

	memset(st, 0, sizeof(*st));
	if (!(etcd_lock_username && etcd_lock_username[0]))
		return false;
	gw_init();
	if (gw_auth.inflight)
	{
		/*
		 * An authentication with the credentials of before is in flight:
		 * its answer says nothing of the new ones. The check starts once it
		 * is back (etcd_gateway_recheck_pending); false with no message.
		 */
		gw_auth.recheck_after = true;
		return false;
	}
	PG_TRY();
	{
		(void) gw_auth_async_start_ex(st, true);
	}
	PG_CATCH();
	{
		/* the password file is missing, empty or readable by others */
		ErrorData  *e;

		MemoryContextSwitchTo(cxt);
		e = CopyErrorData();
		FlushErrorState();
		memset(st, 0, sizeof(*st));
		st->kind = ETCD_ERROR_REPLY;
		snprintf(st->message, sizeof(st->message), "%s", e->message);
		FreeErrorData(e);
		ok = false;
	}
	PG_END_TRY();
	return ok && gw_auth.inflight;
}

/*
 * etcd_gateway_credentials_stamp is a hash of the credentials set now:
 * etcd_lock.username, etcd_lock.password_file and the password in it (or
 * that it cannot be read), so the worker can tell that a reload changed
 * them. 0 when no user is set. The password never leaves this function.
 */
uint32
etcd_gateway_credentials_stamp(void)
{
	StringInfoData b;
	uint32		h;
	char	   *volatile password = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	if (!(etcd_lock_username && etcd_lock_username[0]))
		return 0;
	PG_TRY();
	{
		password = gw_read_password();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		password = NULL;
	}
	PG_END_TRY();
	initStringInfo(&b);
	appendStringInfo(&b, "%s%c%s%c", etcd_lock_username, '\0',
					 etcd_lock_password_file ? etcd_lock_password_file : "", '\0');
	if (password)
	{
		appendStringInfoString(&b, password);
		explicit_bzero(password, strlen(password));
		pfree(password);
	}
	else
		appendStringInfoString(&b, "\001unreadable");
	h = hash_bytes((const unsigned char *) b.data, b.len);
	explicit_bzero(b.data, b.len);
	pfree(b.data);
	return h == 0 ? 1 : h;
}

/*
 * etcd_gateway_recheck_pending says (once) whether a credentials check
 * asked for while an authentication was in flight is still to be started.
 */
bool
etcd_gateway_recheck_pending(void)
{
	bool		r = gw_auth.recheck_after && !gw_auth.inflight;

	if (r)
		gw_auth.recheck_after = false;
	return r;
}

/*
 * gw_auth_async_finish takes the answer of the worker's authentication:
 * the token becomes the process's (and the instance's), unless the user
 * changed meanwhile; a failure is worded as gw_authenticate words it.
 */
void
gw_auth_async_finish(EtcdAsyncResult *r)
{
	char	   *token = gw_auth.new_token;

	gw_auth.new_token = NULL;
	gw_auth.inflight = false;
	if (!r->ok)
	{
		if (token)
		{
			explicit_bzero(token, strlen(token));
			free(token);
		}
		gw_auth_failed(&r->st, gw_auth.for_user ? gw_auth.for_user : "");
		return;
	}
	if (token && gw_auth.for_user && etcd_lock_username &&
		strcmp(gw_auth.for_user, etcd_lock_username) == 0)
		gw_install_token(token, gw_auth.for_user);
	else if (token)
	{
		explicit_bzero(token, strlen(token));
		free(token);
	}
}

/*
 * etcd_gateway_async_auth makes this process (the worker) authenticate as
 * a request in flight among the others, its answer returned by
 * etcd_async_wait under ETCD_ASYNC_AUTH_TAG, instead of waiting for it
 * wherever a token is missing.
 */
void
etcd_gateway_async_auth(void)
{
	gw_auth.async = true;
}

/*
 * gw_adopt_shared_token takes the instance's shared token for
 * etcd_lock.username, unless it is the one just rejected. True if one was
 * adopted.
 */
bool
gw_adopt_shared_token(const char *rejected)
{
	char		buf[ETCD_GW_MAX_TOKEN];

	if (gw_hooks == NULL || gw_hooks->token_get == NULL ||
		!gw_hooks->token_get(etcd_lock_username, buf, sizeof(buf)))
		return false;
	if (rejected && strcmp(rejected, buf) == 0)
	{
		explicit_bzero(buf, sizeof(buf));
		return false;
	}
	gw_drop_token();
	gw_auth.token = strdup(buf);
	explicit_bzero(buf, sizeof(buf));
	if (gw_auth.token == NULL)
		return false;
	if (gw_auth.token_user)
		free(gw_auth.token_user);
	gw_auth.token_user = strdup(etcd_lock_username);
	gw_set_headers();
	return true;
}

/*
 * etcd_gateway_authenticate makes sure this process has a token when
 * etcd_lock.username is set: the shared one, or a new authentication
 * (published for the others). The worker calls it at start, so backends
 * find a token instead of each authenticating (bcrypt on etcd's side).
 */
bool
etcd_gateway_authenticate(EtcdStatus *st)
{
	gw_init();
	gw_apply_tls();
	memset(st, 0, sizeof(*st));
	return gw_auth_ready(st, etcd_lock_request_timeout);
}

/*
 * gw_auth_ready makes sure a token is at hand when etcd_lock.username is
 * set (authenticating if needed, within timeout_ms); false with st filled
 * if authentication failed.
 */
bool
gw_auth_ready(EtcdStatus *st, int timeout_ms)
{
	bool		auth = etcd_lock_username && etcd_lock_username[0];

	if (!auth && gw_auth.token)
		gw_drop_token();
	if (auth && gw_auth.token && (!gw_auth.token_user || strcmp(gw_auth.token_user, etcd_lock_username) != 0))
		gw_drop_token();
	if (auth && !gw_auth.token && !gw_adopt_shared_token(gw_auth.rejected))
	{
		if (gw_auth.async)
			return gw_auth_async_start(st);
		if (!gw_authenticate(st, timeout_ms))
			return false;
	}
	return true;
}
