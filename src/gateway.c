/*
 * gateway.c
 *		etcd's JSON gateway: endpoints and failover, requests (one at a time
 *		for a backend, many in flight for the worker), error answers, the
 *		JSON and base64 helpers.
 *
 * Owns the endpoint list (GwEndpoints), the synchronous request (gw_req)
 * and the requests in flight (GwAsync). Each is a GwTransfer of the
 * transport (transport.c); the streams are streams.c's, authentication is
 * auth.c's (all share gateway_int.h). Nothing here knows about locks. Every
 * answer is parsed by the caller's callback into palloc'd memory; jansson
 * memory is freed on every path.
 */
#include "postgres.h"

#include <curl/curl.h>
#include <jansson.h>

#include "common/base64.h"
#include "miscadmin.h"
#include "utils/json.h"
#include "utils/memutils.h"

#include "gateway.h"
#include "gateway_int.h"
#include "guc.h"

/* pauses between rounds over the endpoints while etcd elects a leader */
#define GW_ELECTION_BACKOFF_MIN	50	/* ms */
#define GW_ELECTION_BACKOFF_MAX	400	/* ms */

/* ---------------------------------------------------------------------
 * Endpoints and failover
 * ---------------------------------------------------------------------
 */

/* etcd_lock.endpoints, parsed when it changes */
typedef struct GwEndpoints
{
	char	   *url[ETCD_MAX_ENDPOINTS];
	int			n;
	char	   *source;			/* the setting they were parsed from */
	int			cur;			/* endpoint that answered last */
	int			hint;			/* the instance's hint, as we last saw it */
} GwEndpoints;

static GwEndpoints gw_ep = {.hint = -1};

/* the synchronous request (a backend's, or the worker's own) */
static GwTransfer gw_req;

/*
 * Asynchronous requests (the worker): each has its own transfer, kept for
 * reuse; all run on the multi handle at once.
 */
typedef struct GwAsync
{
	GwTransfer	t;				/* t.active: started, result not yet taken */
	char	   *post;			/* malloc'd request body */
	int			ep;				/* endpoint index it went to */
	int			tag;			/* the caller's */
	EtcdParseFn parse;
	void	   *arg;
} GwAsync;

static GwAsync gw_async[GW_ASYNC_MAX];
static int	gw_async_inflight = 0;

/*
 * gw_endpoints returns the parsed endpoint list, reparsing it when the
 * setting changed. The check hook already validated it.
 */
int
gw_endpoints(void)
{
	const char *src = etcd_lock_endpoints ? etcd_lock_endpoints : "";

	if (gw_ep.source == NULL || strcmp(gw_ep.source, src) != 0)
	{
		char		err[300];
		char	   *eps[ETCD_MAX_ENDPOINTS];
		int			n = etcd_lock_parse_endpoints(src, eps, ETCD_MAX_ENDPOINTS,
												  err, sizeof(err));

		/*
		 * Accepted at server start though invalid (guc.c): refuse, never
		 * fall back to a default that may be some other etcd.
		 */
		if (n < 0)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIG_FILE_ERROR),
					 errmsg("etcd_lock.endpoints is invalid: \"%s\"", src),
					 errdetail("%s", err),
					 errhint("Fix etcd_lock.endpoints in postgresql.conf (client URLs such as http://10.0.0.1:2379) and reload the configuration.")));
		while (gw_ep.n > 0)
			free(gw_ep.url[--gw_ep.n]);
		memcpy(gw_ep.url, eps, sizeof(char *) * n);
		gw_ep.n = n;
		/* start where the instance last got an answer */
		gw_ep.cur = gw_hooks && gw_hooks->endpoint_get ? gw_hooks->endpoint_get(src) : 0;
		if (gw_ep.cur < 0 || gw_ep.cur >= n)
			gw_ep.cur = 0;
		gw_ep.hint = gw_ep.cur;
		if (gw_ep.source)
			free(gw_ep.source);
		gw_ep.source = strdup(src);
		if (!gw_ep.source)
			elog(ERROR, "etcd_lock: out of memory");
	}
	return gw_ep.n;
}

