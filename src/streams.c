/*
 * streams.c
 *		Requests whose answer is a sequence of lines: the watch (a backend
 *		waiting for a key's deletion) and the keepalive stream (the worker's
 *		renewals). Both are a GwStream: a transfer, its line splitter, its
 *		broken / unauthenticated state, its failover.
 *
 * Owns gw_watch and gw_ka (one each per process). Every line is a JSON
 * object {"result":{...}} or {"error":{...}}; the stream's result function
 * interprets a result, anything else breaks the stream. Line handling runs
 * inside curl callbacks: no ereport, jansson memory only. May call the
 * transport and the endpoints (gateway_int.h); knows nothing of locks.
 */
#include "postgres.h"

#include <curl/curl.h>
#include <jansson.h>

#include "miscadmin.h"
#include "utils/memutils.h"

#include "gateway.h"
#include "gateway_int.h"
#include "guc.h"

typedef struct GwStream GwStream;

struct GwStream
{
	GwTransfer	t;				/* t.body: the bytes of a line not yet complete */
	int			ep;				/* the endpoint it was opened on */
	bool		broken;			/* a bad line, an error line, a line too long */
	bool		unauth;			/* an error line said: bad token */
	/* interprets one {"result":...}; false: the stream is unusable */
	bool		(*result) (GwStream *s, json_t *res);
};

/*
 * gw_stream_line interprets one line of s.
 */
static void
gw_stream_line(GwStream *s, const char *line, size_t len)
{
	json_t	   *root,
			   *res;
	json_error_t jerr;

	if (len == 0)
		return;
	root = json_loadb(line, len, 0, &jerr);
	res = json_is_object(root) ? json_object_get(root, "result") : NULL;
	if (!json_is_object(res) || !s->result(s, res))
	{
		json_t	   *err = json_is_object(root) ? json_object_get(root, "error") : NULL;

		if (json_is_object(err) &&
			json_integer_value(json_object_get(err, "grpc_code")) == GRPC_UNAUTHENTICATED)
			s->unauth = true;
		s->broken = true;
	}
	json_decref(root);
}

/*
 * gw_stream_write_cb appends the bytes curl received to the stream's
 * buffer and hands every complete line to gw_stream_line. A line that grows
 * past the limit breaks the stream (curl fails the transfer).
 */
static size_t
gw_stream_write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	GwStream   *s = (GwStream *) userdata;
	GwBuf	   *buf = &s->t.body;
	size_t		n = size * nmemb;
	char	   *nl;

	if (!gw_buf_append(buf, ptr, n, GW_MAX_WATCH_LINE))
	{
		s->broken = true;
		return 0;
	}
	while ((nl = memchr(buf->data, '\n', buf->len)) != NULL)
	{
		size_t		linelen = nl - buf->data;

		gw_stream_line(s, buf->data, linelen);
		memmove(buf->data, nl + 1, buf->len - linelen - 1);
		buf->len -= linelen + 1;
		buf->data[buf->len] = '\0';
	}
	return n;
}

/*
 * gw_stream_start sends s (its handle set up by the caller) to path on the
 * current endpoint.
 */
static void
gw_stream_start(GwStream *s, const char *path)
{
	char		url[1024];

	s->ep = gw_ep_current();
	snprintf(url, sizeof(url), "%s%s", gw_ep_url(s->ep), path);
	curl_easy_setopt(s->t.easy, CURLOPT_URL, url);
	curl_easy_setopt(s->t.easy, CURLOPT_CONNECTTIMEOUT_MS, (long) etcd_lock_request_timeout);
	gw_buf_reset(&s->t.body);
	s->broken = s->unauth = false;
	gw_transfer_start(&s->t);
	GW_COUNT(GW_EV_REQUEST);
}

static bool
gw_stream_usable(GwStream *s)
{
	return s->t.active && !s->t.done && !s->broken;
}

