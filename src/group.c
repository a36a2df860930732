/*
 * group.c
 *		Group commit: the acquire and release txns of many backends of one
 *		instance sent as one etcd txn of nested txns (issue 21).
 *
 * As PostgreSQL's own group commit (XLogFlush, ProcArrayGroupClearXid): a
 * backend about to send its txn while etcd_lock.group_commit_inflight
 * requests of the instance are in flight (each holds a lane) queues it
 * here, in its own slot, and sleeps. When a request in flight returns, its
 * sender hands the lead (and the lane) to the first queued backend, which
 * takes every queued txn it can (etcd's --max-txn-ops, a byte cap, never
 * two of one lock name), sends them as one txn whose success branch is the
 * members' txns, gives each member its own answer (the nested
 * response_txn, with the batch's header) and wakes it. Below that many in
 * flight a backend sends at once: no timer, no added wait; a txn whose name
 * a request in flight writes goes at once too (it could not share a batch
 * with it).
 *
 * What a member's request is, and why resending it is safe, does not
 * change (src/README.md "The invariant"): its txn is the same, nested.
 * What can go wrong with the batch is mapped onto what a lone request
 * meets:
 *  - the batch was answered: each member parses its own answer; if the
 *    leader's gateway resent the batch after an attempt that may have
 *    reached etcd, every member counts a late resend, as the leader's own
 *    request does (etcd_gateway_late_resends, lt_note_late);
 *  - etcd refused the batch (one member's lease not found, permission
 *    denied on one name, too many operations, too large): etcd applied
 *    none of it; each member sends its txn again alone and gets its own
 *    answer or its own error, so one member's error never fails another;
 *    a refusal for the operation count or the size lowers the limit used;
 *  - no answer (cut, timed out, a bad answer, the leader cancelled or
 *    ended): each member sends again alone, within its own time, counting
 *    a late resend — exactly the failover a lone request makes;
 *  - a member that leaves while queued was never sent; one that leaves
 *    while its batch is in flight fails like a lone request cut short
 *    (its caller gives the key up to the worker, which reads it after
 *    RESOLVE_SETTLE_MS, longer than the leader may still send the batch).
 * A backend that exits hands on what it leads (before_shmem_exit).
 */
#include "postgres.h"

#include <jansson.h>

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "common/hashfn.h"

#include "compat.h"
#include "gateway_int.h"
#include "group.h"
#include "guc.h"

#define GROUP_BODY_MAX		(8 * 1024)	/* a larger txn is sent alone */
#define GROUP_ANSWER_MAX	(16 * 1024) /* a larger answer: sent again alone */
#define GROUP_MAX_OPS		128 /* etcd's default --max-txn-ops */
#define GROUP_MAX_BYTES		(512 * 1024)	/* under the default
											 * --max-request-bytes (1.5 MiB) */
#define GROUP_MAX_LANES		16	/* etcd_lock.group_commit_inflight's maximum */
#define GROUP_LANE_TAGS		16	/* names of a request in flight kept */

typedef enum GroupState
{
	G_FREE = 0,					/* not in the group */
	G_QUEUED,					/* body written, in the queue */
	G_LEADER,					/* handed the lead: sends the next batch */
	G_FLIGHT,					/* in a batch in flight */
	G_DONE,						/* outcome set by the leader */
	G_ABANDONED					/* left while in flight: the leader frees it */
} GroupState;

typedef enum GroupOutcome
{
	OUT_ANSWERED,				/* answer holds the member's own answer */
	OUT_ALONE,					/* send the txn again alone */
	OUT_LEAD_ALONE,				/* the lead, and no one to batch with: send
								 * alone, then hand the lead on */
	OUT_SEND_NOW				/* never sent; a txn of one of its names is in
								 * the batch: send alone now, beside it */
} GroupOutcome;

typedef struct GroupSlot
{
	int			state;			/* GroupState */
	int			outcome;		/* GroupOutcome, with G_DONE */
	bool		late;			/* an attempt of the batch may still land */
	int			next;			/* queue link, -1: last */
	int			lane;			/* G_LEADER: the lane handed with the lead */
	Latch	   *latch;
	uint32		taghash[ETCD_GROUP_MAX_TAGS];
	int			ntags;
	int			nops;
	int			bodylen;
	int			anslen;			/* -1: too large for the slot */
	char		body[GROUP_BODY_MAX];
	char		answer[GROUP_ANSWER_MAX];
} GroupSlot;

