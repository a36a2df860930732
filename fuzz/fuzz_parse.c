/*
 * fuzz_parse.c
 *		libFuzzer target for everything in etcd_lock that reads etcd's
 *		answers: the parse callbacks of src/lockops.c, the watch stream
 *		parser, error-body parser and JSON/base64 helpers of src/gateway.c and src/streams.c,
 *		and (with a fake libcurl below) the whole request paths around them:
 *		failover, error reporting, the wait loop.
 *
 * The sources are compiled as they are (#include), so static functions are
 * reachable; the PostgreSQL backend is replaced by pg_stubs.c.
 *
 * Input: byte 0 selects the target (see enum FzTarget), byte 1 is a
 * parameter, the rest is the body. Request-path targets take a script of
 * answers separated by "\n###\n"; each answer starts with a control byte:
 *	bits 0-3  HTTP status (fz_status[])
 *	bits 4-5  0 complete; 1 transfer error after the body (or a refused
 *			  connection if the body is empty); 2 complete, but only after
 *			  0.9 x etcd_lock.request_timeout; 3 never completes (timeout)
 *	bits 6-7  delivery in chunks of: everything, 1, 7 or 64 bytes
 * When the script runs out, every further request is refused. For request
 * targets, bit 7 of the parameter byte turns on etcd authentication
 * (etcd_lock.username, a 0600 password file), so /v3/auth/authenticate
 * answers come from the script too.
 *
 * Besides AddressSanitizer/UBSan/LeakSanitizer findings, the harness aborts
 * on broken invariants: a request body that is not JSON, an ERROR raised
 * with an internal (XX000) or connection-class (08) SQLSTATE or with no
 * message, a parser that accepts a reply yet returns nonsense, a transfer
 * or WaitEventSet left behind. FUZZ_STRICT=utf8 also aborts when an error
 * text is not valid UTF-8 although every answer was; FUZZ_STRICT=time when
 * one etcd call takes longer than its time bound (etcd_lock.request_timeout
 * or the bound the worker passes); FUZZ_STRICT=1 does both.
 */
#define _GNU_SOURCE				/* memmem */
#define CURL_DISABLE_TYPECHECK

#include "../src/guc.c"
#include "../src/transport.c"
#include "../src/gateway.c"
#include "../src/streams.c"
#include "../src/auth.c"
#include "../src/keys.c"
#include "../src/lease.c"
#include "../src/lockops.c"
#include "../src/deadlock.c"
#include "../src/election.c"
#include "../src/holders.c"

/*
 * Group commit (src/group.c) lives in shared memory: here every txn goes
 * alone, as a backend's does with etcd_lock.group_commit off (a member's
 * answer is parsed by the same callbacks, fuzzed through this path).
 */
bool
etcd_group_request(EtcdGroupKind kind, const char *body, EtcdParseFn parse,
				   void *arg, char *const *tags, const int *taglens, int ntags,
				   EtcdStatus *st)
{
	return etcd_request("/v3/kv/txn", body, parse, arg, st);
}

#include <fcntl.h>
#include <stdint.h>

#include "pg_stubs.h"

#define FZ_LEASE		INT64CONST(0x390da219c2a52a05)	/* as in answers/lease_grant.json */
#define FZ_LEASE2		INT64CONST(0x390da219c2a52a07)
#define FZ_KEY_B64		"L2pvYnMvMzkwZGEyMTljMmE1MmEwNQ=="	/* /jobs/390da219c2a52a05 */
#define FZ_SEP			"\n###\n"
#define FZ_MAX_RESP		48

typedef enum FzTarget
{
	T_LEASE_GRANT,				/* parse callbacks, body = JSON */
	T_KEEPALIVE,
	T_ACQUIRE,
	T_TRY_ACQUIRE,
	T_PRED,
	T_LIST,
	T_SUCCEEDED,
	T_COUNT,
	T_TTL,
	T_ERROR_REPLY,				/* gw_error_reply, body = error body */
	T_B64,						/* etcd_b64_decode, body = string */
	T_WATCH_STREAM,				/* gw_stream_write_cb, body = stream bytes */
	T_ENDPOINTS,				/* etcd_lock_parse_endpoints, body = list */
	T_TOKEN,					/* parse_token (auth answer), body = JSON */
	T_REQ_GRANT,				/* request paths, body = script */
	T_REQ_KEEPALIVE,
	T_REQ_REVOKE,
	T_REQ_ACQUIRE,
	T_REQ_WAIT,
	T_REQ_RELEASE,
	T_REQ_HOLDERS,
	T_REQ_VERIFY,
	T_REQ_WATCH,
	T_NTARGETS
} FzTarget;