/*
 * gw_ep_answered notes that endpoint idx answered: the instance's other
 * processes (new backends) start with it.
 */
void
gw_ep_answered(int idx)
{
	gw_ep.cur = idx;
	if (idx != gw_ep.hint && gw_hooks && gw_hooks->endpoint_put && gw_ep.source)
	{
		gw_hooks->endpoint_put(gw_ep.source, idx);
		gw_ep.hint = idx;
	}
}

/*
 * etcd_gateway_follow_endpoint: start the next request at the endpoint the
 * instance last got an answer from, if another process moved there since
 * this one last looked (a batch's leader sends for many backends: it should
 * not spend their time on an endpoint another process found dead).
 */
void
etcd_gateway_follow_endpoint(void)
{
	int			idx;

	if (gw_endpoints() <= 1 || !gw_hooks || !gw_hooks->endpoint_get || !gw_ep.source)
		return;
	idx = gw_hooks->endpoint_get(gw_ep.source);
	if (idx >= 0 && idx < gw_ep.n && idx != gw_ep.hint)
	{
		gw_ep.cur = idx;
		gw_ep.hint = idx;
	}
}

/*
 * etcd_endpoints_ok says, without raising, whether etcd_lock.endpoints can
 * be used (errbuf: why not).
 */
bool
etcd_endpoints_ok(char *errbuf, size_t errlen)
{
	char	   *eps[ETCD_MAX_ENDPOINTS];
	int			n = etcd_lock_parse_endpoints(etcd_lock_endpoints ? etcd_lock_endpoints : "",
											  eps, ETCD_MAX_ENDPOINTS, errbuf, errlen);
	bool		ok = n > 0;

	while (n > 0)
		free(eps[--n]);
	return ok;
}

const char *
etcd_current_endpoint(void)
{
	if (gw_endpoints() == 0)
		return "";
	return gw_ep.url[gw_ep.cur % gw_ep.n];
}

int
gw_ep_current(void)
{
	return gw_ep.cur % Max(gw_ep.n, 1);
}

const char *
gw_ep_url(int idx)
{
	return gw_ep.url[idx % gw_ep.n];
}

/*
 * gw_ep_advance: the current endpoint failed (a request in flight, a
 * stream); the next requests go to the next one.
 */
void
gw_ep_advance(void)
{
	int			n = gw_endpoints();

	if (n > 1)
	{
		gw_ep.cur = (gw_ep.cur + 1) % n;
		GW_COUNT(GW_EV_FAILOVER);
	}
}

/*
 * gw_write_cb collects a request's answer (curl fails the transfer with
 * WRITE_ERROR if it is too large).
 */
size_t
gw_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		n = size * nmemb;
	GwBuf	   *b = (GwBuf *) userdata;

	if (!gw_buf_append(b, ptr, n, GW_MAX_BODY))
		return 0;
	return n;
}

/* ---------------------------------------------------------------------
 * Error answers
 * ---------------------------------------------------------------------
 */

/*
 * gw_excerpt copies at most max bytes of untrusted text (an answer from
 * the peer) into dst for a message: printable ASCII only, anything else
 * becomes '?', so a cut multibyte character or a control byte can never
 * make the message invalid in any encoding.
 */
