/*
 * gateway.c
 *		etcd's JSON gateway over libcurl.
 *
 * Each process (backend or worker) has one curl multi handle with two easy
 * handles: one for plain requests (kept alive, so one connection serves all
 * calls) and one for a streaming watch. Transfers are driven with curl's
 * socket API; the process sleeps in a WaitEventSet on curl's sockets plus
 * its latch, so pg_cancel_backend, statement_timeout and postmaster death
 * interrupt any wait. All curl and jansson memory is malloc'd and freed on
 * every path; results are copied into palloc'd memory by parse callbacks.
 *
 * Nothing here knows about locks. Authentication (the token, the password
 * file, the worker's asynchronous authentication) is in auth.c; the two
 * share gateway_int.h.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <curl/curl.h>
#include <jansson.h>

#include "common/base64.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/latch.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "gateway.h"
#include "gateway_int.h"
#include "guc.h"

#define GW_MAX_SOCKETS		64
#define GW_ASYNC_MAX		32	/* requests in flight at once (the worker) */
#define GW_MAX_BODY			(16 * 1024 * 1024)	/* largest answer accepted */
#define GW_MAX_WATCH_LINE	(4 * 1024 * 1024)

typedef struct GwBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
	bool		overflow;
} GwBuf;

typedef struct GwSock
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} GwSock;

/* per-process state */
static CURLM *gw_multi = NULL;
static CURL *gw_easy = NULL;
static CURL *gw_watch = NULL;
static struct curl_slist *gw_headers = NULL;
static struct curl_slist *gw_watch_headers = NULL;
static char gw_errbuf[CURL_ERROR_SIZE];
static char gw_watch_errbuf[CURL_ERROR_SIZE];

static GwSock gw_socks[GW_MAX_SOCKETS];
static int	gw_nsocks = 0;

/*
 * A wait set kept across waits while curl uses one socket (the kept-alive
 * connection): creating an epoll set per wait costs several syscalls. The
 * socket is identified by its descriptor and inode, so a closed socket
 * whose number is reused by a new one is never mistaken for it.
 */
static WaitEventSet *gw_set = NULL;
static curl_socket_t gw_set_fd = CURL_SOCKET_BAD;
static ino_t gw_set_ino = 0;
static int	gw_set_pos = -1;
static uint32 gw_set_events = 0;
static bool gw_timer_armed = false;
static TimestampTz gw_timer_at = 0;

static GwBuf gw_body;			/* answer of the current request */
static bool gw_req_done;
static CURLcode gw_req_result;

/* watch stream state */
static GwBuf gw_wline;			/* bytes of the watch stream not yet parsed */
static bool gw_watch_active = false;
static bool gw_watch_done;		/* transfer ended */
static bool gw_watch_created;
static bool gw_watch_deleted;
static bool gw_watch_broken;
static int64 gw_watch_min_rev = 0;	/* a DELETE counts only above this */
static bool gw_watch_any_change = false;	/* a PUT counts too */

/*
 * The events of the current watch that count (above min_rev), so a rearm
 * to a higher revision keeps the later ones, and a semaphore waiter can
 * tell whose key went. A full ring counts as "something happened".
 */
#define GW_WATCH_RING 32
typedef struct GwWatchEvent
{
	int64		modrev;
	bool		deleted;
	char	   *key_b64;		/* malloc'd */
} GwWatchEvent;
static GwWatchEvent gw_wev[GW_WATCH_RING];
static int	gw_nwev = 0;
static bool gw_wev_overflow = false;

/* TLS settings applied to the handles (the auth token is auth.c's) */
static char *gw_tls_applied = NULL;	/* "ca|cert|key" last applied */
static bool gw_watch_unauth;	/* the watch stream said: bad token */


/*
 * Asynchronous requests (the worker): each has its own easy handle, kept
 * for reuse, and its own answer buffer; all run on gw_multi at once.
 */
typedef struct GwAsync
{
	bool		used;			/* started, result not yet taken */
	bool		done;			/* transfer ended */
	CURLcode	result;
	CURL	   *easy;
	GwBuf		body;
	char	   *post;			/* malloc'd request body */
	int			ep;				/* endpoint index it went to */
	int			tag;			/* the caller's */
	EtcdParseFn parse;
	void	   *arg;
	char		errbuf[CURL_ERROR_SIZE];
} GwAsync;

static GwAsync gw_async[GW_ASYNC_MAX];

/*
 * The keepalive stream (the worker): one chunked POST to
 * /v3/lease/keepalive carrying a message per renewal, each answered in
 * order by one line. Needs "Expect: 100-continue" (without it etcd's Go
 * server drains the body at its first answer and later answers stall:
 * etcd #8237). Messages wait in gw_ka_out until libcurl asks for them; the
 * upload is paused while there is nothing to send.
 */
#define GW_KA_MAX_RESULTS	1024

static CURL *gw_ka = NULL;
static struct curl_slist *gw_ka_headers = NULL;
static char gw_ka_errbuf[CURL_ERROR_SIZE];
static bool gw_ka_active = false;	/* in the multi handle */
static bool gw_ka_done = false; /* the transfer ended (it should not) */
static bool gw_ka_broken = false;	/* a bad or error line: unusable */
static bool gw_ka_paused = false;	/* upload paused: nothing to send */
static GwBuf gw_ka_out;			/* bytes not yet handed to libcurl */
static size_t gw_ka_out_pos = 0;
static GwBuf gw_ka_in;			/* answer bytes not yet parsed */
static EtcdKaResult gw_ka_results[GW_KA_MAX_RESULTS];
static int	gw_ka_nresults = 0;
static bool gw_ka_unauth = false;	/* the stream said: bad token */
static int	gw_async_inflight = 0;
static bool gw_latch_seen = false;	/* gw_drive saw the latch set */
static int	gw_wait_kind = ETCD_WAIT_REQUEST;	/* what waits here are for */

/*
 * Postmaster death: every process exits at its next wait
 * (WL_EXIT_ON_PM_DEATH), but the worker (etcd_gateway_watch_postmaster)
 * is told instead, to send what the exiting backends handed it first.
 */
static bool gw_pm_watch = false;
static bool gw_pm_dead = false;
static int	gw_set_pm = 0;		/* the postmaster event gw_set was made with */

static int
gw_pm_events(void)
{
	if (!gw_pm_watch)
		return WL_EXIT_ON_PM_DEATH;
	return gw_pm_dead ? 0 : WL_POSTMASTER_DEATH;
}

/*
 * gw_wait_latch is WaitLatch(latch, timeout) with postmaster death handled
 * as above; once it is known, a set of the latch alone (WaitLatch would
 * report it again at once).
 */