/* ---------------------------------------------------------------------
 * A fake libcurl: answers come from the script.
 * ---------------------------------------------------------------------
 */

static const long fz_status[16] = {
	200, 200, 200, 200, 200, 200, 400, 401, 403, 404, 429, 301, 500, 502, 503, 504
};

typedef struct FzResp
{
	long		status;
	int			mode;			/* 0 ok, 1 error after body, 2 slow, 3 never ends */
	size_t		chunk;			/* 0 = all at once */
	const char *body;
	size_t		len;
} FzResp;

static FzResp fz_resps[FZ_MAX_RESP];
static int	fz_nresp,
			fz_next;
static bool fz_all_utf8;		/* every answer body is valid UTF-8 */
static bool fz_request_path;	/* running a T_REQ_* target */
static bool fz_strict_utf8;		/* FUZZ_STRICT=1 or utf8: UTF-8 check */
static bool fz_strict_time;		/* FUZZ_STRICT=1 or time: time bounds */
static char fz_pwfile[64];		/* the password file (auth on) */
static bool fz_trace;			/* FUZZ_TRACE=1: say what each input did */

#define FZ_TRACE(...) do { if (fz_trace) fprintf(stderr, "fuzz trace: " __VA_ARGS__); } while (0)

typedef struct FzHandle
{
	curl_write_callback write;
	void	   *writedata;		/* CURLOPT_WRITEDATA */
	char	   *private;		/* CURLOPT_PRIVATE */
	char		url[1200];
	const char *postfields;
	char	   *copied;
	bool		active,
				done;
	FzResp		resp;
	size_t		sent;
	TimestampTz ready_at;		/* slow answers: nothing before this */
} FzHandle;

static FzHandle fz_handles[4];
static int	fz_nhandles;
static int	fz_multi;
static CURLMsg fz_msgs[8];
static int	fz_nmsgs;
static int	fz_slist;

CURLcode
curl_global_init(long flags)
{
	return CURLE_OK;
}

struct curl_slist *
curl_slist_append(struct curl_slist *list, const char *s)
{
	return (struct curl_slist *) &fz_slist;
}

void
curl_slist_free_all(struct curl_slist *list)
{
	if (list != NULL && list != (struct curl_slist *) &fz_slist)
		abort();
}

CURL *
curl_easy_init(void)
{
	if (fz_nhandles >= (int) lengthof(fz_handles))
		abort();
	return &fz_handles[fz_nhandles++];
}

CURLcode
curl_easy_setopt(CURL *curl, CURLoption option,...)
{
	FzHandle   *h = curl;
	va_list		ap;

	va_start(ap, option);
	switch (option)
	{
		case CURLOPT_WRITEFUNCTION:
			h->write = va_arg(ap, curl_write_callback);
			break;
		case CURLOPT_WRITEDATA:
			h->writedata = va_arg(ap, void *);
			break;
		case CURLOPT_PRIVATE:
			h->private = va_arg(ap, char *);
			break;
		case CURLOPT_URL:
			snprintf(h->url, sizeof(h->url), "%s", va_arg(ap, const char *));
			break;
		case CURLOPT_POSTFIELDS:
			h->postfields = va_arg(ap, const char *);
			break;
		case CURLOPT_COPYPOSTFIELDS:
			free(h->copied);
			h->copied = strdup(va_arg(ap, const char *));
			h->postfields = h->copied;
			break;
		default:
			break;
	}
	va_end(ap);
	return CURLE_OK;
}

CURLcode
curl_easy_getinfo(CURL *curl, CURLINFO info,...)
{
	FzHandle   *h = curl;
	va_list		ap;

	va_start(ap, info);
	if (info == CURLINFO_RESPONSE_CODE)
		*va_arg(ap, long *) = h->resp.status;
	else if (info == CURLINFO_PRIVATE)
		*va_arg(ap, char **) = h->private;
	va_end(ap);
	return CURLE_OK;
}

const char *
curl_easy_strerror(CURLcode rc)
{
	return rc == CURLE_OK ? "No error" : "fake curl error";
}

CURLM *
curl_multi_init(void)
{
	return &fz_multi;
}

CURLMcode
curl_multi_setopt(CURLM *multi, CURLMoption option,...)
{
	return CURLM_OK;
}