static void
gw_excerpt(char *dst, size_t dstlen, const char *src, size_t max)
{
	size_t		i;

	if (dstlen == 0)
		return;
	for (i = 0; src && src[i] && i < max && i < dstlen - 1; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
	dst[i] = '\0';
}

/*
 * gw_error_reply fills st from an etcd error body. Both shapes are parsed:
 * 3.4/3.5 {"error":"..","message":"..","code":N} and 3.6 {"code":N,
 * "message":".."}; a body that is neither keeps the HTTP status only.
 */
static void
gw_error_reply_buf(EtcdStatus *st, long http, GwBuf *body)
{
	json_t	   *root;
	json_error_t jerr;
	const char *msg = NULL;

	st->kind = ETCD_ERROR_REPLY;
	st->http_status = http;
	st->grpc_code = 0;
	root = body->data ? json_loadb(body->data, body->len, 0, &jerr) : NULL;
	if (json_is_object(root))
	{
		json_t	   *m = json_object_get(root, "message");
		json_t	   *e = json_object_get(root, "error");
		json_t	   *c = json_object_get(root, "code");

		if (json_is_string(m))
			msg = json_string_value(m);
		else if (json_is_string(e))
			msg = json_string_value(e);
		if (json_is_integer(c))
			st->grpc_code = (int) json_integer_value(c);
	}
	if (msg)
	{
		char		clean[400];

		gw_excerpt(clean, sizeof(clean), msg, sizeof(clean) - 1);
		snprintf(st->message, sizeof(st->message), "HTTP %ld: %s (code %d)",
				 http, clean, st->grpc_code);
	}
	else if (http == 404 || http == 405)
	{
		/* not etcd's gateway answering: a path in the URL, the peer port */
		snprintf(st->message, sizeof(st->message),
				 "HTTP %ld from %s: not etcd's client API (a path in the URL, or the peer port?); "
				 "etcd_lock.endpoints wants client URLs such as http://host:2379, without a path",
				 http, gw_ep.source ? etcd_current_endpoint() : "the endpoint");
	}
	else
		snprintf(st->message, sizeof(st->message), "HTTP %ld", http);
	json_decref(root);
}

static void
gw_error_reply(EtcdStatus *st, long http)
{
	gw_error_reply_buf(st, http, &gw_req.body);
}

/* ---------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------
 */

/* resends of requests whose earlier attempt may still land (gw_request) */
static uint64 gw_late_resends = 0;

/*
 * etcd_gateway_late_resends counts this process's requests that were sent
 * again after an attempt that may have reached etcd (timed out, cut, a
 * 5xx): that attempt may still be applied, after the resend was answered.
 * A caller compares the count before and after its request.
 */
uint64
etcd_gateway_late_resends(void)
{
	return gw_late_resends;
}

/*
 * etcd_gateway_count_late_resend: a request of this process that another
 * process sent for it (a batch, group.c) was resent so.
 */
void
etcd_gateway_count_late_resend(void)
{
	gw_late_resends++;
}

static bool
gw_req_cond(void)
{
	return gw_req.done;
}

/*
 * gw_perform runs the prepared request gw_req until it completes or the
 * deadline passes (false). The handle is detached on every path.
 */
static bool
gw_perform(TimestampTz deadline)
{
	bool		finished;

	gw_buf_reset(&gw_req.body);
	gw_transfer_start(&gw_req);
	PG_TRY();
	{
		finished = gw_drive(gw_req_cond, deadline);
	}
	PG_CATCH();
	{
		gw_transfer_stop(&gw_req);
		PG_RE_THROW();
	}
	PG_END_TRY();
	gw_transfer_stop(&gw_req);
	return finished;
}

/*
 * gw_parse hands root to the parse callback and frees it on every path.
 */
static bool
gw_parse(json_t *root, EtcdParseFn parse, void *arg)
{
	bool		ok;

	PG_TRY();
	{
		ok = json_is_object(root) && (parse == NULL || parse(root, arg));
	}
	PG_CATCH();
	{
		json_decref(root);
		PG_RE_THROW();
	}
	PG_END_TRY();
	json_decref(root);
	return ok;
}

/*
 * etcd_request POSTs body to path (e.g. "/v3/kv/txn") and, on a 200 answer,
 * hands the decoded JSON to parse. Connection failures, timeouts and 5xx
 * answers move on to the next endpoint until one answers or
 * etcd_lock.request_timeout has passed. Returns true on success; otherwise
 * fills st and returns false. Interrupts throw (after cleaning up).
 */
bool
etcd_request(const char *path, const char *body, EtcdParseFn parse, void *arg,
			 EtcdStatus *st)
{
	return etcd_request_ex(path, body, parse, arg, st, etcd_lock_request_timeout);
}

/*
 * gw_request sends one request, failing over between endpoints, without
 * authentication logic (see etcd_request_ex).
 */
bool
gw_request(const char *path, const char *body, EtcdParseFn parse,
		   void *arg, EtcdStatus *st, int timeout_ms)
{
	TimestampTz deadline;
	int			neps,
				attempt;
	char		tried[sizeof(st->message)];
	char		tried_log[sizeof(st->log_message)];
	size_t		tlen = 0,
				tllen = 0;
	bool		electing = false;	/* a member answered 503: no leader yet */
	bool		maybe_sent = false; /* an attempt may have reached etcd */
	long		backoff = GW_ELECTION_BACKOFF_MIN;

	gw_init();
	if (gw_req.easy == NULL)
		gw_transfer_init(&gw_req, GW_HDR_REQUEST, gw_write_cb, &gw_req.body);
	neps = gw_endpoints();
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(timeout_ms, 1));
	memset(st, 0, sizeof(*st));
	tried[0] = '\0';
	tried_log[0] = '\0';

	for (attempt = 0;; attempt++)
	{
		int			idx = (gw_ep.cur + attempt) % neps;
		char		url[1024];
		long		http = 0;
		bool		finished;
		CURLcode	rc;
		long		remaining;

		if (attempt > 0 && attempt % neps == 0)
		{
			/*
			 * Every endpoint failed. If one of them answered that the
			 * cluster has no leader (a member restarting in a rolling
			 * upgrade, a leader lost), it is electing one, usually within
			 * an election timeout or two: go round again after a pause,
			 * within this call's time, as etcd's own client retries
			 * "unavailable". Only refused or silent members: fail now
			 * (etcd down costs milliseconds, not the whole timeout).
			 * Resending is safe: every request we send is (src/README.md).
			 */
			if (!electing)
				break;
			remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);
			if (remaining <= backoff)
				break;
			gw_pause(backoff);
			backoff = Min(backoff * 2, GW_ELECTION_BACKOFF_MAX);
			electing = false;
			tlen = tllen = 0;
			tried[0] = tried_log[0] = '\0';
		}
		remaining = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		if (remaining <= 0)
			break;

		/*
		 * Each endpoint still to try in this round gets an equal share of
		 * the time left, so a member that accepts but never answers (cut
		 * off, frozen) cannot use up the whole budget before the others
		 * are tried.
		 */
		remaining = Max(1, remaining / (neps - attempt % neps));
		snprintf(url, sizeof(url), "%s%s", gw_ep.url[idx], path);
		GW_COUNT(GW_EV_REQUEST);
		if (attempt > 0)
			GW_COUNT(GW_EV_FAILOVER);
		/*
		 * Sending again what an earlier attempt may have delivered: that
		 * attempt is not cancelled in etcd and may still be applied after
		 * this one was answered (etcd_gateway_late_resends).
		 */
		if (maybe_sent)
		{
			gw_late_resends++;
			maybe_sent = false;
		}
		curl_easy_setopt(gw_req.easy, CURLOPT_URL, url);
		curl_easy_setopt(gw_req.easy, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(gw_req.easy, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
		curl_easy_setopt(gw_req.easy, CURLOPT_CONNECTTIMEOUT_MS, remaining);
		finished = gw_perform(TimestampTzPlusMilliseconds(GetCurrentTimestamp(), remaining));

		rc = finished ? gw_req.result : CURLE_OPERATION_TIMEDOUT;
		if (rc == CURLE_OK)
			curl_easy_getinfo(gw_req.easy, CURLINFO_RESPONSE_CODE, &http);
		if (rc == CURLE_OK && http == 200)
		{
			json_t	   *root;
			json_error_t jerr;
			bool		ok;

			gw_ep_answered(idx);
			root = json_loadb(gw_req.body.data ? gw_req.body.data : "", gw_req.body.len, 0, &jerr);
			if (!root)
			{
				char		clean[101];
				char		why[101];

				gw_excerpt(clean, sizeof(clean), gw_req.body.data, 100);
				gw_excerpt(why, sizeof(why), jerr.text, 100);
				st->kind = ETCD_BAD_REPLY;
				snprintf(st->message, sizeof(st->message),
						 "%s answered invalid JSON (%s): %s", gw_ep.url[idx], why, clean);
				return false;
			}
			ok = gw_parse(root, parse, arg);
			if (!ok)
			{
				char		clean[201];

				gw_excerpt(clean, sizeof(clean), gw_req.body.data, 200);
				st->kind = ETCD_BAD_REPLY;
				snprintf(st->message, sizeof(st->message),
						 "%s answered an unexpected %s: %s", gw_ep.url[idx], path, clean);
				return false;
			}
			st->kind = ETCD_OK;
			return true;
		}
		if (rc == CURLE_OK && http < 500)
		{
			/* etcd answered: an error that another member would repeat */
			gw_ep_answered(idx);
			gw_error_reply(st, http);
			return false;
		}
		/*
		 * Connection error, timeout, overflow or 5xx: try the next one. The
		 * client sees curl's fixed text for the error code; the server log
		 * also gets curl's detailed message (it may name certificate files,
		 * which only superusers may see).
		 */
		{
			const char *why;
			const char *why_log;
			char		hbuf[sizeof(st->message)];

			GW_COUNT(GW_EV_FAILURE);
			if (rc != CURLE_OK)
			{
				long		sent = 0;

				/* cut or timed out: if any of it went out, etcd may apply it */
				if (curl_easy_getinfo(gw_req.easy, CURLINFO_REQUEST_SIZE, &sent) != CURLE_OK ||
					sent > 0)
					maybe_sent = true;
			}

			if (rc == CURLE_OK)
			{
				/* a 5xx from etcd ("no leader"...): keep what it said */
				EtcdStatus	e5;

				gw_error_reply(&e5, http);
				if (http == 503 || e5.grpc_code == GRPC_UNAVAILABLE)
					electing = true;
				/* "no leader" is said before proposing; "request timed out" after */
				if (strstr(e5.message, "no leader") == NULL)
					maybe_sent = true;
				snprintf(hbuf, sizeof(hbuf), "%s", e5.message);
				why = why_log = hbuf;
			}
			else if (rc == CURLE_WRITE_ERROR && gw_req.body.overflow)
				why = why_log = "answer too large";
			else if (!finished)
				why = why_log = "timed out";
			else
			{
				why = curl_easy_strerror(rc);
				why_log = gw_req.errbuf[0] ? gw_req.errbuf : why;
			}
			if (tlen < sizeof(tried) - 1)
				tlen += snprintf(tried + tlen, sizeof(tried) - tlen, "%s%s: %s",
								 tlen ? "; " : "", gw_ep.url[idx], why);
			if (tllen < sizeof(tried_log) - 1)
				tllen += snprintf(tried_log + tllen, sizeof(tried_log) - tllen, "%s%s: %s",
								  tllen ? "; " : "", gw_ep.url[idx], why_log);
		}
	}
	st->kind = ETCD_UNREACHABLE;
	snprintf(st->message, sizeof(st->message), "%s",
			 tried[0] ? tried : "no time left within etcd_lock.request_timeout");
	snprintf(st->log_message, sizeof(st->log_message), "%s",
			 tried_log[0] ? tried_log : st->message);
	return false;
}


/*
 * etcd_request_ex is etcd_request with its own time bound (ms). With
 * etcd_lock.username set it authenticates first and, when etcd says the
 * token is invalid (simple tokens expire), authenticates again and retries
 * once, so token expiry is never visible to the user.
 */
bool
etcd_request_ex(const char *path, const char *body, EtcdParseFn parse,
				void *arg, EtcdStatus *st, int timeout_ms)
{
	bool		auth = etcd_lock_username && etcd_lock_username[0];
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   Max(timeout_ms, 1));

	deadline = gw_bound(deadline);

	/* every step below shares the one time bound of this call */
#define LEFT_MS() ((int) Max(1, (deadline - GetCurrentTimestamp()) / 1000))

	gw_init();
	gw_apply_tls();
	if (!gw_auth_ready(st, LEFT_MS()))
		return false;
	if (gw_request(path, body, parse, arg, st, LEFT_MS()))
		return true;
	if (auth && st->kind == ETCD_ERROR_REPLY &&
		(st->grpc_code == GRPC_UNAUTHENTICATED || st->http_status == 401) &&
		GetCurrentTimestamp() < deadline)
	{
		char	   *rejected = gw_auth_token() ? pstrdup(gw_auth_token()) : NULL;

		/* another process may have authenticated again already */
		if (gw_adopt_shared_token(rejected))
		{
			if (rejected)
			{
				explicit_bzero(rejected, strlen(rejected));
				pfree(rejected);
			}
			if (gw_request(path, body, parse, arg, st, LEFT_MS()))
				return true;
			if (!(st->kind == ETCD_ERROR_REPLY &&
				  (st->grpc_code == GRPC_UNAUTHENTICATED || st->http_status == 401)))
				return false;
		}
		else if (rejected)
		{
			explicit_bzero(rejected, strlen(rejected));
			pfree(rejected);
		}
		if (!gw_authenticate(st, LEFT_MS()))
			return false;
		return gw_request(path, body, parse, arg, st, LEFT_MS());
	}
	return false;
#undef LEFT_MS
}