/*
 * gw_stream_failed: s could not be used. If etcd said the token is
 * invalid, the next request authenticates again; otherwise the next
 * requests go to the next endpoint.
 */
static void
gw_stream_failed(GwStream *s)
{
	GW_COUNT(GW_EV_FAILURE);
	if (s->unauth)
		gw_reject_token();
	else
		gw_ep_advance();
}

/* ---------------------------------------------------------------------
 * Watch
 * ---------------------------------------------------------------------
 */

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

typedef struct GwWatch
{
	GwStream	s;
	bool		created;
	bool		deleted;		/* an event that counts arrived */
	int64		min_rev;		/* a DELETE counts only above this */
	bool		any_change;		/* a PUT counts too */
	GwWatchEvent ev[GW_WATCH_RING];
	int			nev;
	bool		overflow;
} GwWatch;

static GwWatch gw_watch;

/*
 * gw_watch_result interprets one result of the watch stream.
 */
static bool
gw_watch_result(GwStream *s, json_t *res)
{
	GwWatch    *w = (GwWatch *) s;
	json_t	   *events;

	if (json_is_true(json_object_get(res, "created")))
		w->created = true;
	if (json_is_true(json_object_get(res, "canceled")))
		s->broken = true;
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

			if (!is_delete && !w->any_change)
				continue;

			/*
			 * Only the deletion of the incarnation we wait for counts: a
			 * member behind the one we read from may still deliver the
			 * delete of an earlier incarnation of the same key name (its
			 * revision is below the one the key was created with).
			 */
			if (!etcd_json_int64(json_object_get(ev, "kv"), "mod_revision", &modrev))
				s->broken = true;
			else if (modrev > w->min_rev)
			{
				json_t	   *jkey = json_object_get(json_object_get(ev, "kv"), "key");

				w->deleted = true;
				if (w->nev < GW_WATCH_RING)
				{
					w->ev[w->nev].modrev = modrev;
					w->ev[w->nev].deleted = is_delete;
					w->ev[w->nev].key_b64 = json_is_string(jkey) ?
						strdup(json_string_value(jkey)) : NULL;
					w->nev++;
				}
				else
					w->overflow = true;
			}
		}
	}
	return true;
}

static bool
gw_watch_created_cond(void)
{
	return gw_watch.created || gw_watch.s.broken || gw_watch.s.t.done;
}

static bool
gw_watch_event_cond(void)
{
	return gw_watch.deleted || gw_watch.s.broken || gw_watch.s.t.done;
}

/*
 * etcd_watch_open starts a watch on one key (which exists with create
 * revision key_rev: only a deletion above it counts) from the current
 * revision (no start revision, so etcd serves it from its synced watcher
 * group and events arrive as they happen) and waits until etcd confirms
 * it. The caller re-reads the key afterwards: a deletion before the watch
 * existed is seen by that read, one after it by the watch. Returns false
 * with st filled if the watch could not be created.
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

	for (i = 0; i < gw_watch.nev; i++)
	{
		if (gw_watch.ev[i].modrev > upto)
			gw_watch.ev[n++] = gw_watch.ev[i];
		else
			free(gw_watch.ev[i].key_b64);
	}
	gw_watch.nev = n;
}

/*
 * etcd_watch_rearm makes only events above min_rev count from now on (the
 * caller read the queue again at that revision after the watch existed);
 * the later events already received still count.
 */