static void
fz_finish(FzHandle *h, CURLcode rc)
{
	h->done = true;
	if (fz_nmsgs >= (int) lengthof(fz_msgs))
		abort();
	fz_msgs[fz_nmsgs].msg = CURLMSG_DONE;
	fz_msgs[fz_nmsgs].easy_handle = h;
	fz_msgs[fz_nmsgs].data.result = rc;
	fz_nmsgs++;
}

CURLMcode
curl_multi_add_handle(CURLM *multi, CURL *curl)
{
	FzHandle   *h = curl;
	json_error_t jerr;
	json_t	   *req;

	if (h->active)
		abort();				/* curl refuses a handle added twice */
	if (!h->postfields || !h->write || strncmp(h->url, "http://127.0.0.1:", 17) != 0 ||
		strstr(h->url, "/v3/") == NULL)
	{
		fprintf(stderr, "fuzz: bad request setup: url %s\n", h->url);
		abort();
	}
	req = json_loads(h->postfields, 0, &jerr);
	if (!json_is_object(req))
	{
		fprintf(stderr, "fuzz: request body is not a JSON object (%s): %s\n",
				jerr.text, h->postfields);
		abort();
	}
	json_decref(req);

	h->active = true;
	h->done = false;
	h->sent = 0;
	if (fz_next < fz_nresp)
		h->resp = fz_resps[fz_next++];
	else
	{
		memset(&h->resp, 0, sizeof(h->resp));
		h->resp.mode = 1;		/* refused */
	}
	h->ready_at = GetCurrentTimestamp();
	if (h->resp.mode == 2)
		h->ready_at += etcd_lock_request_timeout * 900L;
	return CURLM_OK;
}

/* the worker's keepalive stream is not fuzzed here */
CURLcode
curl_easy_pause(CURL *curl, int bitmask)
{
	return CURLE_OK;
}

CURLMcode
curl_multi_remove_handle(CURLM *multi, CURL *curl)
{
	FzHandle   *h = curl;
	int			i,
				j = 0;

	h->active = false;
	for (i = 0; i < fz_nmsgs; i++)
		if (fz_msgs[i].easy_handle != curl)
			fz_msgs[j++] = fz_msgs[i];
	fz_nmsgs = j;
	return CURLM_OK;
}

/* delivers the next chunk of every running transfer */
CURLMcode
curl_multi_socket_action(CURLM *multi, curl_socket_t s, int ev, int *running)
{
	int			i;

	*running = 0;
	for (i = 0; i < fz_nhandles; i++)
	{
		FzHandle   *h = &fz_handles[i];
		size_t		n;

		if (!h->active || h->done)
			continue;
		if (GetCurrentTimestamp() < h->ready_at)
		{
			(*running)++;
			continue;
		}
		n = h->resp.len - h->sent;
		if (h->resp.chunk && n > h->resp.chunk)
			n = h->resp.chunk;
		if (n > 0)
		{
			size_t		r = h->write((char *) h->resp.body + h->sent, 1, n, h->writedata);

			if (r != n)
			{
				fz_finish(h, CURLE_WRITE_ERROR);
				continue;
			}
			h->sent += n;
		}
		if (h->sent == h->resp.len)
		{
			if (h->resp.mode == 0 || h->resp.mode == 2)
				fz_finish(h, CURLE_OK);
			else if (h->resp.mode == 1)
				fz_finish(h, h->resp.len ? CURLE_PARTIAL_FILE : CURLE_COULDNT_CONNECT);
		}
		if (!h->done)
			(*running)++;
	}
	return CURLM_OK;
}

CURLMsg *
curl_multi_info_read(CURLM *multi, int *left)
{
	static CURLMsg out;

	if (fz_nmsgs == 0)
	{
		*left = 0;
		return NULL;
	}
	out = fz_msgs[0];
	memmove(fz_msgs, fz_msgs + 1, sizeof(CURLMsg) * (fz_nmsgs - 1));
	fz_nmsgs--;
	*left = fz_nmsgs;
	return &out;
}

/* how long until a running transfer has something to deliver (-1: never) */
static long
fz_next_event_us(void)
{
	int			i;
	long		best = -1;
	TimestampTz now = GetCurrentTimestamp();

	for (i = 0; i < fz_nhandles; i++)
	{
		FzHandle   *h = &fz_handles[i];
		long		us;

		if (!h->active || h->done || (h->resp.mode == 3 && h->sent == h->resp.len))
			continue;
		us = h->ready_at > now ? (long) (h->ready_at - now) : 0;
		if (best < 0 || us < best)
			best = us;
	}
	return best;
}