/*
 * etcd_report_status raises the ERROR for a failed request. SQLSTATE 58000
 * (system_error: an error external to PostgreSQL): not class 08, so drivers
 * do not mistake it for a broken connection to PostgreSQL.
 */
void
etcd_report_status(const EtcdStatus *st, const char *what)
{
	if (st->kind == ETCD_UNREACHABLE)
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("etcd_lock: could not %s: etcd is unreachable", what),
				 errdetail("Endpoints tried: %s.", st->message),
				 st->log_message[0] ? errdetail_log("Endpoints tried: %s.", st->log_message) : 0,
				 errhint("Check that etcd runs and that etcd_lock.endpoints names it.")));
	else if (st->kind == ETCD_ERROR_REPLY)
		ereport(ERROR,
				(errcode(st->grpc_code == GRPC_PERMISSION_DENIED ?
						 ERRCODE_INSUFFICIENT_PRIVILEGE : ERRCODE_SYSTEM_ERROR),
				 errmsg("etcd_lock: could not %s: etcd answered an error", what),
				 errdetail("etcd said: %s.", st->message)));
	else
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("etcd_lock: could not %s: unexpected answer from etcd", what),
				 errdetail("%s", st->message)));
}

void
etcd_request_or_error(const char *path, const char *body, EtcdParseFn parse,
					  void *arg, const char *what)
{
	EtcdStatus	st;

	if (!etcd_request(path, body, parse, arg, &st))
		etcd_report_status(&st, what);
}