typedef struct GroupShared
{
	slock_t		mutex;
	int			inflight;		/* lanes in use: requests in flight whose
								 * senders lead (etcd_lock.group_commit_inflight) */
	bool		lane_used[GROUP_MAX_LANES];
	int			lane_ntags[GROUP_MAX_LANES];	/* -1: too many to keep */
	uint32		lane_tags[GROUP_MAX_LANES][GROUP_LANE_TAGS];
	int			head;			/* the queue, oldest first; -1: empty */
	int			tail;
	int			max_ops;		/* lowered when etcd refuses a batch */
	int			max_bytes;
	int			nested_auth;	/* etcd checks nested txns' permissions:
								 * 1 yes, -1 no (3.4), 0 not asked yet */
	int			nslots;
	EtcdGroupStats stats;		/* under mutex */
	GroupSlot	slots[FLEXIBLE_ARRAY_MEMBER];
} GroupShared;

static GroupShared *grp = NULL;

/* what this process leads (for the exit callback) */
static bool g_leading = false;
static int	g_lane = -1;		/* the lane this process leads in */
static int	g_members[GROUP_MAX_OPS];
static int	g_nmembers = 0;
static bool g_exit_registered = false;

Size
etcd_group_shmem_size(void)
{
	return add_size(offsetof(GroupShared, slots),
					mul_size(MaxBackends, sizeof(GroupSlot)));
}

void
etcd_group_shmem_init(void *p, bool found)
{
	grp = (GroupShared *) p;
	if (found)
		return;
	memset(grp, 0, offsetof(GroupShared, slots));
	SpinLockInit(&grp->mutex);
	grp->head = grp->tail = -1;
	grp->max_ops = GROUP_MAX_OPS;
	grp->max_bytes = GROUP_MAX_BYTES;
	grp->nslots = MaxBackends;
	for (int i = 0; i < MaxBackends; i++)
	{
		grp->slots[i].state = G_FREE;
		grp->slots[i].next = -1;
	}
}

void
etcd_group_stats(EtcdGroupStats *out)
{
	memset(out, 0, sizeof(*out));
	if (grp == NULL)
		return;
	SpinLockAcquire(&grp->mutex);
	*out = grp->stats;
	out->max_ops = grp->max_ops;
	SpinLockRelease(&grp->mutex);
}

void
etcd_group_stats_reset(void)
{
	if (grp == NULL)
		return;
	SpinLockAcquire(&grp->mutex);
	memset(&grp->stats, 0, sizeof(grp->stats));
	SpinLockRelease(&grp->mutex);
}

/* the latency bucket of us microseconds: 4 a power of two */
static int
hist_bucket(int64 us)
{
	int			b = 0;
	uint64		v = (uint64) Max(us, 1);
	int			lg = 63 - __builtin_clzll(v);

	if (lg >= 2)
		b = lg * 4 + (int) ((v >> (lg - 2)) & 3);
	else
		b = (int) v;
	return Min(b, ETCD_GROUP_HIST - 1);
}

/* the upper bound (µs) of bucket b */
static double
hist_upper(int b)
{
	int			lg = b / 4;

	if (b < 8)
		return b + 1;
	return (double) (1ULL << lg) * (1.0 + ((b % 4) + 1) / 4.0);
}

/*
 * etcd_group_percentile: the request latency (ms) that a fraction q of
 * them did not exceed (a bucket's upper bound: within 25 %), or -1 if none.
 */
double
etcd_group_percentile(const EtcdGroupStats *s, double q)
{
	uint64		total = 0,
				seen = 0;

	for (int b = 0; b < ETCD_GROUP_HIST; b++)
		total += s->hist[b];
	if (total == 0)
		return -1;
	for (int b = 0; b < ETCD_GROUP_HIST; b++)
	{
		seen += s->hist[b];
		if ((double) seen >= q * (double) total)
			return hist_upper(b) / 1000.0;
	}
	return hist_upper(ETCD_GROUP_HIST - 1) / 1000.0;
}

static void
count_sent(int n)
{
	SpinLockAcquire(&grp->mutex);
	grp->stats.requests += n;
	SpinLockRelease(&grp->mutex);
}