/* ---- latch and wait event set: time passes, nothing else happens ---- */

/* the wait loop's deadlock check: off in the harness */
int			DeadlockTimeout = 0;

uint32
etcd_wait_event(EtcdWaitKind kind)
{
	return PG_WAIT_EXTENSION;
}

struct Latch *MyLatch = NULL;
static int	fz_sets;

WaitEventSet *
CreateWaitEventSet(MemoryContext context, int nevents)
{
	fz_sets++;
	return palloc(16);
}

void
FreeWaitEventSet(WaitEventSet *set)
{
	fz_sets--;
	pfree(set);
}

int
AddWaitEventToSet(WaitEventSet *set, uint32 events, pgsocket fd, Latch *latch,
				  void *user_data)
{
	return 0;
}

void
ModifyWaitEvent(WaitEventSet *set, int pos, uint32 events, Latch *latch)
{
}

int
WaitEventSetWait(WaitEventSet *set, long timeout, WaitEvent *occurred_events,
				 int nevents, uint32 wait_event_info)
{
	/* wake up when a transfer has news, else when the timeout passes */
	long		next = fz_next_event_us();
	long		us = Max(timeout, 1) * 1000L;

	if (next >= 0 && next < us)
		us = Max(next, 100);
	fz_clock_advance(us);
	return 0;
}

void
ResetLatch(Latch *latch)
{
}

int
WaitLatch(Latch *latch, int wakeEvents, long timeout, uint32 wait_event_info)
{
	/* a plain sleep (the wait loop's backoff): let the fake clock run */
	fz_clock_advance(Max(timeout, 0) * 1000L);
	return WL_TIMEOUT;
}

/* ---- GUC definitions (guc.c is compiled but never defines anything) ---- */

void
DefineCustomStringVariable(const char *name, const char *short_desc,
						   const char *long_desc, char **valueAddr,
						   const char *bootValue, GucContext context, int flags,
						   GucStringCheckHook check_hook,
						   GucStringAssignHook assign_hook,
						   GucShowHook show_hook)
{
	abort();
}

void
DefineCustomIntVariable(const char *name, const char *short_desc,
						const char *long_desc, int *valueAddr, int bootValue,
						int minValue, int maxValue, GucContext context,
						int flags, GucIntCheckHook check_hook,
						GucIntAssignHook assign_hook, GucShowHook show_hook)
{
	abort();
}

void
DefineCustomBoolVariable(const char *name, const char *short_desc,
						 const char *long_desc, bool *valueAddr,
						 bool bootValue, GucContext context, int flags,
						 GucBoolCheckHook check_hook,
						 GucBoolAssignHook assign_hook, GucShowHook show_hook)
{
	abort();
}

void
DefineCustomEnumVariable(const char *name, const char *short_desc,
						 const char *long_desc, int *valueAddr, int bootValue,
						 const struct config_enum_entry *options,
						 GucContext context, int flags,
						 GucEnumCheckHook check_hook,
						 GucEnumAssignHook assign_hook, GucShowHook show_hook)
{
	abort();
}

void
MarkGUCPrefixReserved(const char *className)
{
	abort();
}

/* ---------------------------------------------------------------------
 * Checks
 * ---------------------------------------------------------------------
 */

static void
fz_fail(const char *what)
{
	fprintf(stderr, "fuzz: invariant broken: %s\n", what);
	abort();
}

static bool
fz_utf8(const char *s, size_t len)
{
	size_t		i = 0;

	while (i < len)
	{
		unsigned char c = s[i];
		int			n,
					k;

		if (c < 0x80)
		{
			i++;
			continue;
		}
		if ((c & 0xe0) == 0xc0 && c >= 0xc2)
			n = 1;
		else if ((c & 0xf0) == 0xe0)
			n = 2;
		else if ((c & 0xf8) == 0xf0 && c <= 0xf4)
			n = 3;
		else
			return false;
		for (k = 1; k <= n; k++)
			if (i + k >= len || (s[i + k] & 0xc0) != 0x80)
				return false;
		i += n + 1;
	}
	return true;
}