/* ---------------------------------------------------------------------
 * Asynchronous requests (the worker)
 * ---------------------------------------------------------------------
 */


/*
 * etcd_async_start starts a request that runs while the caller goes on:
 * POST body to path on the current endpoint, bounded by timeout_ms in all.
 * The result comes from etcd_async_wait, under tag; parse and arg must
 * stay valid until then. There is no failover within one asynchronous
 * request: a failure moves the next ones to the next endpoint, and the
 * caller retries (every request the worker sends is safe to repeat).
 * Returns false with st filled if it could not start (all handles busy,
 * authentication failed).
 */
bool
etcd_async_start(const char *path, const char *body, EtcdParseFn parse,
				 void *arg, int timeout_ms, int tag, EtcdStatus *st)
{
	gw_init();
	gw_apply_tls();
	memset(st, 0, sizeof(*st));
	if (!gw_auth_ready(st, timeout_ms))
		return false;
	return gw_async_begin(path, body, parse, arg, timeout_ms, tag, st);
}

/*
 * gw_async_begin puts one request on the multi handle (etcd_async_start without
 * the token check).
 */
bool
gw_async_begin(const char *path, const char *body, EtcdParseFn parse,
			   void *arg, int timeout_ms, int tag, EtcdStatus *st)
{
	GwAsync    *a = NULL;
	char		url[1024];
	int			neps = gw_endpoints(),
				i;

	for (i = 0; i < GW_ASYNC_MAX; i++)
		if (!gw_async[i].t.active)
		{
			a = &gw_async[i];
			break;
		}
	if (a == NULL)
	{
		st->kind = ETCD_UNREACHABLE;
		snprintf(st->message, sizeof(st->message), "too many requests in flight");
		return false;
	}
	if (a->t.easy == NULL)
		gw_transfer_init(&a->t, GW_HDR_REQUEST, gw_write_cb, &a->t.body);
	a->post = strdup(body);
	if (a->post == NULL)
		elog(ERROR, "etcd_lock: out of memory");
	a->ep = gw_ep.cur % neps;
	snprintf(url, sizeof(url), "%s%s", gw_ep.url[a->ep], path);
	curl_easy_setopt(a->t.easy, CURLOPT_URL, url);
	curl_easy_setopt(a->t.easy, CURLOPT_HTTPHEADER, gw_request_headers());
	curl_easy_setopt(a->t.easy, CURLOPT_POSTFIELDS, a->post);
	curl_easy_setopt(a->t.easy, CURLOPT_POSTFIELDSIZE, (long) strlen(a->post));
	curl_easy_setopt(a->t.easy, CURLOPT_TIMEOUT_MS, (long) Max(1, timeout_ms));
	curl_easy_setopt(a->t.easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Max(1, timeout_ms));
	gw_buf_reset(&a->t.body);
	a->tag = tag;
	a->parse = parse;
	a->arg = arg;
	gw_transfer_start(&a->t);
	gw_async_inflight++;
	GW_COUNT(GW_EV_REQUEST);
	return true;
}

