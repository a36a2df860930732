/*
 * transport.c
 *		The process's HTTP transport: one curl multi handle, every
 *		transfer's easy handle (GwTransfer), the sockets curl uses and the
 *		waits on them, header lists, TLS.
 *
 * Transfers are driven with curl's socket API; the process sleeps in a
 * WaitEventSet on curl's sockets plus its latch, so pg_cancel_backend,
 * statement_timeout and postmaster death interrupt any wait. All curl
 * memory is malloc'd and freed on every path.
 *
 * Owns GwTransport (one struct: the multi handle, the socket set, curl's
 * timer, the wait set kept across waits, the header lists, the TLS settings
 * applied, every transfer made). Knows nothing of etcd: requests and
 * failover are gateway.c's, the line streams streams.c's; calls nothing
 * above it.
 */
#include "postgres.h"

#include <sys/stat.h>
#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "gateway.h"
#include "gateway_int.h"
#include "guc.h"

#define GW_MAX_SOCKETS		64
#define GW_MAX_TRANSFERS	(2 + GW_ASYNC_MAX + 1)

typedef struct GwSock
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} GwSock;

typedef struct GwTransport
{
	CURLM	   *multi;
	GwSock		socks[GW_MAX_SOCKETS];
	int			nsocks;
	bool		timer_armed;	/* curl's one-shot timer */
	TimestampTz timer_at;

	/*
	 * A wait set kept across waits while curl uses one socket (the
	 * kept-alive connection): creating an epoll set per wait costs several
	 * syscalls. The socket is identified by its descriptor and inode, so a
	 * closed socket whose number is reused by a new one is never mistaken
	 * for it.
	 */
	WaitEventSet *set;
	curl_socket_t set_fd;
	ino_t		set_ino;
	int			set_pos;
	uint32		set_events;
	int			set_pm;			/* the postmaster event set was made with */

	bool		latch_seen;		/* gw_drive (or gw_pause) saw the latch set */
	int			wait_kind;		/* what waits here are for (EtcdWaitKind) */

	/*
	 * Postmaster death: every process exits at its next wait
	 * (WL_EXIT_ON_PM_DEATH), but the worker (etcd_gateway_watch_postmaster)
	 * is told instead, to send what the exiting backends handed it first.
	 */
	bool		pm_watch;
	bool		pm_dead;

	TimestampTz call_deadline;	/* the caller's limit, 0: none */

	/* header lists; one replaced while a transfer in flight used it waits */
	struct curl_slist *headers; /* GW_HDR_REQUEST */
	struct curl_slist *watch_headers;	/* GW_HDR_WATCH */
	struct curl_slist *retired[32];
	int			nretired;

	char	   *tls_applied;	/* "ca|cert|key" last applied */

	GwTransfer *transfers[GW_MAX_TRANSFERS];	/* every one made */
	int			ntransfers;
} GwTransport;

static GwTransport gw_tr = {.set_fd = CURL_SOCKET_BAD, .set_pos = -1,
.wait_kind = ETCD_WAIT_REQUEST};

const EtcdGatewayHooks *gw_hooks = NULL;

/*
 * etcd_gateway_set_hooks installs the token cache and counters (at
 * preload; without them each process authenticates on its own).
 */
void
etcd_gateway_set_hooks(const EtcdGatewayHooks *hooks)
{
	gw_hooks = hooks;
}

/*
 * etcd_gateway_call_deadline bounds every request of this process until
 * it is reset (0): a request gets the smaller of its own timeout and what
 * is left before deadline.
 */
void
etcd_gateway_call_deadline(TimestampTz deadline)
{
	gw_tr.call_deadline = deadline;
}

/* gw_bound: deadline, or the caller's limit if that is sooner */
TimestampTz
gw_bound(TimestampTz deadline)
{
	if (gw_tr.call_deadline != 0 && gw_tr.call_deadline < deadline)
		return gw_tr.call_deadline;
	return deadline;
}