static int
gw_wait_latch(long ms)
{
	int			pm = gw_pm_events();
	int			rc;

	if (pm == 0)
	{
		WaitEventSet *set = etcd_create_wait_event_set(1);
		WaitEvent	ev;

		PG_TRY();
		{
			AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
			rc = WaitEventSetWait(set, ms, &ev, 1, etcd_wait_event(gw_wait_kind)) > 0 ?
				(int) ev.events : WL_TIMEOUT;
		}
		PG_CATCH();
		{
			FreeWaitEventSet(set);
			PG_RE_THROW();
		}
		PG_END_TRY();
		FreeWaitEventSet(set);
		return rc;
	}
	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | pm, ms, etcd_wait_event(gw_wait_kind));
	if (rc & WL_POSTMASTER_DEATH)
		gw_pm_dead = true;
	return rc;
}

/*
 * etcd_gateway_watch_postmaster: this process (the worker) is told of
 * postmaster death by etcd_gateway_postmaster_died instead of exiting.
 */
void
etcd_gateway_watch_postmaster(void)
{
	gw_pm_watch = true;
}

bool
etcd_gateway_postmaster_died(void)
{
	return gw_pm_dead;
}

/* pauses between rounds over the endpoints while etcd elects a leader */
#define GW_ELECTION_BACKOFF_MIN	50	/* ms */
#define GW_ELECTION_BACKOFF_MAX	400	/* ms */

/* header lists replaced while asynchronous transfers still used them */
static struct curl_slist *gw_retired[32];
static int	gw_nretired = 0;


const EtcdGatewayHooks *gw_hooks = NULL;
static TimestampTz gw_call_deadline = 0;	/* the caller's limit, 0: none */

/*
 * etcd_gateway_call_deadline bounds every request of this process until
 * it is reset (0): a request gets the smaller of its own timeout and what
 * is left before deadline.
 */
void
etcd_gateway_call_deadline(TimestampTz deadline)
{
	gw_call_deadline = deadline;
}

/*
 * etcd_gateway_wait_kind sets what this process's waits on etcd are shown
 * as (EtcdWaitKind, for pg_stat_activity); returns the previous kind.
 */
int
etcd_gateway_wait_kind(int kind)
{
	int			old = gw_wait_kind;

	gw_wait_kind = kind;
	return old;
}


/*
 * etcd_gateway_set_hooks installs the token cache and counters (at
 * preload; without them each process authenticates on its own).
 */
void
etcd_gateway_set_hooks(const EtcdGatewayHooks *hooks)
{
	gw_hooks = hooks;
}

/* endpoints, parsed from etcd_lock.endpoints when it changes */
static char *gw_eps[ETCD_MAX_ENDPOINTS];
static int	gw_neps = 0;
static char *gw_eps_source = NULL;
static int	gw_cur = 0;			/* endpoint that answered last */
static int	gw_hint = -1;		/* the instance's hint, as we last saw it */

/*
 * gw_buf_append appends bytes to a malloc'd buffer; false (and the overflow
 * flag) if it would exceed limit or memory runs out. Called from curl
 * callbacks, so it must never ereport.
 */
static bool
gw_buf_append(GwBuf *b, const char *p, size_t n, size_t limit)
{
	if (b->len + n + 1 > limit)
	{
		b->overflow = true;
		return false;
	}
	if (b->len + n + 1 > b->cap)
	{
		size_t		cap = b->cap ? b->cap : 4096;
		char	   *d;

		while (cap < b->len + n + 1)
			cap *= 2;
		d = realloc(b->data, cap);
		if (!d)
		{
			b->overflow = true;
			return false;
		}
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return true;
}

static void
gw_buf_reset(GwBuf *b)
{
	b->len = 0;
	b->overflow = false;
	if (b->data)
		b->data[0] = '\0';
	/* don't keep a huge buffer around after a huge answer */
	if (b->cap > 1024 * 1024)
	{
		free(b->data);
		b->data = NULL;
		b->cap = 0;
	}
}

static size_t
gw_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		n = size * nmemb;
	GwBuf	   *b = (GwBuf *) userdata;

	if (!gw_buf_append(b, ptr, n, GW_MAX_BODY))
		return 0;				/* curl fails the transfer with WRITE_ERROR */
	return n;
}

/*
 * gw_watch_line interprets one line of the watch stream: each is a JSON
 * object {"result":{...}} or {"error":{...}}. Sets the watch flags. Runs
 * inside a curl callback: no ereport, jansson memory only.
 */
static void
gw_watch_line(const char *line, size_t len)
{
	json_t	   *root,
			   *res,
			   *events;
	json_error_t jerr;

	if (len == 0)
		return;
	root = json_loadb(line, len, 0, &jerr);
	if (!root || !json_is_object(root))
	{
		gw_watch_broken = true;
		json_decref(root);
		return;
	}
	res = json_object_get(root, "result");
	if (!json_is_object(res))
	{
		/* {"error":{...}} or something else: not a usable watch */
		json_t	   *err = json_object_get(root, "error");

		if (json_is_object(err) &&
			json_integer_value(json_object_get(err, "grpc_code")) == GRPC_UNAUTHENTICATED)
			gw_watch_unauth = true;
		gw_watch_broken = true;
		json_decref(root);
		return;
	}
	if (json_is_true(json_object_get(res, "created")))
		gw_watch_created = true;
	if (json_is_true(json_object_get(res, "canceled")))
		gw_watch_broken = true;
	events = json_object_get(res, "events");
	if (json_is_array(events))
	{
		size_t		i;
		json_t	   *ev;

		json_array_foreach(events, i, ev)
		{
			json_t	   *type = json_object_get(ev, "type");
			int64		modrev = 0;
			bool		is_delete = (json_is_string(type) && strcmp(json_string_value(type), "DELETE") == 0) ||
				(json_is_integer(type) && json_integer_value(type) == 1);

			if (!is_delete && !gw_watch_any_change)
				continue;

			/*
			 * Only the deletion of the incarnation we wait for counts: a
			 * member behind the one we read from may still deliver the
			 * delete of an earlier incarnation of the same key name (its
			 * revision is below the one the key was created with).
			 */
			if (!etcd_json_int64(json_object_get(ev, "kv"), "mod_revision", &modrev))
				gw_watch_broken = true;
			else if (modrev > gw_watch_min_rev)
			{
				json_t	   *jkey = json_object_get(json_object_get(ev, "kv"), "key");

				gw_watch_deleted = true;
				if (gw_nwev < GW_WATCH_RING)
				{
					gw_wev[gw_nwev].modrev = modrev;
					gw_wev[gw_nwev].deleted = is_delete;
					gw_wev[gw_nwev].key_b64 = json_is_string(jkey) ?
						strdup(json_string_value(jkey)) : NULL;
					gw_nwev++;
				}
				else
					gw_wev_overflow = true;
			}
		}
	}
	json_decref(root);
}

/*
 * gw_ka_line interprets one answer of the keepalive stream: {"result":
 * {"ID":..,"TTL":..}} (no TTL: the lease is gone) or {"error":{...}}. Runs
 * inside a curl callback: no ereport, jansson memory only.
 */