void
etcd_watch_rearm(int64 min_rev)
{
	gw_watch.min_rev = min_rev;
	gw_watch_forget_events(min_rev);
	gw_watch.deleted = gw_watch.nev > 0 || gw_watch.overflow;
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
	for (i = 0; i < gw_watch.nev && !found; i++)
		found = gw_watch.ev[i].deleted && gw_watch.ev[i].key_b64 &&
			strcmp(gw_watch.ev[i].key_b64, b.data) == 0;
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
	TimestampTz deadline;
	bool		created;

	gw_init();
	gw_apply_tls();
	(void) gw_endpoints();
	if (gw_watch.s.t.easy == NULL)
	{
		gw_watch.s.result = gw_watch_result;
		gw_transfer_init(&gw_watch.s.t, GW_HDR_WATCH, gw_stream_write_cb, &gw_watch.s);
	}
	etcd_watch_close();
	memset(st, 0, sizeof(*st));
	gw_watch.min_rev = key_rev;
	gw_watch.any_change = any_change;
	gw_watch_forget_events(PG_INT64_MAX);
	gw_watch.overflow = false;

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

	curl_easy_setopt(gw_watch.s.t.easy, CURLOPT_COPYPOSTFIELDS, body.data);
	pfree(body.data);
	gw_watch.created = gw_watch.deleted = false;
	gw_stream_start(&gw_watch.s, "/v3/watch");

	deadline = gw_bound(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													etcd_lock_request_timeout));
	PG_TRY();
	{
		created = gw_drive(gw_watch_created_cond, deadline) && gw_watch.created;
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
				 gw_ep_url(gw_watch.s.ep),
				 gw_watch.s.t.errbuf[0] ? gw_watch.s.t.errbuf :
				 gw_watch.s.broken ? "stream error" : "timed out");
		etcd_watch_close();
		gw_stream_failed(&gw_watch.s);
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
	if (!gw_watch.s.t.active)
		return WATCH_BROKEN;
	if (!gw_drive(gw_watch_event_cond, deadline))
		return WATCH_TIMEOUT;
	if (gw_watch.deleted)
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
	gw_transfer_stop(&gw_watch.s.t);
}

/* ---------------------------------------------------------------------
 * The keepalive stream (the worker)
 * ---------------------------------------------------------------------
 */

/*
 * One chunked POST to /v3/lease/keepalive carrying a message per renewal,
 * each answered in order by one line. Needs "Expect: 100-continue"
 * (without it etcd's Go server drains the body at its first answer and
 * later answers stall: etcd #8237). Messages wait in out until libcurl
 * asks for them; the upload is paused while there is nothing to send.
 */
#define GW_KA_MAX_RESULTS	1024

typedef struct GwKeepalive
{
	GwStream	s;
	struct curl_slist *headers; /* its own: chunked, Expect, the token */
	GwBuf		out;			/* bytes not yet handed to libcurl */
	size_t		out_pos;
	EtcdKaResult results[GW_KA_MAX_RESULTS];
	int			nresults;
} GwKeepalive;

static GwKeepalive gw_ka;

/*
 * gw_ka_result interprets one answer: {"ID":..,"TTL":..} (no TTL: the
 * lease is gone).
 */
static bool
gw_ka_result(GwStream *s, json_t *res)
{
	GwKeepalive *k = (GwKeepalive *) s;
	int64		id = 0,
				ttl = 0;

	if (!etcd_json_int64(res, "ID", &id) || !etcd_json_int64(res, "TTL", &ttl) ||
		id == 0 || k->nresults >= GW_KA_MAX_RESULTS)
		return false;
	k->results[k->nresults].lease_id = id;
	k->results[k->nresults].ttl = ttl;
	k->nresults++;
	return true;
}

/*
 * gw_ka_read_cb hands libcurl the queued messages, or pauses the upload.
 */
static size_t
gw_ka_read_cb(char *buf, size_t size, size_t nitems, void *userdata)
{
	size_t		avail = gw_ka.out.len - gw_ka.out_pos;
	size_t		n = Min(avail, size * nitems);

	if (n == 0)
	{
		gw_ka.s.t.upload_paused = true;
		return CURL_READFUNC_PAUSE;
	}
	memcpy(buf, gw_ka.out.data + gw_ka.out_pos, n);
	gw_ka.out_pos += n;
	if (gw_ka.out_pos == gw_ka.out.len)
	{
		gw_ka.out.len = 0;
		gw_ka.out_pos = 0;
	}
	return n;
}