/* queue operations: the caller holds the mutex */
static void
q_push(int idx)
{
	grp->slots[idx].next = -1;
	if (grp->tail >= 0)
		grp->slots[grp->tail].next = idx;
	else
		grp->head = idx;
	grp->tail = idx;
}

static void
q_remove(int idx)
{
	int			prev = -1;

	for (int i = grp->head; i >= 0; prev = i, i = grp->slots[i].next)
	{
		if (i != idx)
			continue;
		if (prev >= 0)
			grp->slots[prev].next = grp->slots[i].next;
		else
			grp->head = grp->slots[i].next;
		if (grp->tail == idx)
			grp->tail = prev;
		grp->slots[idx].next = -1;
		return;
	}
}

/*
 * lane_take: a free lane for this process's request (caller holds the
 * mutex), its names noted; false if etcd_lock.group_commit_inflight are
 * in flight.
 */
static bool
lane_take(const uint32 *tags, int ntags)
{
	int			lanes = Min(Max(etcd_lock_group_commit_inflight, 1), GROUP_MAX_LANES);

	if (grp->inflight >= lanes)
		return false;
	for (int l = 0; l < GROUP_MAX_LANES; l++)
	{
		if (grp->lane_used[l])
			continue;
		grp->lane_used[l] = true;
		grp->inflight++;
		grp->lane_ntags[l] = Min(ntags, GROUP_LANE_TAGS);
		memcpy(grp->lane_tags[l], tags, sizeof(uint32) * grp->lane_ntags[l]);
		g_lane = l;
		return true;
	}
	return false;
}

/*
 * inflight_clash: a request in flight writes one of these names (caller
 * holds the mutex). Then this txn could not share the next batch with it
 * anyway, nor need it wait: it goes alone at once.
 */
static bool
inflight_clash(const uint32 *tags, int ntags)
{
	for (int l = 0; l < GROUP_MAX_LANES; l++)
	{
		if (!grp->lane_used[l])
			continue;
		for (int i = 0; i < grp->lane_ntags[l]; i++)
			for (int t = 0; t < ntags; t++)
				if (grp->lane_tags[l][i] == tags[t])
					return true;
	}
	return false;
}

/*
 * pass_on ends this process's lead: the first queued backend leads next,
 * or the group is idle. Never throws.
 */
static void
pass_on(void)
{
	Latch	   *wake = NULL;

	if (!g_leading)
		return;
	if (g_lane < 0 || g_lane >= GROUP_MAX_LANES)
	{
		g_leading = false;		/* cannot be: never leave the queue stuck */
		elog(WARNING, "etcd_lock: group commit lead without a lane");
		return;
	}
	SpinLockAcquire(&grp->mutex);
	if (grp->head >= 0)
	{
		int			idx = grp->head;

		q_remove(idx);
		grp->slots[idx].state = G_LEADER;
		grp->slots[idx].lane = g_lane;
		grp->lane_ntags[g_lane] = 0;
		wake = grp->slots[idx].latch;
	}
	else
	{
		grp->lane_used[g_lane] = false;
		grp->inflight--;
	}
	SpinLockRelease(&grp->mutex);
	g_leading = false;
	g_lane = -1;
	if (wake)
		SetLatch(wake);
}

/*
 * finish_members gives every member of the batch this process leads its
 * outcome (except skip, this process's own slot, which its caller reads)
 * and wakes it; an abandoned member's slot is freed. Never throws.
 */
static void
finish_members(int outcome, bool late, const bool *answered, int skip)
{
	for (int i = 0; i < g_nmembers; i++)
	{
		GroupSlot  *s = &grp->slots[g_members[i]];
		Latch	   *wake = NULL;

		SpinLockAcquire(&grp->mutex);
		if (s->state == G_ABANDONED)
			s->state = G_FREE;
		else if (s->state == G_FLIGHT)
		{
			s->outcome = (answered && answered[i]) ? OUT_ANSWERED : outcome;
			if (s->outcome == OUT_ALONE)
				grp->stats.resent_alone++;
			s->late = late;
			if (g_members[i] == skip)
				s->state = G_FREE;
			else
			{
				s->state = G_DONE;
				wake = s->latch;
			}
		}
		SpinLockRelease(&grp->mutex);
		if (wake)
			SetLatch(wake);
	}
	g_nmembers = 0;
}