/*
 * etcd_gateway_wait_kind sets what this process's waits on etcd are shown
 * as (EtcdWaitKind, for pg_stat_activity); returns the previous kind.
 */
int
etcd_gateway_wait_kind(int kind)
{
	int			old = gw_tr.wait_kind;

	gw_tr.wait_kind = kind;
	return old;
}

static int
gw_pm_events(void)
{
	if (!gw_tr.pm_watch)
		return WL_EXIT_ON_PM_DEATH;
	return gw_tr.pm_dead ? 0 : WL_POSTMASTER_DEATH;
}

/*
 * gw_wait_latch is WaitLatch(latch, timeout) with postmaster death handled
 * as above; once it is known, a set of the latch alone (WaitLatch would
 * report it again at once).
 */
int
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
			rc = WaitEventSetWait(set, ms, &ev, 1, etcd_wait_event(gw_tr.wait_kind)) > 0 ?
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
	rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | pm, ms, etcd_wait_event(gw_tr.wait_kind));
	if (rc & WL_POSTMASTER_DEATH)
		gw_tr.pm_dead = true;
	return rc;
}

/*
 * etcd_gateway_watch_postmaster: this process (the worker) is told of
 * postmaster death by etcd_gateway_postmaster_died instead of exiting.
 */
void
etcd_gateway_watch_postmaster(void)
{
	gw_tr.pm_watch = true;
}

bool
etcd_gateway_postmaster_died(void)
{
	return gw_tr.pm_dead;
}

/* gw_latch_seen: whether a wait saw the latch set (and forget it if reset) */
bool
gw_latch_seen(bool reset)
{
	bool		seen = gw_tr.latch_seen;

	if (reset)
		gw_tr.latch_seen = false;
	return seen;
}

/*
 * gw_pause waits ms milliseconds between two rounds over the endpoints,
 * interruptibly (a cancel throws; a latch set for the caller is noted, as
 * gw_drive does, so its waits look again).
 */
void
gw_pause(long ms)
{
	int			rc = gw_wait_latch(ms);

	if (rc & WL_LATCH_SET)
	{
		ResetLatch(MyLatch);
		gw_tr.latch_seen = true;
	}
	CHECK_FOR_INTERRUPTS();
}

/*
 * gw_buf_append appends bytes to a malloc'd buffer; false (and the overflow
 * flag) if it would exceed limit or memory runs out. Called from curl
 * callbacks, so it must never ereport.
 */
bool
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

void
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

static int
gw_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	int			i;

	for (i = 0; i < gw_tr.nsocks; i++)
		if (gw_tr.socks[i].fd == s)
			break;
	if (what == CURL_POLL_REMOVE)
	{
		if (i < gw_tr.nsocks)
			gw_tr.socks[i] = gw_tr.socks[--gw_tr.nsocks];
		return 0;
	}
	if (i == gw_tr.nsocks)
	{
		if (gw_tr.nsocks >= GW_MAX_SOCKETS)
			return -1;
		gw_tr.nsocks++;
	}
	gw_tr.socks[i].fd = s;
	gw_tr.socks[i].what = what;
	return 0;
}

static int
gw_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	if (timeout_ms < 0)
		gw_tr.timer_armed = false;
	else
	{
		gw_tr.timer_armed = true;
		gw_tr.timer_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	}
	return 0;
}

/*
 * gw_tls_setup applies the TLS settings to one handle. Peer and host name
 * verification stay on (libcurl's default).
 */
void
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
 * gw_apply_tls sets the TLS files on the transfers that share the header
 * lists when the settings changed (a stream with its own list sets them
 * when it opens). libcurl does not reuse a connection made with other TLS
 * settings.
 */