/* gw_ka_has_news: an answer, or the end of the stream, to look at */
bool
gw_ka_has_news(void)
{
	return gw_ka.nresults > 0 ||
		(gw_ka.s.t.active && (gw_ka.s.t.done || gw_ka.s.broken));
}

/*
 * etcd_ka_stream_open starts the keepalive stream on the current endpoint
 * (closing one that is open). Renewals sent before etcd accepts the stream
 * wait in the upload buffer. False with st filled if it could not start.
 */
bool
etcd_ka_stream_open(EtcdStatus *st)
{
	struct curl_slist *h = NULL;

	gw_init();
	gw_apply_tls();
	(void) gw_endpoints();
	memset(st, 0, sizeof(*st));
	etcd_ka_stream_close(false);
	if (!gw_auth_ready(st, etcd_lock_request_timeout))
		return false;
	if (gw_ka.s.t.easy == NULL)
	{
		gw_ka.s.result = gw_ka_result;
		gw_transfer_init(&gw_ka.s.t, GW_HDR_OWN, gw_stream_write_cb, &gw_ka.s);
		curl_easy_setopt(gw_ka.s.t.easy, CURLOPT_READFUNCTION, gw_ka_read_cb);
		curl_easy_setopt(gw_ka.s.t.easy, CURLOPT_POST, 1L);
	}
	gw_tls_setup(gw_ka.s.t.easy);
	/* its own header list: Expect and chunked, plus the current token */
	if (gw_ka.headers)
		curl_slist_free_all(gw_ka.headers);
	gw_ka.headers = NULL;
	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Transfer-Encoding: chunked");
	h = curl_slist_append(h, "Expect: 100-continue");
	h = curl_slist_append(h, "Grpc-Metadata-hasleader: true");
	if (gw_auth_token())
	{
		char	   *auth = psprintf("Authorization: %s", gw_auth_token());

		h = curl_slist_append(h, auth);
		explicit_bzero(auth, strlen(auth));
		pfree(auth);
	}
	if (h == NULL)
		elog(ERROR, "etcd_lock: out of memory");
	gw_ka.headers = h;
	curl_easy_setopt(gw_ka.s.t.easy, CURLOPT_HTTPHEADER, gw_ka.headers);
	curl_easy_setopt(gw_ka.s.t.easy, CURLOPT_EXPECT_100_TIMEOUT_MS,
					 (long) etcd_lock_request_timeout);
	gw_buf_reset(&gw_ka.out);
	gw_ka.out_pos = 0;
	gw_ka.nresults = 0;
	gw_stream_start(&gw_ka.s, "/v3/lease/keepalive");
	return true;
}

/*
 * etcd_ka_stream_active: the stream is open (in the multi handle);
 * etcd_ka_stream_usable: and renewals can go on it.
 */
bool
etcd_ka_stream_active(void)
{
	return gw_ka.s.t.active;
}

bool
etcd_ka_stream_usable(void)
{
	return gw_stream_usable(&gw_ka.s);
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
	if (!gw_buf_append(&gw_ka.out, msg, n, GW_MAX_BODY))
		return false;
	GW_COUNT(GW_EV_REQUEST);
	if (gw_ka.s.t.upload_paused)
	{
		gw_ka.s.t.upload_paused = false;
		curl_easy_pause(gw_ka.s.t.easy, CURLPAUSE_CONT);
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
	int			n = Min(max, gw_ka.nresults);

	memcpy(out, gw_ka.results, n * sizeof(EtcdKaResult));
	memmove(gw_ka.results, gw_ka.results + n, (gw_ka.nresults - n) * sizeof(EtcdKaResult));
	gw_ka.nresults -= n;
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
	if (!gw_ka.s.t.active)
		return;
	if (failed || gw_ka.s.t.done || gw_ka.s.broken)
		gw_stream_failed(&gw_ka.s);
	gw_transfer_stop(&gw_ka.s.t);
	gw_ka.nresults = 0;
}