/* at exit: what this process leads goes on, its queued txn goes away */
static void member_leave(int me);

static void
group_exit(int code, Datum arg)
{
	int			idx = ETCD_MY_SLOT_INDEX();

	if (grp == NULL || idx < 0 || idx >= grp->nslots)
		return;
	if (g_nmembers > 0)
		finish_members(OUT_ALONE, true, NULL, idx);
	member_leave(idx);
}

/* what the batch's answer parse gives each member */
typedef struct BatchCtx
{
	int			n;
	bool		answered[GROUP_MAX_OPS];
} BatchCtx;

/*
 * parse_batch: the answer to a batch is {"header":..., "succeeded":true,
 * "responses":[{"response_txn":{...}}, ...]}, one per member in order; each
 * member gets its response_txn with the batch's header (a nested answer
 * has an empty one; the whole batch is applied at one revision).
 */
static bool
parse_batch(json_t *root, void *arg)
{
	BatchCtx   *c = arg;
	json_t	   *header = json_object_get(root, "header");
	json_t	   *responses = json_object_get(root, "responses");

	if (!json_is_object(header) || !json_is_array(responses) ||
		json_array_size(responses) != (size_t) c->n)
		return false;
	for (int i = 0; i < c->n; i++)
	{
		json_t	   *r = json_object_get(json_array_get(responses, i), "response_txn");
		GroupSlot  *s = &grp->slots[g_members[i]];
		char	   *text;
		size_t		len;

		if (!json_is_object(r))
			return false;
		if (json_object_set(r, "header", header) != 0)
			return false;
		text = json_dumps(r, JSON_COMPACT);
		if (text == NULL)
			return false;
		len = strlen(text);
		/* the slot is this leader's until it says the member is done */
		if (len < GROUP_ANSWER_MAX)
		{
			memcpy(s->answer, text, len + 1);
			s->anslen = (int) len;
			c->answered[i] = true;
		}
		else
			s->anslen = -1;
		free(text);
	}
	return true;
}

/*
 * lead_alone sends this process's own txn alone while it leads, and hands
 * the lead on when the request returns (or throws).
 */
static bool
lead_alone(const char *body, EtcdParseFn parse, void *arg, EtcdStatus *st)
{
	volatile bool ok = false;

	PG_TRY();
	{
		count_sent(1);
		ok = etcd_request("/v3/kv/txn", body, parse, arg, st);
	}
	PG_CATCH();
	{
		pass_on();
		PG_RE_THROW();
	}
	PG_END_TRY();
	pass_on();
	return ok;
}

/*
 * lead_batch: this process was handed the lead (its own slot is G_LEADER
 * and holds its txn). Takes the queued txns that fit, sends them with its
 * own as one txn, and sets every member's outcome (its own too).
 */