void
gw_apply_tls(void)
{
	const char *ca = etcd_lock_tls_ca_file ? etcd_lock_tls_ca_file : "";
	const char *cert = etcd_lock_tls_cert_file ? etcd_lock_tls_cert_file : "";
	const char *key = etcd_lock_tls_key_file ? etcd_lock_tls_key_file : "";
	char	   *cfg = psprintf("%s|%s|%s", ca, cert, key);
	int			i;

	if (gw_tr.tls_applied && strcmp(gw_tr.tls_applied, cfg) == 0)
	{
		pfree(cfg);
		return;
	}
	for (i = 0; i < gw_tr.ntransfers; i++)
		if (gw_tr.transfers[i]->headers != GW_HDR_OWN)
			gw_tls_setup(gw_tr.transfers[i]->easy);
	if (gw_tr.tls_applied)
		free(gw_tr.tls_applied);
	gw_tr.tls_applied = strdup(cfg);
	pfree(cfg);
}

static struct curl_slist *
gw_list_for(GwHeaders h)
{
	return h == GW_HDR_REQUEST ? gw_tr.headers :
		h == GW_HDR_WATCH ? gw_tr.watch_headers : NULL;
}

static bool
gw_list_in_use(GwHeaders h)
{
	int			i;

	for (i = 0; i < gw_tr.ntransfers; i++)
		if (gw_tr.transfers[i]->headers == h && gw_tr.transfers[i]->active)
			return true;
	return false;
}

/* gw_retire keeps a replaced list until no transfer in flight uses it */
static void
gw_retire(struct curl_slist *list, GwHeaders h)
{
	if (list == NULL)
		return;
	if (!gw_list_in_use(h))
		curl_slist_free_all(list);
	else if (gw_tr.nretired < lengthof(gw_tr.retired))
		gw_tr.retired[gw_tr.nretired++] = list;
	/* else leaked: there is no room to keep it */
}

/*
 * gw_set_headers (re)builds the shared header lists, with the auth token
 * if there is one, and gives them to every transfer not in flight (one in
 * flight gets them when it stops). libcurl copies nothing: a list must
 * outlive its use.
 */
void
gw_set_headers(void)
{
	struct curl_slist *h = NULL,
			   *w = NULL;
	char	   *auth = NULL;
	int			i;

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
	gw_retire(gw_tr.headers, GW_HDR_REQUEST);
	gw_retire(gw_tr.watch_headers, GW_HDR_WATCH);
	gw_tr.headers = h;
	gw_tr.watch_headers = w;
	for (i = 0; i < gw_tr.ntransfers; i++)
	{
		GwTransfer *t = gw_tr.transfers[i];

		if (t->headers != GW_HDR_OWN && !t->active)
			curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, gw_list_for(t->headers));
	}
}

struct curl_slist *
gw_request_headers(void)
{
	return gw_tr.headers;
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
 * gw_transfer_init makes t's handle (once): its answer bytes go to
 * write(writedata), its headers are the list named, TLS as set.
 */
void
gw_transfer_init(GwTransfer *t, GwHeaders headers, curl_write_callback write,
				 void *writedata)
{
	CURL	   *e;

	if (gw_tr.ntransfers >= GW_MAX_TRANSFERS)
		elog(ERROR, "etcd_lock: too many transfers");
	e = curl_easy_init();
	if (!e)
		elog(ERROR, "etcd_lock: could not initialize libcurl");
	t->easy = e;
	t->headers = headers;
	t->active = t->done = t->upload_paused = false;
	t->errbuf[0] = '\0';
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, gw_list_for(headers));
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_PRIVATE, (char *) t);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, writedata);
	gw_tls_setup(e);
	gw_tr.transfers[gw_tr.ntransfers++] = t;
}

/* gw_transfer_start puts the prepared t on the multi handle */
void
gw_transfer_start(GwTransfer *t)
{
	t->errbuf[0] = '\0';
	t->done = false;
	t->upload_paused = false;
	curl_multi_add_handle(gw_tr.multi, t->easy);
	t->active = true;
}