static void
gw_ka_line(const char *line, size_t len)
{
	json_t	   *root,
			   *res;
	json_error_t jerr;
	int64		id = 0,
				ttl = 0;

	if (len == 0)
		return;
	root = json_loadb(line, len, 0, &jerr);
	res = json_is_object(root) ? json_object_get(root, "result") : NULL;
	if (!json_is_object(res) || !etcd_json_int64(res, "ID", &id) ||
		!etcd_json_int64(res, "TTL", &ttl) || id == 0 ||
		gw_ka_nresults >= GW_KA_MAX_RESULTS)
	{
		json_t	   *err = json_is_object(root) ? json_object_get(root, "error") : NULL;

		if (json_is_object(err) &&
			json_integer_value(json_object_get(err, "grpc_code")) == GRPC_UNAUTHENTICATED)
			gw_ka_unauth = true;
		gw_ka_broken = true;
		json_decref(root);
		return;
	}
	gw_ka_results[gw_ka_nresults].lease_id = id;
	gw_ka_results[gw_ka_nresults].ttl = ttl;
	gw_ka_nresults++;
	json_decref(root);
}

/*
 * gw_stream_lines appends n bytes of a streamed answer (one JSON object per
 * line: watch events, keepalive answers) to buf and hands every complete
 * line to line(). False if the unparsed rest grows past the limit. Runs
 * inside a curl callback: no ereport.
 */
static bool
gw_stream_lines(GwBuf *buf, const char *ptr, size_t n,
				void (*line) (const char *line, size_t len))
{
	char	   *nl;

	if (!gw_buf_append(buf, ptr, n, GW_MAX_WATCH_LINE))
		return false;
	while ((nl = memchr(buf->data, '\n', buf->len)) != NULL)
	{
		size_t		linelen = nl - buf->data;

		line(buf->data, linelen);
		memmove(buf->data, nl + 1, buf->len - linelen - 1);
		buf->len -= linelen + 1;
		buf->data[buf->len] = '\0';
	}
	return true;
}

static size_t
gw_ka_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		n = size * nmemb;

	if (!gw_stream_lines(&gw_ka_in, ptr, n, gw_ka_line))
	{
		gw_ka_broken = true;
		return 0;
	}
	return n;
}

/*
 * gw_ka_read_cb hands libcurl the queued messages, or pauses the upload.
 */
static size_t
gw_ka_read_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
	size_t		avail = gw_ka_out.len - gw_ka_out_pos;
	size_t		n = Min(avail, size * nitems);

	if (n == 0)
	{
		gw_ka_paused = true;
		return CURL_READFUNC_PAUSE;
	}
	memcpy(buf, gw_ka_out.data + gw_ka_out_pos, n);
	gw_ka_out_pos += n;
	if (gw_ka_out_pos == gw_ka_out.len)
	{
		gw_ka_out.len = 0;
		gw_ka_out_pos = 0;
	}
	return n;
}

static size_t
gw_watch_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	size_t		n = size * nmemb;

	if (!gw_stream_lines(&gw_wline, ptr, n, gw_watch_line))
	{
		gw_watch_broken = true;
		return 0;
	}
	return n;
}

static int
gw_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < gw_nsocks; i++)
		if (gw_socks[i].fd == s)
			break;
	if (what == CURL_POLL_REMOVE)
	{
		if (i < gw_nsocks)
			gw_socks[i] = gw_socks[--gw_nsocks];
		return 0;
	}
	if (i == gw_nsocks)
	{
		if (gw_nsocks >= GW_MAX_SOCKETS)
			return -1;
		gw_nsocks++;
	}
	gw_socks[i].fd = s;
	gw_socks[i].what = what;
	return 0;
}

static int
gw_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	if (timeout_ms < 0)
		gw_timer_armed = false;
	else
	{
		gw_timer_armed = true;
		gw_timer_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	}
	return 0;
}

static CURL *
gw_new_easy(char *errbuf, struct curl_slist *headers)
{
	CURL	   *e = curl_easy_init();

	if (!e)
		elog(ERROR, "etcd_lock: could not initialize libcurl");
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	return e;
}

/*
 * gw_set_headers (re)builds both handles' header lists, with the auth token
 * if there is one. libcurl copies nothing: the lists must outlive their use.
 */
void
gw_set_headers(void)
{
	struct curl_slist *h = NULL,
			   *w = NULL;
	char	   *auth = NULL;

	if (gw_auth_token())
	{
		auth = malloc(strlen(gw_auth_token()) + 32);
		if (!auth)
			elog(ERROR, "etcd_lock: out of memory");
		sprintf(auth, "Authorization: %s", gw_auth_token());
	}
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Expect:");
	/* a member cut off from quorum must fail at once, not hang */
	h = curl_slist_append(h, "Grpc-Metadata-hasleader: true");
	w = curl_slist_append(w, "Content-Type: application/json");
	w = curl_slist_append(w, "Expect:");
	/* a watch on a member cut off from quorum must fail, not hang */
	w = curl_slist_append(w, "Grpc-Metadata-hasleader: true");
	if (auth)
	{
		h = curl_slist_append(h, auth);
		w = curl_slist_append(w, auth);
		explicit_bzero(auth, strlen(auth));
		free(auth);
	}
	if (!h || !w)
		elog(ERROR, "etcd_lock: out of memory");
	if (gw_easy)
		curl_easy_setopt(gw_easy, CURLOPT_HTTPHEADER, h);
	/* a watch in progress keeps its list: it gets the new one when reopened */
	if (gw_watch && !gw_watch_active)
		curl_easy_setopt(gw_watch, CURLOPT_HTTPHEADER, w);
	for (int i = 0; i < GW_ASYNC_MAX; i++)
		if (gw_async[i].easy && !gw_async[i].used)
			curl_easy_setopt(gw_async[i].easy, CURLOPT_HTTPHEADER, h);

	/*
	 * libcurl does not copy header lists: one that a transfer in flight
	 * still uses is freed only once nothing is in flight.
	 */
	if (gw_async_inflight > 0 && gw_headers)
	{
		/* kept until nothing is in flight; if there is no room, leaked */
		if (gw_nretired < lengthof(gw_retired))
			gw_retired[gw_nretired++] = gw_headers;
	}
	else if (gw_headers)
		curl_slist_free_all(gw_headers);
	if (gw_watch_headers && gw_watch_active)
	{
		if (gw_nretired < lengthof(gw_retired))
			gw_retired[gw_nretired++] = gw_watch_headers;
	}
	else if (gw_watch_headers)
		curl_slist_free_all(gw_watch_headers);
	gw_headers = h;
	gw_watch_headers = w;
}


/*
 * gw_tls_setup applies the TLS settings to one handle.
 */