static void
lead_batch(int me)
{
	GroupSlot  *my = &grp->slots[me];
	StringInfoData b;
	BatchCtx	ctx;
	EtcdStatus	st;
	uint32		tags[GROUP_MAX_OPS * ETCD_GROUP_MAX_TAGS];
	int			ntaken = 0;
	Latch	   *wake[GROUP_MAX_OPS];
	int			nwake = 0;
	int			maxnops,
				bytes;
	uint64		late0;
	bool		ok;
	bool		late;

	g_leading = true;
	SpinLockAcquire(&grp->mutex);
	g_lane = my->lane;
	my->state = G_FLIGHT;
	g_members[0] = me;
	for (int t = 0; t < my->ntags; t++)
		tags[ntaken++] = my->taghash[t];
	g_nmembers = 1;
	maxnops = my->nops;
	bytes = my->bodylen;
	for (int i = grp->head; i >= 0;)
	{
		GroupSlot  *s = &grp->slots[i];
		int			next = s->next;
		bool		clash = false;

		if (g_nmembers + 1 + Max(maxnops, s->nops) > grp->max_ops ||
			bytes + s->bodylen + 32 > grp->max_bytes)
			break;
		for (int j = 0; j < ntaken && !clash; j++)
			for (int t = 0; t < s->ntags && !clash; t++)
				clash = tags[j] == s->taghash[t];
		if (clash)
		{
			/*
			 * It may not share this txn, but need not wait for it either:
			 * it goes now, alone, as it would without group commit (or
			 * with the next batch, past what can be woken from here).
			 */
			if (nwake < GROUP_MAX_OPS)
			{
				q_remove(i);
				s->outcome = OUT_SEND_NOW;
				s->late = false;
				s->state = G_DONE;
				wake[nwake++] = s->latch;
			}
		}
		else
		{
			q_remove(i);
			s->state = G_FLIGHT;
			for (int t = 0; t < s->ntags; t++)
				tags[ntaken++] = s->taghash[t];
			g_members[g_nmembers++] = i;
			maxnops = Max(maxnops, s->nops);
			bytes += s->bodylen + 32;
		}
		i = next;
	}
	/* the names now in flight in this lane */
	grp->lane_ntags[g_lane] = ntaken <= GROUP_LANE_TAGS ? ntaken : -1;
	if (ntaken <= GROUP_LANE_TAGS)
		memcpy(grp->lane_tags[g_lane], tags, sizeof(uint32) * ntaken);
	if (g_nmembers > 1)
	{
		grp->stats.requests++;
		grp->stats.batches++;
		grp->stats.members += g_nmembers;
		grp->stats.max_members = Max(grp->stats.max_members, g_nmembers);
	}
	SpinLockRelease(&grp->mutex);
	for (int i = 0; i < nwake; i++)
		SetLatch(wake[i]);

	if (g_nmembers == 1)
	{
		/* nobody to batch with: the caller sends its own, then passes on */
		SpinLockAcquire(&grp->mutex);
		my->outcome = OUT_LEAD_ALONE;
		my->state = G_DONE;
		SpinLockRelease(&grp->mutex);
		g_nmembers = 0;
		return;
	}

	initStringInfo(&b);
	appendStringInfoString(&b, "{\"success\":[");
	for (int i = 0; i < g_nmembers; i++)
	{
		GroupSlot  *s = &grp->slots[g_members[i]];

		appendStringInfoString(&b, i ? ",{\"request_txn\":" : "{\"request_txn\":");
		appendBinaryStringInfo(&b, s->body, s->bodylen);
		appendStringInfoChar(&b, '}');
	}
	appendStringInfoString(&b, "]}");

	memset(&ctx, 0, sizeof(ctx));
	ctx.n = g_nmembers;
	late0 = etcd_gateway_late_resends();
	PG_TRY();
	{
		etcd_gateway_follow_endpoint();
		ok = etcd_request("/v3/kv/txn", b.data, parse_batch, &ctx, &st);
	}
	PG_CATCH();
	{
		/* cancelled, terminated: every member sends again alone */
		finish_members(OUT_ALONE, true, NULL, me);
		pass_on();
		PG_RE_THROW();
	}
	PG_END_TRY();
	pfree(b.data);
	late = etcd_gateway_late_resends() != late0;
	if (ok)
		finish_members(OUT_ALONE, late, ctx.answered, -1);
	else if (st.kind == ETCD_ERROR_REPLY)
	{
		/* refused as a whole: nothing of it was applied */
		if (strstr(st.message, "too many operations"))
		{
			SpinLockAcquire(&grp->mutex);
			grp->max_ops = Max(4, (g_nmembers + 1 + maxnops) / 2);
			SpinLockRelease(&grp->mutex);
		}
		else if (strstr(st.message, "too large"))
		{
			SpinLockAcquire(&grp->mutex);
			grp->max_bytes = Max(GROUP_BODY_MAX * 2, bytes / 2);
			SpinLockRelease(&grp->mutex);
		}
		finish_members(OUT_ALONE, late, NULL, -1);
	}
	else
		finish_members(OUT_ALONE, true, NULL, -1);
	pass_on();
}

/* leave the group (an error, or exit): never throws */
static void
member_leave(int me)
{
	GroupSlot  *my = &grp->slots[me];

	SpinLockAcquire(&grp->mutex);
	switch (my->state)
	{
		case G_QUEUED:
			q_remove(me);
			my->state = G_FREE;
			break;
		case G_LEADER:
			/* handed the lead but leaving before taking it: hand it on */
			g_leading = true;
			g_lane = my->lane;
			my->state = G_FREE;
			break;
		case G_FLIGHT:
			my->state = G_ABANDONED;
			break;
		case G_DONE:
			my->state = G_FREE;
			break;
	}
	SpinLockRelease(&grp->mutex);
	pass_on();
}