void
fz_on_error(const FzError *e)
{
	int			cls = ERRCODE_TO_CATEGORY(e->sqlerrcode);

	if (!fz_request_path)
		return;					/* direct targets check their own results */
	if (e->message[0] == '\0')
		fz_fail("ERROR without a message");
	if (e->sqlerrcode == ERRCODE_INTERNAL_ERROR)
	{
		fprintf(stderr, "fuzz: XX000 at %s:%d: %s\n", e->filename, e->lineno, e->message);
		fz_fail("an answer from etcd raised an internal error (XX000)");
	}
	if (cls == ERRCODE_CONNECTION_EXCEPTION)
		fz_fail("an etcd failure raised a class 08 SQLSTATE (client would think PostgreSQL's connection broke)");
	if (fz_all_utf8 && fz_strict_utf8 &&
		(!fz_utf8(e->message, strlen(e->message)) || !fz_utf8(e->detail, strlen(e->detail))))
	{
		fprintf(stderr, "fuzz: message: %s\ndetail: %s\n", e->message, e->detail);
		fz_fail("error text is not valid UTF-8 although every answer was");
	}
}

static const char *
fz_sqlstate(int code)
{
	static char buf[6];
	int			i;

	for (i = 0; i < 5; i++)
	{
		buf[i] = PGUNSIXBIT(code);
		code >>= 6;
	}
	buf[5] = '\0';
	return buf;
}

/* the key /jobs/<lease hex> as lockops.c builds it */
static void
fz_keys(EtcdLockKeys *k, int64 lease)
{
	etcd_lock_keys(k, "", "/jobs", lease, ETCD_KEY_EXCLUSIVE, 0);
}

/* ---------------------------------------------------------------------
 * Targets
 * ---------------------------------------------------------------------
 */

/* parse runs one parse callback the way etcd_request_ex does */
static bool
fz_parse(const char *body, size_t len, EtcdParseFn fn, void *arg)
{
	json_error_t jerr;
	json_t	   *root = json_loadb(body, len, 0, &jerr);

	if (!root)
		return false;
	return gw_parse(root, fn, arg);
}