static void
gw_tls_setup(CURL *h)
{
	const char *ca = etcd_lock_tls_ca_file ? etcd_lock_tls_ca_file : "";
	const char *cert = etcd_lock_tls_cert_file ? etcd_lock_tls_cert_file : "";
	const char *key = etcd_lock_tls_key_file ? etcd_lock_tls_key_file : "";

	curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(h, CURLOPT_CAINFO, ca[0] ? ca : NULL);
	curl_easy_setopt(h, CURLOPT_SSLCERT, cert[0] ? cert : NULL);
	curl_easy_setopt(h, CURLOPT_SSLKEY, key[0] ? key : NULL);
}


/*
 * gw_apply_tls sets the TLS files on both handles when the settings
 * changed. Peer and host name verification stay on (libcurl's default).
 */
void
gw_apply_tls(void)
{
	const char *ca = etcd_lock_tls_ca_file ? etcd_lock_tls_ca_file : "";
	const char *cert = etcd_lock_tls_cert_file ? etcd_lock_tls_cert_file : "";
	const char *key = etcd_lock_tls_key_file ? etcd_lock_tls_key_file : "";
	char	   *cfg = psprintf("%s|%s|%s", ca, cert, key);
	CURL	   *handles[2 + GW_ASYNC_MAX] = {gw_easy, gw_watch};
	int			i;

	if (gw_tls_applied && strcmp(gw_tls_applied, cfg) == 0)
	{
		pfree(cfg);
		return;
	}
	for (i = 0; i < GW_ASYNC_MAX; i++)
		handles[2 + i] = gw_async[i].easy;
	for (i = 0; i < lengthof(handles); i++)
		if (handles[i] != NULL)
			gw_tls_setup(handles[i]);
	if (gw_tls_applied)
		free(gw_tls_applied);
	gw_tls_applied = strdup(cfg);
	pfree(cfg);
	/* libcurl does not reuse a connection made with other TLS settings */
}

/*
 * etcd_gateway_preload initializes libcurl (and the TLS library under it)
 * in the postmaster, at preload: every backend inherits it through fork
 * instead of paying about a millisecond for it at its first lock.
 */
void
etcd_gateway_preload(void)
{
	if (curl_global_init(CURL_GLOBAL_ALL) != 0)
		elog(WARNING, "etcd_lock: could not initialize libcurl at server start");
}

/*
 * gw_init creates this process's curl handles once.
 */
void
gw_init(void)
{
	if (gw_multi)
		return;
	if (curl_global_init(CURL_GLOBAL_ALL) != 0)
		elog(ERROR, "etcd_lock: could not initialize libcurl");
	gw_easy = gw_new_easy(gw_errbuf, NULL);
	curl_easy_setopt(gw_easy, CURLOPT_WRITEFUNCTION, gw_write_cb);
	curl_easy_setopt(gw_easy, CURLOPT_WRITEDATA, &gw_body);
	gw_watch = gw_new_easy(gw_watch_errbuf, NULL);
	curl_easy_setopt(gw_watch, CURLOPT_WRITEFUNCTION, gw_watch_write_cb);
	gw_set_headers();

	gw_multi = curl_multi_init();
	if (!gw_multi)
		elog(ERROR, "etcd_lock: could not initialize libcurl");
	curl_multi_setopt(gw_multi, CURLMOPT_SOCKETFUNCTION, gw_socket_cb);
	curl_multi_setopt(gw_multi, CURLMOPT_TIMERFUNCTION, gw_timer_cb);
}

/*
 * gw_endpoints returns the parsed endpoint list, reparsing it when the
 * setting changed. The check hook already validated it.
 */
static int
gw_endpoints(void)
{
	const char *src = etcd_lock_endpoints ? etcd_lock_endpoints : "";

	if (gw_eps_source == NULL || strcmp(gw_eps_source, src) != 0)
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
		while (gw_neps > 0)
			free(gw_eps[--gw_neps]);
		memcpy(gw_eps, eps, sizeof(char *) * n);
		gw_neps = n;
		/* start where the instance last got an answer */
		gw_cur = gw_hooks && gw_hooks->endpoint_get ? gw_hooks->endpoint_get(src) : 0;
		if (gw_cur < 0 || gw_cur >= n)
			gw_cur = 0;
		gw_hint = gw_cur;
		if (gw_eps_source)
			free(gw_eps_source);
		gw_eps_source = strdup(src);
		if (!gw_eps_source)
			elog(ERROR, "etcd_lock: out of memory");
	}
	return gw_neps;
}

/*
 * gw_answered notes that endpoint idx answered: the instance's other
 * processes (new backends) start with it.
 */
static void
gw_answered(int idx)
{
	gw_cur = idx;
	if (idx != gw_hint && gw_hooks && gw_hooks->endpoint_put && gw_eps_source)
	{
		gw_hooks->endpoint_put(gw_eps_source, idx);
		gw_hint = idx;
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
	return gw_eps[gw_cur % gw_neps];
}

/*
 * gw_collect reads curl's completion messages into the done flags.
 */
static void
gw_collect(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(gw_multi, &left)) != NULL)
	{
		if (msg->msg != CURLMSG_DONE)
			continue;
		if (msg->easy_handle == gw_easy)
		{
			gw_req_done = true;
			gw_req_result = msg->data.result;
		}
		else if (msg->easy_handle == gw_watch)
			gw_watch_done = true;
		else if (msg->easy_handle == gw_ka)
			gw_ka_done = true;
		else
		{
			GwAsync    *a = NULL;

			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &a);
			if (a && a->used)
			{
				a->done = true;
				a->result = msg->data.result;
			}
		}
	}
}

/*
 * gw_drive runs curl's transfers until cond() holds or the deadline passes.
 * It sleeps on curl's sockets, curl's timer and the process latch; a latch
 * wakeup runs CHECK_FOR_INTERRUPTS, which may throw (the caller cleans up
 * its transfer in PG_CATCH). Returns whether cond() became true.
 */
static uint32
gw_sock_events(int i)
{
	uint32		ev = 0;

	if (gw_socks[i].what & CURL_POLL_IN)
		ev |= WL_SOCKET_READABLE;
	if (gw_socks[i].what & CURL_POLL_OUT)
		ev |= WL_SOCKET_WRITEABLE;

	/*
	 * libcurl keeps asking to write on the keepalive stream's socket while
	 * its upload is paused (nothing to send): waiting for writability there
	 * would wake at once, forever. Only its answers matter until a renewal
	 * is queued (which unpauses the upload).
	 */
	if ((ev & WL_SOCKET_WRITEABLE) && gw_ka_active && gw_ka_paused)
	{
		curl_socket_t kfd = CURL_SOCKET_BAD;

		if (curl_easy_getinfo(gw_ka, CURLINFO_ACTIVESOCKET, &kfd) == CURLE_OK &&
			kfd == gw_socks[i].fd)
			ev &= ~WL_SOCKET_WRITEABLE;
	}
	return ev;
}

/*
 * gw_wait_all waits on the latch and every socket curl uses, in a wait set
 * made for this wait. The set holds an epoll descriptor, which PostgreSQL 15
 * does not track: it is freed on every path, including an error.
 */