static bool
parse_version(json_t *root, void *arg)
{
	json_t	   *v = json_object_get(root, "version");
	int			major,
				minor;

	if (!json_is_string(v) || sscanf(json_string_value(v), "%d.%d", &major, &minor) != 2)
		return false;
	*(int *) arg = (major > 3 || (major == 3 && minor >= 5)) ? 1 : -1;
	return true;
}

/*
 * nested_auth_ok: with authentication on, batch only if etcd checks the
 * permissions of the operations in nested txns. etcd 3.4 does not (fixed in
 * 3.5): there a batch would put a key under a name the etcd user may not
 * write, where a lone txn gets "permission denied" (42501). Asked once per
 * instance (the version in /v3/maintenance/status).
 */
static bool
nested_auth_ok(void)
{
	int			known;
	EtcdStatus	st;

	if (etcd_lock_username == NULL || etcd_lock_username[0] == '\0')
		return true;
	SpinLockAcquire(&grp->mutex);
	known = grp->nested_auth;
	SpinLockRelease(&grp->mutex);
	if (known != 0)
		return known > 0;
	if (!etcd_request("/v3/maintenance/status", "{}", parse_version, &known, &st))
		return false;			/* asked again next time */
	SpinLockAcquire(&grp->mutex);
	grp->nested_auth = known;
	SpinLockRelease(&grp->mutex);
	return known > 0;
}

static void
no_time(EtcdStatus *st, bool sent)
{
	memset(st, 0, sizeof(*st));
	st->kind = ETCD_UNREACHABLE;
	snprintf(st->message, sizeof(st->message), "%s",
			 sent ? "timed out waiting for the answer to a batch of requests (etcd_lock.request_timeout)" :
			 "no time left within etcd_lock.request_timeout waiting to be sent with other sessions' requests");
	snprintf(st->log_message, sizeof(st->log_message), "%s", st->message);
}