/*
 * gw_transfer_stop takes t off the multi handle (a transfer not finished
 * is abandoned: its connection is closed) and gives it the current header
 * list; the replaced lists go once nothing in flight uses them.
 */
void
gw_transfer_stop(GwTransfer *t)
{
	if (!t->active)
		return;
	curl_multi_remove_handle(gw_tr.multi, t->easy);
	t->active = false;
	if (t->headers != GW_HDR_OWN && gw_list_for(t->headers))
		curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, gw_list_for(t->headers));
	if (gw_tr.nretired > 0 && !gw_list_in_use(GW_HDR_REQUEST) &&
		!gw_list_in_use(GW_HDR_WATCH))
		while (gw_tr.nretired > 0)
			curl_slist_free_all(gw_tr.retired[--gw_tr.nretired]);
}

/*
 * gw_init creates this process's multi handle and header lists once.
 */
void
gw_init(void)
{
	if (gw_tr.multi)
		return;
	if (curl_global_init(CURL_GLOBAL_ALL) != 0)
		elog(ERROR, "etcd_lock: could not initialize libcurl");
	gw_set_headers();
	gw_tr.multi = curl_multi_init();
	if (!gw_tr.multi)
		elog(ERROR, "etcd_lock: could not initialize libcurl");
	curl_multi_setopt(gw_tr.multi, CURLMOPT_SOCKETFUNCTION, gw_socket_cb);
	curl_multi_setopt(gw_tr.multi, CURLMOPT_TIMERFUNCTION, gw_timer_cb);
}

/*
 * gw_collect reads curl's completion messages into the transfers' done
 * flags.
 */
static void
gw_collect(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(gw_tr.multi, &left)) != NULL)
	{
		GwTransfer *t = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		if (t && t->active)
		{
			t->done = true;
			t->result = msg->data.result;
		}
	}
}