static void
fz_direct(FzTarget t, uint8_t param, const char *body, size_t len)
{
	switch (t)
	{
		case T_LEASE_GRANT:
			{
				LeaseReply	r = {0};

				if (fz_parse(body, len, parse_lease_grant, &r) && (r.id == 0 || r.ttl <= 0))
					fz_fail("parse_lease_grant accepted a lease without ID or TTL");
				break;
			}
		case T_KEEPALIVE:
			{
				int64		ttl = 0;

				(void) fz_parse(body, len, etcd_parse_keepalive, &ttl);
				break;
			}
		case T_ACQUIRE:
		case T_TRY_ACQUIRE:
			{
				AcquireReply r = {0};
				EtcdLockKeys k;

				/* a try reads the queue the same way for every kind */
				etcd_lock_keys(&k, "", "/jobs", INT64CONST(0x390da219c2a52a05),
							   t == T_TRY_ACQUIRE ? (EtcdKeyKind) (param % 3) : ETCD_KEY_EXCLUSIVE,
							   1 + (param >> 2) % 4);
				r.k = &k;
				r.key_b64 = FZ_KEY_B64;
				r.try_only = t == T_TRY_ACQUIRE;
				if (fz_parse(body, len, parse_acquire, &r))
				{
					if (r.held && r.rev <= 0)
						fz_fail("parse_acquire: held without a positive revision");
					if (!r.try_only && r.rev <= 0)
						fz_fail("parse_acquire: accepted without our revision");
				}
				break;
			}
		case T_PRED:
			{
				PredReply	r = {0};
				EtcdLockKeys k;

				/* exclusive, shared, or a semaphore of 1-4 permits */
				etcd_lock_keys(&k, "", "/jobs", INT64CONST(0x390da219c2a52a05),
							   (EtcdKeyKind) (param % 3), 1 + (param >> 2) % 4);
				r.k = &k;
				r.with_mine = true;
				if (k.kind == ETCD_KEY_SEMAPHORE)
				{
					r.ahead = palloc(sizeof(char *) * (k.permits + 1));
					r.aheadlen = palloc(sizeof(int) * (k.permits + 1));
				}
				if (fz_parse(body, len, parse_pred, &r))
				{
					if (r.pred && (r.predlen < 0 || r.pred[r.predlen] != '\0'))
						fz_fail("parse_pred: predecessor key not terminated");
					if (r.nahead < 0 || r.nahead > k.permits + 1)
						fz_fail("parse_pred: more permit keys kept than asked for");
				}
				break;
			}
		case T_LIST:
			{
				ListedKeys	r = {0};
				int			i;

				/* the holders' listing (values) or the detector's (a limit) */
				r.prefix = (param & 1) ? "/" : "";
				r.prefixlen = strlen(r.prefix);
				r.max = (param & 2) ? 4 : 0;
				r.no_permits = (param & 4) != 0;
				if (fz_parse(body, len, ek_parse_listed, &r))
				{
					if (r.n < 0 || r.n > r.cap || (r.max > 0 && r.n > r.max))
						fz_fail("ek_parse_listed: bad count");
					for (i = 0; i < r.n; i++)
						if (!r.keys[i].name || !r.keys[i].value || r.keys[i].lease == 0 ||
							r.keys[i].kind == ETCD_KEY_NONE ||
							(r.no_permits && r.keys[i].kind == ETCD_KEY_SEMAPHORE))
							fz_fail("ek_parse_listed: incomplete item");
				}
				break;
			}
		case T_SUCCEEDED:
			{
				bool		s;

				(void) fz_parse(body, len, parse_succeeded, &s);
				break;
			}
		case T_COUNT:
		case T_TTL:
			{
				int64		v = 0;

				(void) fz_parse(body, len, t == T_COUNT ? parse_create_rev : parse_ttl, &v);
				break;
			}
		case T_ERROR_REPLY:
			{
				EtcdStatus	st;

				gw_buf_reset(&gw_req.body);
				if (len > 0 && !gw_buf_append(&gw_req.body, body, len, GW_MAX_BODY))
					break;
				memset(&st, 0x7f, sizeof(st));
				gw_error_reply(&st, fz_status[param & 15]);
				if (st.kind != ETCD_ERROR_REPLY || memchr(st.message, '\0', sizeof(st.message)) == NULL)
					fz_fail("gw_error_reply: bad status");
				break;
			}
		case T_B64:
			{
				char	   *s = pnstrdup(body, len);
				int			n = -1;
				char	   *d = etcd_b64_decode(s, &n);

				if (d && (n < 0 || n > pg_b64_dec_len(strlen(s)) || d[n] != '\0'))
					fz_fail("etcd_b64_decode: bad length");
				if (d)
				{
					/* round trip: what decodes must encode back to itself */
					StringInfoData e;

					initStringInfo(&e);
					etcd_append_b64(&e, d, n);
					if (e.len != 4 * ((n + 2) / 3) || e.data[e.len] != '\0')
						fz_fail("etcd_append_b64: bad length");
				}
				break;
			}
		case T_WATCH_STREAM:
			{
				size_t		chunk = (param & 63) + 1,
							off = 0;

				GwBuf	   *wline = &gw_watch.s.t.body;

				gw_buf_reset(wline);
				gw_watch.s.result = gw_watch_result;
				gw_watch.s.t.done = gw_watch.created = gw_watch.deleted = gw_watch.s.broken = false;
				while (off < len)
				{
					size_t		n = Min(chunk, len - off);

					if (gw_stream_write_cb((char *) body + off, 1, n, &gw_watch.s) != n)
						break;
					off += n;
					if (wline->len > 0 && (wline->data[wline->len] != '\0' ||
										   memchr(wline->data, '\n', wline->len)))
						fz_fail("gw_stream_write_cb: unparsed line left with a newline");
				}
				break;
			}
		case T_TOKEN:
			{
				char	   *token = NULL;

				if (fz_parse(body, len, parse_token, &token) && token == NULL)
					fz_fail("parse_token: accepted without a token");
				free(token);
				break;
			}
		case T_ENDPOINTS:
			{
				char	   *s = pnstrdup(body, len);
				char	   *eps[ETCD_MAX_ENDPOINTS];
				char		err[300];
				int			n = etcd_lock_parse_endpoints(s, eps, ETCD_MAX_ENDPOINTS, err, sizeof(err));

				if (n == 0 || n > ETCD_MAX_ENDPOINTS)
					fz_fail("etcd_lock_parse_endpoints: bad count");
				while (n > 0)
				{
					n--;
					if (strncmp(eps[n], "http://", 7) != 0 && strncmp(eps[n], "https://", 8) != 0)
						fz_fail("etcd_lock_parse_endpoints: accepted a URL without scheme");
					free(eps[n]);
				}
				break;
			}
		default:
			break;
	}
}