static bool
group_request(const char *body, EtcdParseFn parse, void *arg,
			  char *const *tags, const int *taglens, int ntags, int nops,
			  EtcdStatus *st)
{
	int			me = ETCD_MY_SLOT_INDEX();
	size_t		bodylen = strlen(body);
	GroupSlot  *my;
	TimestampTz deadline;
	bool		lead;
	int			outcome;
	bool		late;
	char	   *answer = NULL;
	volatile int gave_up = 0;	/* 1: never sent, 2: left in flight */
	uint32		hashes[ETCD_GROUP_MAX_TAGS];
	bool		clash;

	if (!etcd_lock_group_commit || ntags < 1 || ntags > ETCD_GROUP_MAX_TAGS ||
		MyBackendType != B_BACKEND || me < 0 || me >= grp->nslots ||
		bodylen >= GROUP_BODY_MAX || nops < 1 || nops > 16 || !nested_auth_ok())
	{
		count_sent(1);
		return etcd_request("/v3/kv/txn", body, parse, arg, st);
	}
	if (!g_exit_registered)
	{
		before_shmem_exit(group_exit, (Datum) 0);
		g_exit_registered = true;
	}
	my = &grp->slots[me];

	for (int t = 0; t < ntags; t++)
		hashes[t] = hash_bytes((const unsigned char *) tags[t], taglens[t]);
	SpinLockAcquire(&grp->mutex);
	if (my->state != G_FREE)
	{
		/* an abandoned txn of ours is still in a batch: go alone */
		SpinLockRelease(&grp->mutex);
		count_sent(1);
		return etcd_request("/v3/kv/txn", body, parse, arg, st);
	}
	lead = lane_take(hashes, ntags);
	clash = !lead && inflight_clash(hashes, ntags);
	SpinLockRelease(&grp->mutex);
	if (lead)
	{
		g_leading = true;
		return lead_alone(body, parse, arg, st);
	}
	if (clash)
	{
		/* a txn of one of its names is in flight: alone, at once */
		count_sent(1);
		return etcd_request("/v3/kv/txn", body, parse, arg, st);
	}

	/* the slot is free: only this process touches it until queued */
	memcpy(my->body, body, bodylen + 1);
	my->bodylen = (int) bodylen;
	memcpy(my->taghash, hashes, sizeof(uint32) * ntags);
	my->ntags = ntags;
	my->nops = nops;
	my->latch = MyLatch;
	my->anslen = 0;
	SpinLockAcquire(&grp->mutex);
	lead = lane_take(hashes, ntags);
	if (!lead)
	{
		q_push(me);
		my->state = G_QUEUED;
	}
	SpinLockRelease(&grp->mutex);
	if (lead)
	{
		g_leading = true;
		return lead_alone(body, parse, arg, st);
	}

	deadline = gw_bound(TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													Max(etcd_lock_request_timeout, 1)));
	PG_TRY();
	{
		for (;;)
		{
			int			s;
			long		left;

			SpinLockAcquire(&grp->mutex);
			s = my->state;
			SpinLockRelease(&grp->mutex);
			if (s == G_DONE)
				break;
			if (s == G_LEADER)
			{
				lead_batch(me);
				continue;
			}
			left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
			if (left <= 0)
			{
				bool		sent;

				SpinLockAcquire(&grp->mutex);
				s = my->state;
				sent = s == G_FLIGHT;
				if (s == G_QUEUED)
				{
					q_remove(me);
					my->state = G_FREE;
				}
				else if (s == G_FLIGHT)
					my->state = G_ABANDONED;
				SpinLockRelease(&grp->mutex);
				if (s == G_QUEUED || s == G_FLIGHT)
				{
					/* never return from within PG_TRY */
					gave_up = sent ? 2 : 1;
					break;
				}
				continue;		/* done or leading meanwhile */
			}
			gw_pause(Min(left, 1000));
		}
	}
	PG_CATCH();
	{
		member_leave(me);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (gave_up)
	{
		no_time(st, gave_up == 2);
		return false;
	}

	SpinLockAcquire(&grp->mutex);
	outcome = my->outcome;
	late = my->late;
	if (outcome == OUT_ANSWERED)
		answer = pnstrdup(my->answer, my->anslen);
	my->state = G_FREE;
	SpinLockRelease(&grp->mutex);

	if (outcome == OUT_LEAD_ALONE)
		return lead_alone(body, parse, arg, st);
	if (late)
		etcd_gateway_count_late_resend();
	if (outcome == OUT_ANSWERED)
	{
		json_error_t jerr;
		json_t	   *root = json_loads(answer, 0, &jerr);
		volatile bool ok = false;

		pfree(answer);
		memset(st, 0, sizeof(*st));
		if (root != NULL)
		{
			PG_TRY();
			{
				ok = parse == NULL || parse(root, arg);
			}
			PG_CATCH();
			{
				json_decref(root);
				PG_RE_THROW();
			}
			PG_END_TRY();
			json_decref(root);
		}
		if (ok)
			return true;
		st->kind = ETCD_BAD_REPLY;
		snprintf(st->message, sizeof(st->message),
				 "%s answered an unexpected txn in a batch of requests", etcd_current_endpoint());
		return false;
	}
	/* send again alone, within what is left of this request's time */
	{
		long		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);

		if (left <= 0)
		{
			no_time(st, true);
			return false;
		}
		count_sent(1);
		return etcd_request_ex("/v3/kv/txn", body, parse, arg, st, (int) left);
	}
}

/*
 * etcd_group_request: see group.h. Counts the txn, the requests it took and
 * its latency (from the call to the answer, waits in the queue included).
 */
bool
etcd_group_request(EtcdGroupKind kind, const char *body, EtcdParseFn parse,
				   void *arg, char *const *tags, const int *taglens, int ntags,
				   EtcdStatus *st)
{
	TimestampTz t0 = GetCurrentTimestamp();
	bool		ok;
	int			b;

	if (grp == NULL)
		return etcd_request("/v3/kv/txn", body, parse, arg, st);
	ok = group_request(body, parse, arg, tags, taglens, ntags,
					   kind == ETCD_GROUP_ACQUIRE ? 2 * ntags : 1, st);
	b = hist_bucket(GetCurrentTimestamp() - t0);
	SpinLockAcquire(&grp->mutex);
	grp->stats.txns[kind == ETCD_GROUP_ACQUIRE ? 0 : 1]++;
	grp->stats.hist[b]++;
	SpinLockRelease(&grp->mutex);
	return ok;
}