int
etcd_endpoint_count(void)
{
	return gw_endpoints();
}

int
etcd_async_inflight(void)
{
	return gw_async_inflight;
}

static bool
gw_async_cond(void)
{
	int			i;

	if (gw_latch_seen(false) || gw_ka_has_news())
		return true;
	for (i = 0; i < GW_ASYNC_MAX; i++)
		if (gw_async[i].t.active && gw_async[i].t.done)
			return true;
	return false;
}

/*
 * gw_async_finish turns a finished transfer into its result and frees its
 * handle for the next request.
 */
static void
gw_async_finish(GwAsync *a, EtcdAsyncResult *r)
{
	EtcdStatus *st = &r->st;
	long		http = 0;
	int			neps = gw_endpoints();

	memset(r, 0, sizeof(*r));
	r->tag = a->tag;
	gw_async_inflight--;
	if (a->t.result == CURLE_OK)
		curl_easy_getinfo(a->t.easy, CURLINFO_RESPONSE_CODE, &http);
	if (a->t.result == CURLE_OK && http == 200)
	{
		json_error_t jerr;
		json_t	   *root = json_loadb(a->t.body.data ? a->t.body.data : "", a->t.body.len, 0, &jerr);

		r->ok = root != NULL && gw_parse(root, a->parse, a->arg);
		gw_ep_answered(a->ep);
		if (r->ok)
			st->kind = ETCD_OK;
		else
		{
			char		clean[201];

			if (a->tag == ETCD_ASYNC_AUTH_TAG)
				clean[0] = '\0';	/* gw_auth_failed words it */
			else
				gw_excerpt(clean, sizeof(clean), a->t.body.data, 200);
			st->kind = ETCD_BAD_REPLY;
			snprintf(st->message, sizeof(st->message), "%s answered an unexpected answer: %s",
					 gw_ep.url[a->ep % neps], clean);
		}
	}
	else if (a->t.result == CURLE_OK && http < 500)
	{
		gw_error_reply_buf(st, http, &a->t.body);
		if (st->grpc_code == GRPC_UNAUTHENTICATED || http == 401)
			gw_reject_token();	/* the next request authenticates again */
	}
	else
	{
		if (a->t.result == CURLE_OK)
			gw_error_reply_buf(st, http, &a->t.body);
		else
			snprintf(st->message, sizeof(st->message), "%s: %s", gw_ep.url[a->ep % neps],
					 a->t.result == CURLE_OPERATION_TIMEDOUT ? "timed out" :
					 curl_easy_strerror(a->t.result));
		if (a->t.errbuf[0])
			snprintf(st->log_message, sizeof(st->log_message), "%s: %s",
					 gw_ep.url[a->ep % neps], a->t.errbuf);
		st->kind = ETCD_UNREACHABLE;
		GW_COUNT(GW_EV_FAILURE);
		if (a->ep == gw_ep_current())
			gw_ep_advance();	/* next requests: next endpoint */
	}
	if (a->tag == ETCD_ASYNC_AUTH_TAG)
	{
		/* the password went out, the token came back: neither stays */
		explicit_bzero(a->post, strlen(a->post));
		if (a->t.body.data)
			explicit_bzero(a->t.body.data, a->t.body.len);
		gw_auth_async_finish(r);
	}
	free(a->post);
	a->post = NULL;
	gw_transfer_stop(&a->t);
}