static int
gw_wait_all(long timeout, WaitEvent *evs, int nevs)
{
	WaitEventSet *set = etcd_create_wait_event_set(gw_nsocks + 2);
	int			nev = 0;
	int			i;

	PG_TRY();
	{
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		if (gw_pm_events())
			AddWaitEventToSet(set, gw_pm_events(), PGINVALID_SOCKET, NULL, NULL);
		for (i = 0; i < gw_nsocks; i++)
			if (gw_sock_events(i))
				AddWaitEventToSet(set, gw_sock_events(i), gw_socks[i].fd, NULL, NULL);
		nev = WaitEventSetWait(set, timeout, evs, nevs, etcd_wait_event(gw_wait_kind));
	}
	PG_CATCH();
	{
		FreeWaitEventSet(set);
		PG_RE_THROW();
	}
	PG_END_TRY();
	FreeWaitEventSet(set);
	return nev;
}

static bool
gw_drive(bool (*cond) (void), TimestampTz deadline)
{
	int			running;

	if (gw_timer_armed && GetCurrentTimestamp() >= gw_timer_at)
		gw_timer_armed = false;
	curl_multi_socket_action(gw_multi, CURL_SOCKET_TIMEOUT, 0, &running);
	gw_collect();
	for (;;)
	{
		WaitEvent	evs[GW_MAX_SOCKETS + 2];
		int			nev,
					i;
		long		timeout;
		TimestampTz now;
		bool		latch = false;

		if (cond())
			return true;
		now = GetCurrentTimestamp();
		if (now >= deadline)
			return false;
		timeout = (long) ((deadline - now + 999) / 1000);
		if (gw_timer_armed)
			timeout = Min(timeout, Max(0, (long) ((gw_timer_at - now + 999) / 1000)));
		if (gw_nsocks == 0)
			timeout = Min(timeout, 10);	/* e.g. a resolver without a socket */

		if (gw_nsocks == 1 && gw_sock_events(0) != 0)
		{
			/* the usual case: one kept-alive connection; reuse the set */
			uint32		ev = gw_sock_events(0);
			struct stat sb;
			ino_t		ino = fstat(gw_socks[0].fd, &sb) == 0 ? sb.st_ino : 0;

			if (gw_set == NULL || gw_set_fd != gw_socks[0].fd || gw_set_ino != ino || ino == 0 ||
				gw_set_pm != gw_pm_events())
			{
				if (gw_set)
					FreeWaitEventSet(gw_set);
				gw_set = NULL;
				gw_set_fd = CURL_SOCKET_BAD;
				gw_set = etcd_create_wait_event_set(3);
				AddWaitEventToSet(gw_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
				gw_set_pm = gw_pm_events();
				if (gw_set_pm)
					AddWaitEventToSet(gw_set, gw_set_pm, PGINVALID_SOCKET, NULL, NULL);
				gw_set_pos = AddWaitEventToSet(gw_set, ev, gw_socks[0].fd, NULL, NULL);
				gw_set_fd = gw_socks[0].fd;
				gw_set_ino = ino;
				gw_set_events = ev;
			}
			else if (ev != gw_set_events)
			{
				ModifyWaitEvent(gw_set, gw_set_pos, ev, NULL);
				gw_set_events = ev;
			}
			nev = WaitEventSetWait(gw_set, timeout, evs, lengthof(evs),
								   etcd_wait_event(gw_wait_kind));
		}
		else
			nev = gw_wait_all(timeout, evs, lengthof(evs));

		for (i = 0; i < nev; i++)
		{
			int			flags = 0;

			if (evs[i].events & WL_LATCH_SET)
			{
				latch = true;
				gw_latch_seen = true;
				continue;
			}
			if (evs[i].events & WL_POSTMASTER_DEATH)
			{
				gw_pm_dead = true;	/* the caller looks (the worker) */
				gw_latch_seen = true;
				continue;
			}
			if (evs[i].events & WL_SOCKET_READABLE)
				flags |= CURL_CSELECT_IN;
			if (evs[i].events & WL_SOCKET_WRITEABLE)
				flags |= CURL_CSELECT_OUT;
			if (flags)
				curl_multi_socket_action(gw_multi, evs[i].fd, flags, &running);
		}
		if (nev == 0 || (gw_timer_armed && GetCurrentTimestamp() >= gw_timer_at))
		{
			/*
			 * curl's timer is one-shot: once it has fired, curl re-arms it
			 * through the callback if it needs it again. Left armed in the
			 * past it would make every wait return at once (a busy loop).
			 */
			if (gw_timer_armed && GetCurrentTimestamp() >= gw_timer_at)
				gw_timer_armed = false;
			curl_multi_socket_action(gw_multi, CURL_SOCKET_TIMEOUT, 0, &running);
		}
		gw_collect();
		if (latch)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
}

static bool
gw_req_cond(void)
{
	return gw_req_done;
}

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
				 http, gw_eps_source ? etcd_current_endpoint() : "the endpoint");
	}
	else
		snprintf(st->message, sizeof(st->message), "HTTP %ld", http);
	json_decref(root);
}

static void
gw_error_reply(EtcdStatus *st, long http)
{
	gw_error_reply_buf(st, http, &gw_body);
}

/*
 * gw_pause waits ms milliseconds between two rounds over the endpoints,
 * interruptibly (a cancel throws; a latch set for the caller is noted, as
 * gw_drive does, so its waits look again).
 */
static void
gw_pause(long ms)
{
	int			rc = gw_wait_latch(ms);

	if (rc & WL_LATCH_SET)
	{
		ResetLatch(MyLatch);
		gw_latch_seen = true;
	}
	CHECK_FOR_INTERRUPTS();
}

/*
 * gw_perform runs the prepared request on gw_easy until it completes or the
 * deadline passes (false). The handle is detached on every path.
 */