static uint32
gw_sock_events(int i)
{
	uint32		ev = 0;
	int			j;

	if (gw_tr.socks[i].what & CURL_POLL_IN)
		ev |= WL_SOCKET_READABLE;
	if (gw_tr.socks[i].what & CURL_POLL_OUT)
		ev |= WL_SOCKET_WRITEABLE;

	/*
	 * libcurl keeps asking to write on a streamed upload's socket while the
	 * upload is paused (the keepalive stream with nothing to send): waiting
	 * for writability there would wake at once, forever. Only its answers
	 * matter until something is queued (which unpauses the upload).
	 */
	for (j = 0; j < gw_tr.ntransfers && (ev & WL_SOCKET_WRITEABLE); j++)
	{
		GwTransfer *t = gw_tr.transfers[j];
		curl_socket_t fd = CURL_SOCKET_BAD;

		if (t->active && t->upload_paused &&
			curl_easy_getinfo(t->easy, CURLINFO_ACTIVESOCKET, &fd) == CURLE_OK &&
			fd == gw_tr.socks[i].fd)
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
	WaitEventSet *set = etcd_create_wait_event_set(gw_tr.nsocks + 2);
	int			nev = 0;
	int			i;

	PG_TRY();
	{
		AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		if (gw_pm_events())
			AddWaitEventToSet(set, gw_pm_events(), PGINVALID_SOCKET, NULL, NULL);
		for (i = 0; i < gw_tr.nsocks; i++)
			if (gw_sock_events(i))
				AddWaitEventToSet(set, gw_sock_events(i), gw_tr.socks[i].fd, NULL, NULL);
		nev = WaitEventSetWait(set, timeout, evs, nevs, etcd_wait_event(gw_tr.wait_kind));
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

/*
 * gw_drive runs curl's transfers until cond() holds or the deadline passes.
 * It sleeps on curl's sockets, curl's timer and the process latch; a latch
 * wakeup runs CHECK_FOR_INTERRUPTS, which may throw (the caller cleans up
 * its transfer in PG_CATCH). Returns whether cond() became true.
 */
bool
gw_drive(bool (*cond) (void), TimestampTz deadline)
{
	int			running;

	if (gw_tr.timer_armed && GetCurrentTimestamp() >= gw_tr.timer_at)
		gw_tr.timer_armed = false;
	curl_multi_socket_action(gw_tr.multi, CURL_SOCKET_TIMEOUT, 0, &running);
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
		if (gw_tr.timer_armed)
			timeout = Min(timeout, Max(0, (long) ((gw_tr.timer_at - now + 999) / 1000)));
		if (gw_tr.nsocks == 0)
			timeout = Min(timeout, 10);	/* e.g. a resolver without a socket */

		if (gw_tr.nsocks == 1 && gw_sock_events(0) != 0)
		{
			/* the usual case: one kept-alive connection; reuse the set */
			uint32		ev = gw_sock_events(0);
			struct stat sb;
			ino_t		ino = fstat(gw_tr.socks[0].fd, &sb) == 0 ? sb.st_ino : 0;

			if (gw_tr.set == NULL || gw_tr.set_fd != gw_tr.socks[0].fd ||
				gw_tr.set_ino != ino || ino == 0 || gw_tr.set_pm != gw_pm_events())
			{
				if (gw_tr.set)
					FreeWaitEventSet(gw_tr.set);
				gw_tr.set = NULL;
				gw_tr.set_fd = CURL_SOCKET_BAD;
				gw_tr.set = etcd_create_wait_event_set(3);
				AddWaitEventToSet(gw_tr.set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
				gw_tr.set_pm = gw_pm_events();
				if (gw_tr.set_pm)
					AddWaitEventToSet(gw_tr.set, gw_tr.set_pm, PGINVALID_SOCKET, NULL, NULL);
				gw_tr.set_pos = AddWaitEventToSet(gw_tr.set, ev, gw_tr.socks[0].fd, NULL, NULL);
				gw_tr.set_fd = gw_tr.socks[0].fd;
				gw_tr.set_ino = ino;
				gw_tr.set_events = ev;
			}
			else if (ev != gw_tr.set_events)
			{
				ModifyWaitEvent(gw_tr.set, gw_tr.set_pos, ev, NULL);
				gw_tr.set_events = ev;
			}
			nev = WaitEventSetWait(gw_tr.set, timeout, evs, lengthof(evs),
								   etcd_wait_event(gw_tr.wait_kind));
		}
		else
			nev = gw_wait_all(timeout, evs, lengthof(evs));

		for (i = 0; i < nev; i++)
		{
			int			flags = 0;

			if (evs[i].events & WL_LATCH_SET)
			{
				latch = true;
				gw_tr.latch_seen = true;
				continue;
			}
			if (evs[i].events & WL_POSTMASTER_DEATH)
			{
				gw_tr.pm_dead = true;	/* the caller looks (the worker) */
				gw_tr.latch_seen = true;
				continue;
			}
			if (evs[i].events & WL_SOCKET_READABLE)
				flags |= CURL_CSELECT_IN;
			if (evs[i].events & WL_SOCKET_WRITEABLE)
				flags |= CURL_CSELECT_OUT;
			if (flags)
				curl_multi_socket_action(gw_tr.multi, evs[i].fd, flags, &running);
		}
		if (nev == 0 || (gw_tr.timer_armed && GetCurrentTimestamp() >= gw_tr.timer_at))
		{
			/*
			 * curl's timer is one-shot: once it has fired, curl re-arms it
			 * through the callback if it needs it again. Left armed in the
			 * past it would make every wait return at once (a busy loop).
			 */
			if (gw_tr.timer_armed && GetCurrentTimestamp() >= gw_tr.timer_at)
				gw_tr.timer_armed = false;
			curl_multi_socket_action(gw_tr.multi, CURL_SOCKET_TIMEOUT, 0, &running);
		}
		gw_collect();
		if (latch)
		{
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
}