/*
 * etcd_async_wait runs the requests in flight for at most timeout_ms, or
 * until one finishes or the latch is set (the latch is reset; interrupts
 * are the caller's to check). Returns the number of results stored in out
 * (at most max).
 */
int
etcd_async_wait(long timeout_ms, EtcdAsyncResult *out, int max)
{
	int			n = 0,
				i;

	gw_init();
	(void) gw_latch_seen(true);
	if (gw_async_inflight == 0 && !etcd_ka_stream_active())
	{
		int			rc = gw_wait_latch(Max(0, timeout_ms));

		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
		return 0;
	}
	(void) gw_drive(gw_async_cond,
					TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(0, timeout_ms)));
	for (i = 0; i < GW_ASYNC_MAX && n < max; i++)
		if (gw_async[i].t.active && gw_async[i].t.done)
			gw_async_finish(&gw_async[i], &out[n++]);
	return n;
}

/* ---------------------------------------------------------------------
 * Encoding helpers
 * ---------------------------------------------------------------------
 */

/*
 * etcd_append_b64 appends the base64 encoding of data to buf.
 */
void
etcd_append_b64(StringInfo buf, const char *data, int len)
{
	int			need = pg_b64_enc_len(len);
	int			n;

	enlargeStringInfo(buf, need + 1);
	n = pg_b64_encode((const etcd_b64_byte *) data, len, buf->data + buf->len, need);
	if (n < 0)
		elog(ERROR, "etcd_lock: base64 encoding failed");
	buf->len += n;
	buf->data[buf->len] = '\0';
}