/* splits the script into fz_resps */
static void
fz_load_script(const char *p, size_t len)
{
	const char *end = p + len;

	fz_nresp = fz_next = 0;
	fz_all_utf8 = true;
	while (p <= end && fz_nresp < FZ_MAX_RESP)
	{
		const char *sep = memmem(p, end - p, FZ_SEP, strlen(FZ_SEP));
		const char *segend = sep ? sep : end;
		FzResp	   *r = &fz_resps[fz_nresp++];
		uint8_t		ctl = p < segend ? (uint8_t) *p : 0;
		static const size_t chunks[4] = {0, 1, 7, 64};

		r->status = fz_status[ctl & 15];
		r->mode = (ctl >> 4) & 3;
		r->chunk = chunks[(ctl >> 6) & 3];
		r->body = p < segend ? p + 1 : p;
		r->len = p < segend ? segend - p - 1 : 0;
		if (!fz_utf8(r->body, r->len))
			fz_all_utf8 = false;
		if (!sep)
			break;
		p = sep + strlen(FZ_SEP);
	}
}

/* one etcd call must end within its bound (+ a little for the fake clock) */
static void
fz_check_bound(TimestampTz start, int timeout_ms, const char *what)
{
	long		took_ms = (long) ((GetCurrentTimestamp() - start) / 1000);

	if (fz_strict_time && took_ms > timeout_ms + 50)
	{
		fprintf(stderr, "fuzz: %s took %ld ms, bound %d ms\n", what, took_ms, timeout_ms);
		fz_fail("one etcd call exceeded its time bound");
	}
}