static bool
gw_perform(TimestampTz deadline)
{
	bool		finished;

	gw_buf_reset(&gw_body);
	gw_errbuf[0] = '\0';
	gw_req_done = false;
	curl_multi_add_handle(gw_multi, gw_easy);
	PG_TRY();
	{
		finished = gw_drive(gw_req_cond, deadline);
	}
	PG_CATCH();
	{
		curl_multi_remove_handle(gw_multi, gw_easy);
		PG_RE_THROW();
	}
	PG_END_TRY();
	curl_multi_remove_handle(gw_multi, gw_easy);
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
	long		backoff = GW_ELECTION_BACKOFF_MIN;

	gw_init();
	neps = gw_endpoints();
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(timeout_ms, 1));
	memset(st, 0, sizeof(*st));
	tried[0] = '\0';
	tried_log[0] = '\0';

	for (attempt = 0;; attempt++)
	{
		int			idx = (gw_cur + attempt) % neps;
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
		snprintf(url, sizeof(url), "%s%s", gw_eps[idx], path);
		GW_COUNT(GW_EV_REQUEST);
		if (attempt > 0)
			GW_COUNT(GW_EV_FAILOVER);
		curl_easy_setopt(gw_easy, CURLOPT_URL, url);
		curl_easy_setopt(gw_easy, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(gw_easy, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
		curl_easy_setopt(gw_easy, CURLOPT_CONNECTTIMEOUT_MS, remaining);
		finished = gw_perform(TimestampTzPlusMilliseconds(GetCurrentTimestamp(), remaining));

		rc = finished ? gw_req_result : CURLE_OPERATION_TIMEDOUT;
		if (rc == CURLE_OK)
			curl_easy_getinfo(gw_easy, CURLINFO_RESPONSE_CODE, &http);
		if (rc == CURLE_OK && http == 200)
		{
			json_t	   *root;
			json_error_t jerr;
			bool		ok;

			gw_answered(idx);
			root = json_loadb(gw_body.data ? gw_body.data : "", gw_body.len, 0, &jerr);
			if (!root)
			{
				char		clean[101];
				char		why[101];

				gw_excerpt(clean, sizeof(clean), gw_body.data, 100);
				gw_excerpt(why, sizeof(why), jerr.text, 100);
				st->kind = ETCD_BAD_REPLY;
				snprintf(st->message, sizeof(st->message),
						 "%s answered invalid JSON (%s): %s", gw_eps[idx], why, clean);
				return false;
			}
			ok = gw_parse(root, parse, arg);
			if (!ok)
			{
				char		clean[201];

				gw_excerpt(clean, sizeof(clean), gw_body.data, 200);
				st->kind = ETCD_BAD_REPLY;
				snprintf(st->message, sizeof(st->message),
						 "%s answered an unexpected %s: %s", gw_eps[idx], path, clean);
				return false;
			}
			st->kind = ETCD_OK;
			return true;
		}
		if (rc == CURLE_OK && http < 500)
		{
			/* etcd answered: an error that another member would repeat */
			gw_answered(idx);
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

			if (rc == CURLE_OK)
			{
				/* a 5xx from etcd ("no leader"...): keep what it said */
				EtcdStatus	e5;

				gw_error_reply(&e5, http);
				if (http == 503 || e5.grpc_code == GRPC_UNAVAILABLE)
					electing = true;
				snprintf(hbuf, sizeof(hbuf), "%s", e5.message);
				why = why_log = hbuf;
			}
			else if (rc == CURLE_WRITE_ERROR && gw_body.overflow)
				why = why_log = "answer too large";
			else if (!finished)
				why = why_log = "timed out";
			else
			{
				why = curl_easy_strerror(rc);
				why_log = gw_errbuf[0] ? gw_errbuf : why;
			}
			if (tlen < sizeof(tried) - 1)
				tlen += snprintf(tried + tlen, sizeof(tried) - tlen, "%s%s: %s",
								 tlen ? "; " : "", gw_eps[idx], why);
			if (tllen < sizeof(tried_log) - 1)
				tllen += snprintf(tried_log + tllen, sizeof(tried_log) - tllen, "%s%s: %s",
								  tllen ? "; " : "", gw_eps[idx], why_log);
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

	if (gw_call_deadline != 0 && gw_call_deadline < deadline)
		deadline = gw_call_deadline;

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
 * gw_async_begin puts one request on gw_multi (etcd_async_start without
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
		if (!gw_async[i].used)
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
	if (a->easy == NULL)
	{
		a->easy = gw_new_easy(a->errbuf, gw_headers);
		curl_easy_setopt(a->easy, CURLOPT_WRITEFUNCTION, gw_write_cb);
		curl_easy_setopt(a->easy, CURLOPT_WRITEDATA, &a->body);
		curl_easy_setopt(a->easy, CURLOPT_PRIVATE, (char *) a);
		gw_tls_setup(a->easy);
	}
	a->post = strdup(body);
	if (a->post == NULL)
		elog(ERROR, "etcd_lock: out of memory");
	a->ep = gw_cur % neps;
	snprintf(url, sizeof(url), "%s%s", gw_eps[a->ep], path);
	curl_easy_setopt(a->easy, CURLOPT_URL, url);
	curl_easy_setopt(a->easy, CURLOPT_HTTPHEADER, gw_headers);
	curl_easy_setopt(a->easy, CURLOPT_POSTFIELDS, a->post);
	curl_easy_setopt(a->easy, CURLOPT_POSTFIELDSIZE, (long) strlen(a->post));
	curl_easy_setopt(a->easy, CURLOPT_TIMEOUT_MS, (long) Max(1, timeout_ms));
	curl_easy_setopt(a->easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Max(1, timeout_ms));
	gw_buf_reset(&a->body);
	a->errbuf[0] = '\0';
	a->done = false;
	a->tag = tag;
	a->parse = parse;
	a->arg = arg;
	a->used = true;
	curl_multi_add_handle(gw_multi, a->easy);
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

	if (gw_latch_seen || gw_ka_nresults > 0 ||
		(gw_ka_active && (gw_ka_done || gw_ka_broken)))
		return true;
	for (i = 0; i < GW_ASYNC_MAX; i++)
		if (gw_async[i].used && gw_async[i].done)
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
	curl_multi_remove_handle(gw_multi, a->easy);
	gw_async_inflight--;
	if (a->result == CURLE_OK)
		curl_easy_getinfo(a->easy, CURLINFO_RESPONSE_CODE, &http);
	if (a->result == CURLE_OK && http == 200)
	{
		json_error_t jerr;
		json_t	   *root = json_loadb(a->body.data ? a->body.data : "", a->body.len, 0, &jerr);

		r->ok = root != NULL && gw_parse(root, a->parse, a->arg);
		gw_answered(a->ep);
		if (r->ok)
			st->kind = ETCD_OK;
		else
		{
			char		clean[201];

			if (a->tag == ETCD_ASYNC_AUTH_TAG)
				clean[0] = '\0';	/* gw_auth_failed words it */
			else
				gw_excerpt(clean, sizeof(clean), a->body.data, 200);
			st->kind = ETCD_BAD_REPLY;
			snprintf(st->message, sizeof(st->message), "%s answered an unexpected answer: %s",
					 gw_eps[a->ep % neps], clean);
		}
	}
	else if (a->result == CURLE_OK && http < 500)
	{
		gw_error_reply_buf(st, http, &a->body);
		if (st->grpc_code == GRPC_UNAUTHENTICATED || http == 401)
			gw_reject_token();	/* the next request authenticates again */
	}
	else
	{
		if (a->result == CURLE_OK)
			gw_error_reply_buf(st, http, &a->body);
		else
			snprintf(st->message, sizeof(st->message), "%s: %s", gw_eps[a->ep % neps],
					 a->result == CURLE_OPERATION_TIMEDOUT ? "timed out" :
					 curl_easy_strerror(a->result));
		if (a->errbuf[0])
			snprintf(st->log_message, sizeof(st->log_message), "%s: %s",
					 gw_eps[a->ep % neps], a->errbuf);
		st->kind = ETCD_UNREACHABLE;
		GW_COUNT(GW_EV_FAILURE);
		if (neps > 1 && a->ep == gw_cur % neps)
		{
			gw_cur = (gw_cur + 1) % neps;	/* next requests: next endpoint */
			GW_COUNT(GW_EV_FAILOVER);
		}
	}
	if (a->tag == ETCD_ASYNC_AUTH_TAG)
	{
		/* the password went out, the token came back: neither stays */
		explicit_bzero(a->post, strlen(a->post));
		if (a->body.data)
			explicit_bzero(a->body.data, a->body.len);
		gw_auth_async_finish(r);
	}
	free(a->post);
	a->post = NULL;
	a->used = false;
	a->done = false;
	if (gw_async_inflight == 0 && !gw_watch_active)
		while (gw_nretired > 0)
			curl_slist_free_all(gw_retired[--gw_nretired]);
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
	gw_latch_seen = false;
	if (gw_async_inflight == 0 && !gw_ka_active)
	{
		int			rc = gw_wait_latch(Max(0, timeout_ms));

		if (rc & WL_LATCH_SET)
			ResetLatch(MyLatch);
		return 0;
	}
	(void) gw_drive(gw_async_cond,
					TimestampTzPlusMilliseconds(GetCurrentTimestamp(), Max(0, timeout_ms)));
	for (i = 0; i < GW_ASYNC_MAX && n < max; i++)
		if (gw_async[i].used && gw_async[i].done)
			gw_async_finish(&gw_async[i], &out[n++]);
	return n;
}

/*
 * etcd_ka_stream_open starts the keepalive stream on the current endpoint
 * (closing one that is open). Renewals sent before etcd accepts the stream
 * wait in the upload buffer. False with st filled if it could not start.
 */
bool
etcd_ka_stream_open(EtcdStatus *st)
{
	char		url[1024];
	int			neps;

	gw_init();
	gw_apply_tls();
	neps = gw_endpoints();
	memset(st, 0, sizeof(*st));
	etcd_ka_stream_close(false);
	if (!gw_auth_ready(st, etcd_lock_request_timeout))
		return false;
	if (gw_ka == NULL)
	{
		gw_ka = gw_new_easy(gw_ka_errbuf, NULL);
		curl_easy_setopt(gw_ka, CURLOPT_WRITEFUNCTION, gw_ka_write_cb);
		curl_easy_setopt(gw_ka, CURLOPT_READFUNCTION, gw_ka_read_cb);
		curl_easy_setopt(gw_ka, CURLOPT_POST, 1L);
		curl_easy_setopt(gw_ka, CURLOPT_PRIVATE, (char *) NULL);
	}
	gw_tls_setup(gw_ka);
	/* its own header list: Expect and chunked, plus the current token */
	if (gw_ka_headers)
		curl_slist_free_all(gw_ka_headers);
	gw_ka_headers = NULL;
	gw_ka_headers = curl_slist_append(gw_ka_headers, "Content-Type: application/json");
	gw_ka_headers = curl_slist_append(gw_ka_headers, "Transfer-Encoding: chunked");
	gw_ka_headers = curl_slist_append(gw_ka_headers, "Expect: 100-continue");
	gw_ka_headers = curl_slist_append(gw_ka_headers, "Grpc-Metadata-hasleader: true");
	if (gw_auth_token())
	{
		char	   *auth = psprintf("Authorization: %s", gw_auth_token());

		gw_ka_headers = curl_slist_append(gw_ka_headers, auth);
		explicit_bzero(auth, strlen(auth));
		pfree(auth);
	}
	if (gw_ka_headers == NULL)
		elog(ERROR, "etcd_lock: out of memory");
	curl_easy_setopt(gw_ka, CURLOPT_HTTPHEADER, gw_ka_headers);
	snprintf(url, sizeof(url), "%s/v3/lease/keepalive", gw_eps[gw_cur % neps]);
	curl_easy_setopt(gw_ka, CURLOPT_URL, url);
	curl_easy_setopt(gw_ka, CURLOPT_CONNECTTIMEOUT_MS, (long) etcd_lock_request_timeout);
	curl_easy_setopt(gw_ka, CURLOPT_EXPECT_100_TIMEOUT_MS, (long) etcd_lock_request_timeout);
	gw_buf_reset(&gw_ka_out);
	gw_buf_reset(&gw_ka_in);
	gw_ka_out_pos = 0;
	gw_ka_nresults = 0;
	gw_ka_errbuf[0] = '\0';
	gw_ka_done = gw_ka_broken = gw_ka_paused = false;
	gw_ka_unauth = false;
	curl_multi_add_handle(gw_multi, gw_ka);
	gw_ka_active = true;
	GW_COUNT(GW_EV_REQUEST);
	return true;
}

/*
 * etcd_ka_stream_usable says whether renewals can go on the stream.
 */
bool
etcd_ka_stream_active(void)
{
	return gw_ka_active;
}

bool
etcd_ka_stream_usable(void)
{
	return gw_ka_active && !gw_ka_done && !gw_ka_broken;
}

/*
 * etcd_ka_stream_send queues the renewal of lease_id on the stream (one
 * chunk); its answer comes from etcd_ka_stream_results, in send order.
 */
bool
etcd_ka_stream_send(int64 lease_id)
{
	char		msg[64];
	int			n;

	if (!etcd_ka_stream_usable())
		return false;
	n = snprintf(msg, sizeof(msg), "{\"ID\":\"" INT64_FORMAT "\"}\n", lease_id);
	if (!gw_buf_append(&gw_ka_out, msg, n, GW_MAX_BODY))
		return false;
	GW_COUNT(GW_EV_REQUEST);
	if (gw_ka_paused)
	{
		gw_ka_paused = false;
		curl_easy_pause(gw_ka, CURLPAUSE_CONT);
	}
	return true;
}

/*
 * etcd_ka_stream_results moves the answers received so far into out (at
 * most max), in the order they came; returns how many.
 */
int
etcd_ka_stream_results(EtcdKaResult *out, int max)
{
	int			n = Min(max, gw_ka_nresults);

	memcpy(out, gw_ka_results, n * sizeof(EtcdKaResult));
	memmove(gw_ka_results, gw_ka_results + n, (gw_ka_nresults - n) * sizeof(EtcdKaResult));
	gw_ka_nresults -= n;
	return n;
}

/*
 * etcd_ka_stream_close ends the stream (closing its connection); renewals
 * sent on it and not answered are the caller's to retry. If it failed (it
 * broke, or stalled: failed), the next requests go to the next endpoint;
 * if etcd said the token is invalid, the next request authenticates again.
 */
void
etcd_ka_stream_close(bool failed)
{
	int			neps;

	if (!gw_ka_active)
		return;
	if (failed || gw_ka_done || gw_ka_broken)
	{
		GW_COUNT(GW_EV_FAILURE);
		neps = gw_endpoints();
		if (gw_ka_unauth)
			gw_reject_token();
		else if (neps > 1)
		{
			gw_cur = (gw_cur + 1) % neps;
			GW_COUNT(GW_EV_FAILOVER);
		}
	}
	curl_multi_remove_handle(gw_multi, gw_ka);
	gw_ka_active = false;
	gw_ka_nresults = 0;
}

/* ---------------------------------------------------------------------
 * Watch
 * ---------------------------------------------------------------------
 */

static bool
gw_watch_created_cond(void)
{
	return gw_watch_created || gw_watch_broken || gw_watch_done;
}

static bool
gw_watch_event_cond(void)
{
	return gw_watch_deleted || gw_watch_broken || gw_watch_done;
}

/*
 * etcd_watch_open starts a watch on one key (which exists with create
 * revision key_rev: only a deletion above it counts) from the current
 * revision (no
 * start revision, so etcd serves it from its synced watcher group and
 * events arrive as they happen) and waits until etcd confirms it. The
 * caller re-reads the key afterwards: a deletion before the watch existed
 * is seen by that read, one after it by the watch. Returns false with st
 * filled if the watch could not be created.
 */
bool
etcd_watch_open(const char *key, int keylen, int64 key_rev, EtcdStatus *st)
{
	return etcd_watch_open_ex(key, keylen, false, key_rev, false, st);
}

static void
gw_watch_forget_events(int64 upto)
{
	int			i,
				n = 0;

	for (i = 0; i < gw_nwev; i++)
	{
		if (gw_wev[i].modrev > upto)
			gw_wev[n++] = gw_wev[i];
		else
			free(gw_wev[i].key_b64);
	}
	gw_nwev = n;
}

/*
 * etcd_watch_rearm makes only events above min_rev count from now on (the
 * caller read the queue again at that revision after the watch existed);
 * the later events already received still count.
 */
void
etcd_watch_rearm(int64 min_rev)
{
	gw_watch_min_rev = min_rev;
	gw_watch_forget_events(min_rev);
	gw_watch_deleted = gw_nwev > 0 || gw_wev_overflow;
}

/*
 * etcd_watch_saw_delete says whether a counted event was the deletion of
 * key.
 */
bool
etcd_watch_saw_delete(const char *key, int keylen)
{
	StringInfoData b;
	int			i;
	bool		found = false;

	initStringInfo(&b);
	etcd_append_b64(&b, key, keylen);
	for (i = 0; i < gw_nwev && !found; i++)
		found = gw_wev[i].deleted && gw_wev[i].key_b64 &&
			strcmp(gw_wev[i].key_b64, b.data) == 0;
	pfree(b.data);
	return found;
}

/*
 * etcd_watch_open_ex: etcd_watch_open on one key, or on the whole range of
 * keys starting with key (whole_prefix); only events above min_rev count,
 * deletions only unless any_change.
 */
bool
etcd_watch_open_ex(const char *key, int keylen, bool whole_prefix,
				   int64 key_rev, bool any_change, EtcdStatus *st)
{
	StringInfoData body;
	char		url[1024];
	int			neps;
	TimestampTz deadline;
	bool		created;

	gw_init();
	gw_apply_tls();
	neps = gw_endpoints();
	etcd_watch_close();
	memset(st, 0, sizeof(*st));
	gw_watch_unauth = false;
	gw_watch_min_rev = key_rev;
	gw_watch_any_change = any_change;
	gw_watch_forget_events(PG_INT64_MAX);
	gw_wev_overflow = false;

	initStringInfo(&body);
	appendStringInfoString(&body, "{\"create_request\":{\"key\":\"");
	etcd_append_b64(&body, key, keylen);
	if (whole_prefix)
	{
		char	   *end = palloc(keylen);
		int			n = keylen;

		/* the end of the range of keys starting with key (ends with '/') */
		memcpy(end, key, keylen);
		while (n > 0 && (unsigned char) end[n - 1] == 0xff)
			n--;
		if (n > 0)
		{
			end[n - 1]++;
			appendStringInfoString(&body, "\",\"range_end\":\"");
			etcd_append_b64(&body, end, n);
		}
		pfree(end);
	}
	appendStringInfoString(&body, "\"}}");

	snprintf(url, sizeof(url), "%s/v3/watch", gw_eps[gw_cur % neps]);
	curl_easy_setopt(gw_watch, CURLOPT_URL, url);
	curl_easy_setopt(gw_watch, CURLOPT_COPYPOSTFIELDS, body.data);
	pfree(body.data);
	curl_easy_setopt(gw_watch, CURLOPT_CONNECTTIMEOUT_MS, (long) etcd_lock_request_timeout);
	gw_buf_reset(&gw_wline);
	gw_watch_errbuf[0] = '\0';
	gw_watch_done = gw_watch_created = gw_watch_deleted = gw_watch_broken = false;
	curl_multi_add_handle(gw_multi, gw_watch);
	gw_watch_active = true;

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   etcd_lock_request_timeout);
	if (gw_call_deadline != 0 && gw_call_deadline < deadline)
		deadline = gw_call_deadline;
	PG_TRY();
	{
		created = gw_drive(gw_watch_created_cond, deadline) && gw_watch_created;
	}
	PG_CATCH();
	{
		etcd_watch_close();
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (!created)
	{
		st->kind = ETCD_UNREACHABLE;
		snprintf(st->message, sizeof(st->message), "%s: watch not created (%s)",
				 gw_eps[gw_cur % neps],
				 gw_watch_errbuf[0] ? gw_watch_errbuf :
				 gw_watch_broken ? "stream error" : "timed out");
		etcd_watch_close();
		if (gw_watch_unauth)
			gw_reject_token();	/* the next request authenticates again */
		else
			gw_cur = (gw_cur + 1) % neps;	/* next request: next endpoint */
		return false;
	}
	return true;
}

/*
 * etcd_watch_wait sleeps until the watched key is deleted, the stream
 * breaks, or the deadline passes. Interrupts throw; the caller closes the
 * watch in its cleanup.
 */
EtcdWatchResult
etcd_watch_wait(TimestampTz deadline)
{
	if (!gw_watch_active)
		return WATCH_BROKEN;
	if (!gw_drive(gw_watch_event_cond, deadline))
		return WATCH_TIMEOUT;
	if (gw_watch_deleted)
		return WATCH_DELETED;
	return WATCH_BROKEN;
}

/*
 * etcd_watch_close ends the watch stream (closing its connection). Safe to
 * call when no watch is open.
 */
void
etcd_watch_close(void)
{
	if (gw_watch_active)
	{
		curl_multi_remove_handle(gw_multi, gw_watch);
		gw_watch_active = false;
		if (gw_watch_headers)
			curl_easy_setopt(gw_watch, CURLOPT_HTTPHEADER, gw_watch_headers);
		if (gw_async_inflight == 0)
			while (gw_nretired > 0)
				curl_slist_free_all(gw_retired[--gw_nretired]);
	}
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