/*
 * etcd_b64_decode decodes a base64 string into a palloc'd, NUL-terminated
 * buffer; NULL if it is not valid base64.
 */
char *
etcd_b64_decode(const char *src, int *outlen)
{
	int			srclen = strlen(src);
	int			cap = pg_b64_dec_len(srclen);
	char	   *dst = palloc(cap + 1);
	int			n = pg_b64_decode(src, srclen, (etcd_b64_byte *) dst, cap);

	if (n < 0)
	{
		pfree(dst);
		return NULL;
	}
	dst[n] = '\0';
	if (outlen)
		*outlen = n;
	return dst;
}

/*
 * etcd_json_int64 reads an int64 field that etcd sends as a JSON string (or
 * a number). A missing field is its default, 0. False on a wrong type.
 */
bool
etcd_json_int64(json_t *obj, const char *field, int64 *out)
{
	json_t	   *v = json_is_object(obj) ? json_object_get(obj, field) : NULL;

	*out = 0;
	if (v == NULL || json_is_null(v))
		return true;
	if (json_is_integer(v))
	{
		*out = (int64) json_integer_value(v);
		return true;
	}
	if (json_is_string(v))
	{
		const char *s = json_string_value(v);
		char	   *end;
		long long	val;

		if (*s == '\0')
			return false;
		errno = 0;
		val = strtoll(s, &end, 10);
		if (errno != 0 || *end != '\0')
			return false;
		*out = (int64) val;
		return true;
	}
	return false;
}