static void
fz_request(FzTarget t, uint8_t param)
{
	EtcdLockKeys k;
	EtcdStatus	st;
	TimestampTz start = GetCurrentTimestamp();

	switch (t)
	{
		case T_REQ_GRANT:
			PG_TRY();
			{
				char	   *body;
				int64		id = etcd_new_lease_id(10, &body);

				(void) etcd_lease_grant(id, body);
			}
			PG_FINALLY();
			{
				fz_check_bound(start, etcd_lock_request_timeout, "lease grant");
			}
			PG_END_TRY();
			break;
		case T_REQ_KEEPALIVE:
			{
				int64		ttl = -1;
				int			bound = 100 + 100 * (param & 7);	/* as the worker does */

				/* a one-shot renewal, as the worker sends without a stream */
				if (etcd_request_ex("/v3/lease/keepalive", etcd_lease_body(FZ_LEASE),
									etcd_parse_keepalive, &ttl, &st, bound) && ttl < 0)
					fz_fail("etcd_parse_keepalive: negative TTL");
				fz_check_bound(start, bound, "keepalive");
				break;
			}
		case T_REQ_REVOKE:
			(void) etcd_request("/v3/lease/revoke", etcd_lease_body(FZ_LEASE), NULL, NULL, &st);
			fz_check_bound(start, etcd_lock_request_timeout, "revoke");
			break;
		case T_REQ_ACQUIRE:
			{
				int64		rev = -1;
				bool		held;

				fz_keys(&k, FZ_LEASE);
				held = etcd_lock_acquire(&k, FZ_LEASE, "{\"pid\":1}", param & 1, &rev);
				FZ_TRACE("acquire: held %d rev %lld\n", held, (long long) rev);
				if (held && rev <= 0)
					fz_fail("etcd_lock_acquire: held with a token <= 0");
				break;
			}
		case T_REQ_WAIT:
			fz_keys(&k, FZ_LEASE2);
			{
				bool		held = etcd_lock_wait(&k, 3,
												  TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
																			  1000 + 1000 * (param & 7)),
												  NULL);

				FZ_TRACE("wait: held %d\n", held);
			}
			break;
		case T_REQ_RELEASE:
			fz_keys(&k, FZ_LEASE);
			(void) etcd_lock_release(k.key, k.keylen, 2, &st);
			fz_check_bound(start, etcd_lock_request_timeout, "release");
			break;
		case T_REQ_HOLDERS:
			{
				int			n = -1,
							i;
				EtcdHolder *h = etcd_lock_holders((param & 1) ? "/" : "",
												  (param & 2) ? "jobs" : "", &n);

				for (i = 0; i < n; i++)
				{
					if (!h[i].name || !h[i].value || h[i].waiters < 0)
						fz_fail("etcd_lock_holders: bad entry");
					FZ_TRACE("holder %s token %lld waiters %d ttl %lld\n", h[i].name,
							 (long long) h[i].token, h[i].waiters, (long long) h[i].ttl);
				}
				break;
			}
		case T_REQ_VERIFY:
			{
				char	   *keys[2];
				int			lens[2];
				int64		tokens[2] = {2, 3};

				fz_keys(&k, FZ_LEASE);
				keys[0] = keys[1] = k.key;
				lens[0] = lens[1] = k.keylen;
				bool		held = etcd_locks_still_held(keys, lens, tokens, 1 + (param & 1));

				FZ_TRACE("still held: %d\n", held);
				break;
			}
		case T_REQ_WATCH:
			fz_keys(&k, FZ_LEASE);
			if (etcd_watch_open(k.key, k.keylen, 0, &st))
			{
				EtcdWatchResult w = etcd_watch_wait(TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1500));

				FZ_TRACE("watch: %d\n", (int) w);
			}
			else
				FZ_TRACE("watch not created: %s\n", st.message);
			etcd_watch_close();
			break;
		default:
			break;
	}
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static char endpoints[] = "http://127.0.0.1:1, http://127.0.0.1:2/";
	int			fd;

	etcd_lock_endpoints = endpoints;
	etcd_lock_request_timeout = 1000;
	if (getenv("FUZZ_STRICT"))
	{
		const char *v = getenv("FUZZ_STRICT");

		fz_strict_utf8 = strcmp(v, "1") == 0 || strstr(v, "utf8") != NULL;
		fz_strict_time = strcmp(v, "1") == 0 || strstr(v, "time") != NULL;
	}
	fz_trace = getenv("FUZZ_TRACE") && strcmp(getenv("FUZZ_TRACE"), "0") != 0;

	/*
	 * The etcd password file, 0600 as gw_read_password demands; one per
	 * user, reused by every run (a crashed run leaves nothing new behind).
	 */
	snprintf(fz_pwfile, sizeof(fz_pwfile), "/tmp/etcd_lock_fuzz_pw.%d", (int) getuid());
	fd = open(fz_pwfile, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600);
	if (fd < 0 || fchmod(fd, 0600) != 0 || write(fd, "fz-password\n", 12) != 12 || close(fd) != 0)
	{
		perror("fuzz: password file");
		exit(2);
	}
	etcd_lock_password_file = fz_pwfile;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FzTarget	t;
	uint8_t		param;
	const char *body;
	size_t		len;
	static TimestampTz fz_t0;
	if (size < 1)
		return 0;
	t = (FzTarget) (data[0] % T_NTARGETS);
	param = size > 1 ? data[1] : 0;
	body = (const char *) data + Min(size, 2);
	len = size - Min(size, 2);

	/* a fresh "backend": first endpoint, no token, no transfer */
	gw_ep.cur = 0;
	fz_nmsgs = 0;
	fz_error.raised = false;
	fz_request_path = t >= T_REQ_GRANT;
	fz_t0 = GetCurrentTimestamp();
	etcd_lock_username = (fz_request_path && (param & 0x80)) ? "fz" : "";
	if (gw_auth_token())
		gw_drop_token();

	PG_TRY();
	{
		if (fz_request_path)
		{
			fz_load_script(body, len);
			fz_request(t, param);
		}
		else
			fz_direct(t, param, body, len);
	}
	PG_CATCH();
	{
		FZ_TRACE("ERROR %s: %s | %s\n", fz_sqlstate(fz_error.sqlerrcode),
				 fz_error.message, fz_error.detail);
		if (!fz_request_path)
		{
			fprintf(stderr, "fuzz: a parser raised an ERROR: %s\n", fz_error.message);
			abort();
		}
	}
	PG_END_TRY();
	FZ_TRACE("target %d: %d of %d answers used, %.1f ms\n", (int) t, fz_next, fz_nresp,
			 (GetCurrentTimestamp() - fz_t0) / 1000.0);

	/* nothing may be left running or attached after a call returns */
	if (gw_watch.s.t.active && t != T_REQ_WATCH)
		fz_fail("a watch was left open");
	if (gw_watch.s.t.active)
		etcd_watch_close();
	{
		int			i;

		for (i = 0; i < fz_nhandles; i++)
			if (fz_handles[i].active)
				fz_fail("a curl transfer was left attached to the multi handle");
	}
	if (fz_sets != 0)
		fz_fail("a WaitEventSet was not freed");
	fz_memory_reset();
	return 0;
}
