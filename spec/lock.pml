/*
 * lock.pml: the lock algorithm of etcd_lock as the C code runs it, checked
 * with SPIN.  Read it beside src/README.md; spec/README.md maps every step
 * to the C function that performs it.
 *
 * What is modelled
 *   etcd      one linearizable store: a revision counter, keys with create
 *             (and, for permits, mod) revisions, puts attached to leases,
 *             txns comparing create revisions, deletes, lease expiry and
 *             revoke (every key of the lease goes in one revision), watches
 *             that report a key's (or a name's) events from their creation.
 *   network   every write (acquire, try, release, touch, revoke, batch) is a
 *             message in a bag: applied in any order, any number of steps
 *             late, lost, duplicated; a reply is lost, or comes after its
 *             sender stopped waiting (then it is dropped, as the gateway
 *             drops the answer of an abandoned attempt).  Reads are atomic
 *             steps of their sender (see README: why that loses nothing).
 *   clients   lt_acquire / etcd_lock_acquire / wait_loop / sem_wait_once /
 *             lt_release_now / lt_release_async / lt_flush_owed /
 *             lt_check_lost, each step as the C code takes it; a lock call
 *             can be cancelled or time out at every request and wait.
 *   worker    the release queue (shmem.c) and start_releases /
 *             finish_release / finish_resolve / check_deadlines, worker
 *             restart (BUSY entries become PENDING again).
 *   leases    abstract time: a lease's deadline may pass (its renewals
 *             failed), after which, and only after which, etcd may expire
 *             it (spec/lease.pml checks that order with real ticks).
 *
 * Configurations: default = locks (C0, C1 exclusive, C2 shared; names 0, 1);
 * -DSEM = a semaphore of PERMITS permits; GROUP=1 = the worker sends due
 * compare-and-delete releases together, one txn of nested txns
 * (collect_batch), as well as one at a time.  Everything but -DSEM and
 * -DLIVE is read from pan's environment at the start (cfg_env below).
 * Mutations: MUT_*=1 (spec/README.md); MUT_LATE_RESEND takes out the fix
 * of README "Found 1" (late_until: lt_note_late, lt_settle_late).
 */

#define NC	3				/* clients (backends), each with its own lease */
#define NN	2				/* names */
#define NK	(NN*NC)			/* keys: name n, lease of client c */
#define KEY(n,c)	((n)*NC+(c))
#define KN(k)	((k)/NC)
#define KC(k)	((k)%NC)
#define NONE	255

/* ---- the configuration: read at the start of the run from the
 * environment of pan (check.sh sets it; see cfg_read below), so that one
 * compiled pan serves every configuration and mutation ----
 *   FAULTS     requests lost, or late (a lost reply is a late request applied
 *              at once; a duplicate, a late one plus the sender's resend)  [1]
 *   LOSSES     leases whose deadline passes                                [1]
 *   LOSER_C    only this client's lease may be lost (unset: any)
 *   WFAULTS    broken watches (and 1 s safety-net wake-ups)                [1]
 *   WRESTARTS  worker restarts                                             [1]
 *   GIVEUPS    lock calls cancelled, timed out or failed by the client     [1]
 *   SCRIPT     the clients' lock/unlock scripts (below)                    [1]
 *   WAITS0..2  1 lock, 2 try-lock, 3 either                                [3]
 *   UNLOCKS0..2  1 etcd_unlock, 2 the transaction's end, 3 either          [3]
 *   GROUP      the worker also sends due releases as one batch             [0]
 *   LOST_REPLY_ONLY  a faulty message is lost, or applied at once with its
 *              answer lost: no message outlives its sender's wait          [0]
 *   MUT_*      the mutations (spec/README.md), each set to 1 to apply it
 * The same names given as -D options set the defaults: spin's simulator
 * does not run c_code, so a trail is replayed with the run's settings as
 * -D options (spin -t -p -DFAULTS=1 ... lock.pml), or with pan -r.
 */
#ifndef FAULTS
#define FAULTS	1
#endif
#ifndef LOSSES
#define LOSSES	1
#endif
#ifndef LOSER_C
#define LOSER_C	255
#endif
#ifndef WFAULTS
#define WFAULTS	1
#endif
#ifndef WRESTARTS
#define WRESTARTS	1
#endif
#ifndef GIVEUPS
#define GIVEUPS	1
#endif
#ifndef SCRIPT
#define SCRIPT	1
#endif
#ifndef GROUP
#define GROUP	0
#endif
#ifndef LOST_REPLY_ONLY
#define LOST_REPLY_ONLY	0
#endif
#ifndef WAITS0
#define WAITS0	3
#endif
#ifndef WAITS1
#define WAITS1	3
#endif
#ifndef WAITS2
#define WAITS2	3
#endif
#ifndef UNLOCKS0
#define UNLOCKS0	3
#endif
#ifndef UNLOCKS1
#define UNLOCKS1	3
#endif
#ifndef UNLOCKS2
#define UNLOCKS2	3
#endif
#ifndef MUT_FORGET_TIMED_OUT_RELEASE
#define MUT_FORGET_TIMED_OUT_RELEASE	0
#endif
#ifndef MUT_DROP_LOST_TRYLOCK
#define MUT_DROP_LOST_TRYLOCK	0
#endif
#ifndef MUT_TRUST_WORKER
#define MUT_TRUST_WORKER	0
#endif
#ifndef MUT_HANDOFF_NOT_OLDEST
#define MUT_HANDOFF_NOT_OLDEST	0
#endif
#ifndef MUT_RELEASE_NO_COMPARE
#define MUT_RELEASE_NO_COMPARE	0
#endif
#ifndef MUT_GRANT_AFTER_EXPIRY
#define MUT_GRANT_AFTER_EXPIRY	0
#endif
#ifndef MUT_BATCH_LOST_REPLY
#define MUT_BATCH_LOST_REPLY	0
#endif
#ifndef MUT_FORGET_OWED_TRY
#define MUT_FORGET_OWED_TRY	0
#endif
#ifndef MUT_LATE_RESEND
#define MUT_LATE_RESEND	0
#endif
hidden byte loser = LOSER_C;
hidden byte script = SCRIPT;
hidden byte waits[3];
hidden byte unlocks[3];
hidden byte group = GROUP;
hidden byte lostreply = LOST_REPLY_ONLY;
hidden int mut;				/* MUT_* bits */
#define MU_FORGET_TIMED_OUT_RELEASE	1
#define MU_DROP_LOST_TRYLOCK	2
#define MU_TRUST_WORKER	4
#define MU_HANDOFF_NOT_OLDEST	8
#define MU_RELEASE_NO_COMPARE	16
#define MU_GRANT_AFTER_EXPIRY	32
#define MU_BATCH_LOST_REPLY	64
#define MU_FORGET_OWED_TRY	128
#define MU_LATE_RESEND	256
#define MUT(x)	((mut & (x)) != 0)
#define LOSER(c)	(loser == NONE || loser == (c))	/* whose lease may be lost */
c_code {
static int
cfg_env(const char *name, int dflt)
{
	const char *v = getenv(name);

	return (v != NULL && *v != '\0') ? atoi(v) : dflt;
}
};
#ifndef QN
#define QN	2				/* release queue entries */
#endif
#define NB	8				/* messages in flight (never all used: send asserts) */
#define NA	(NC+QN)			/* awaiters of a reply: clients, queue entries */

/* ---- key kinds: key_kind / kinds_block / key_blocks (keys.c) ---- */
#define EXCL	0
#define SHRD	1
#define SEMA	2
#ifdef SEM
#ifndef PERMITS
#define PERMITS	2
#endif
#define KIND(c,n)	SEMA
#define NEED	PERMITS		/* a key holds while fewer than NEED blocking keys are older */
#else
#define KIND(c,n)	(((c) == 2) -> SHRD : EXCL)
#define NEED	1
#endif
#define KBLOCK(m,o)	((((m) == SEMA) || ((o) == SEMA)) -> ((m) == (o)) : (((m) != SHRD) || ((o) != SHRD)))
#define BLOCKS(c,d,n)	(((c) != (d)) && KBLOCK(KIND(c,n), KIND(d,n)))

/* ---- etcd ---- */
byte rev;					/* revision of the last write */
byte crev[NK];				/* create_revision, 0: no such key */
#ifdef SEM
byte mrev[NK];				/* mod_revision (etcd_lock_touch changes it) */
#endif
bool lalive[NC] = true;	/* etcd has the lease */

/* watches, one per client (etcd_watch_open / etcd_watch_open_ex) */
byte wk[NC];				/* 0: none; k+1: key k; NK+1+n: name n's range */
bool wev[NC];				/* an event that counts was delivered */
byte wreq[NC];				/* a watch asked for (as wk), not created yet */
bool wok[NC];				/* etcd created the watch asked for */
#ifdef SEM
byte wdel[NC];				/* range watch: owners of the keys deleted since armed */
#endif

/* ---- the network ---- */
/* a message: kind, owner lease, name, token, reply route (0: nobody waits) */
#define M_ACQ	1
#define M_TRY	2
#define M_REL	3
#define M_TOUCH	4
#define M_REVOKE 5
#define MSG(k,c,n,t,to)	((k) | ((c) << 3) | ((n) << 5) | ((t) << 6) | ((to) << 12))
#define M_K(m)	((m) & 7)
#define M_C(m)	(((m) >> 3) & 3)
#define M_N(m)	(((m) >> 5) & 1)
#define M_T(m)	(((m) >> 6) & 63)
#define M_TO(m)	(((m) >> 12) & 15)
#define STALE(m)	((m) & ~(15 << 12))	/* nobody waits for its answer */
/* -DGROUP: a batch of the two queue entries' compare-and-deletes (M_BATCH,
 * route R_BATCH): entry 0's key and token in the low fields, entry 1's here */
#define M_BATCH	6
#define R_BATCH	15
#define B2(c,n,t)	(((c) << 16) | ((n) << 18) | ((t) << 19))
#define B_C(m)	(((m) >> 16) & 3)
#define B_N(m)	(((m) >> 18) & 1)
#define B_T(m)	(((m) >> 19) & 63)
int bag[NB];				/* kept sorted, empty slots last */
byte fb;			/* message faults left */
byte wfb;			/* watch faults left */
byte cb;			/* interrupts left */

/* replies; a route is an awaiter + 1: client c, or queue entry e (NC + e) */
#define R_OK	1
#define R_ERR	2
byte rep[NC];				/* 0: no reply yet */
byte rrev[NC];				/* our key's create_revision */
bool rheld[NC];				/* the oldest key is ours / try: held */
bool rund[NC];				/* try: undecided (no blocking key seen) */
bool tmo[NA];				/* the request failed or its answer is late */


/* ---- leases as the backends see them ---- */
bool lok[NC] = true;		/* the deadline has not passed */
bool llost[NC];				/* the worker marked the slot LOST */
bool lgone[NC];				/* the backend forgot the lease (lt_forget_lease) */
byte lb;
/* !lt_lease_lost(); MUT_TRUST_WORKER: the worker's LOST, not the deadline */
#define LEASE_OK(c)	(!lgone[c] && (lok[c] || MUT(MU_TRUST_WORKER)) && !llost[c])
#define IN_USE(c)	(!lgone[c] && !llost[c])	/* lease_in_use(): a LIVE slot */

/* ---- the local lock table (LocalLock) ---- */
#define E_EX	1			/* the entry exists */
#define E_HELD	2			/* nacq > 0 */
#define E_OWED	4
#define E_OATT	8			/* owed_attempted */
#define E_LATE	16			/* late_until: an acquire attempt of this key may still land */
/* MUT_LATE_RESEND: the C code before the fix (README "Found 1") */
#define LATEK(kx)	(!MUT(MU_LATE_RESEND) && (ent[kx] & E_LATE) != 0)
byte ent[NK];
byte etok[NK];
byte cn[NC];				/* ghost: n+1 while client c is in a lock call on n */
byte ctok[NC];				/* the revision of our key in this call (lt_acquire's rev) */
byte cprv[NC];				/* our predecessor's create revision */
byte cpmr[NC];				/* ... and mod revision (permits) */
bool busy[NC];				/* client c is in a lock or unlock call */
bool sdone[NC];				/* ghost: client c's script is finished */
bool intr[NC];				/* an interrupt (cancel, statement_timeout, the
							 * lock's timeout) is pending for client c */

/* ---- the release queue (EtcdRelease) ---- */
#define Q_FREE	0
#define Q_PEND	1
#define Q_BUSY	2
#define R_DEL	0
#define R_REV	1
typedef Rel {
	byte st; bit kind; byte c; bit n; byte t; bit held; bit att; bit settled;
	bit late					/* late_until: settle-read after the delete */
};
Rel q[QN];
byte wb;

inline free_q(e)
{
	q[e].st = Q_FREE; q[e].kind = 0; q[e].c = 0; q[e].n = 0; q[e].t = 0;
	q[e].held = 0; q[e].att = 0; q[e].settled = 0; q[e].late = 0
}

/* ---- properties ---- */
#define RELY(c,n)	(((ent[KEY(n,c)] & E_HELD) != 0) && LEASE_OK(c))
#ifdef SEM
#define OVER(n)	((RELY(0,n) -> 1 : 0) + (RELY(1,n) -> 1 : 0) + (RELY(2,n) -> 1 : 0) > PERMITS)
#else
#define CONF(a,b,n)	(RELY(a,n) && RELY(b,n) && BLOCKS(a,b,n))
#define OVER(n)	(CONF(0,1,n) || CONF(0,2,n) || CONF(1,2,n))
#endif
#define BAD	(OVER(0) || OVER(1))
#define WANTS(c,n)	((cn[c] == (n)+1) || ((ent[KEY(n,c)] & E_HELD) != 0))
#define ORPH(k)	((crev[k] != 0) && !WANTS(KC(k), KN(k)))
#define NOORPH	(!ORPH(0) && !ORPH(1) && !ORPH(2) && !ORPH(3) && !ORPH(4) && !ORPH(5))
#define DONE	(sdone[0] && sdone[1] && sdone[2])	/* every script finished */

/*
 * Mutual exclusion (no two clients rely on conflicting holds of one name;
 * never more than N on permits) is asserted in admit(): RELY(c,n) can only
 * become true there (the held bit is set nowhere else, and LEASE_OK never
 * turns true again: lok, llost, lgone change one way only), so checking it
 * at each admission checks it in every reachable state.
 */
#ifdef LIVE
ltl noorphan { []<> (DONE && NOORPH) }
#else
/* At the end (nothing can move any more): no key is left that its owner
 * gave up.  A left key that blocks a waiter is an invalid end state too;
 * this catches one that blocks nobody now. */
active proctype Final()
{
end_final:
	timeout -> assert(NOORPH)
}
#endif


/* scratch: used within one step only (never across a wait), so hidden
 * (not part of the state) */
hidden byte i2, j2, w2, kk, d, o, nb, rr, rrv, ce, e, nblk, my, ok_, qi, kx2, xre, xrev, r, wres;
hidden int m, t2;
hidden byte rh, ru, bump, ok, att, xh, xu;
hidden byte ek;		/* etcd's key */

/* ================================================================== */
/* etcd                                                               */

/* Revisions only matter by order and equality: after each write every
 * revision still held anywhere is renumbered to its rank, so histories
 * that differ only in how many revisions went by are one state. */
hidden byte mp[64];
hidden byte v2, r2, x2;
inline remap(v)
{
	if
	:: v != 0 -> v = mp[v]
	:: else
	fi
}
inline mark(v)
{
	mp[v] = 1
}
inline renum()
{
	d_step {
		x2 = 0;
		do
		:: x2 < NK -> mark(crev[x2]); mark(etok[x2]);
#ifdef SEM
			mark(mrev[x2]);
#endif
			x2++
		:: else -> break
		od;
		x2 = 0;
		do
		:: x2 < NC -> mark(ctok[x2]); mark(cprv[x2]); mark(cpmr[x2]); mark(rrev[x2]); x2++
		:: else -> break
		od;
		x2 = 0;
		do
		:: x2 < QN -> mark(q[x2].t); x2++
		:: else -> break
		od;
		x2 = 0;
		do
		:: x2 < NB -> mark(M_T(bag[x2])); mark(B_T(bag[x2])); x2++
		:: else -> break
		od;
		mp[0] = 0;
		r2 = 0; v2 = 1;
		do
		:: v2 <= rev -> if :: mp[v2] != 0 -> r2++; mp[v2] = r2 :: else fi; v2++
		:: else -> break
		od;
		x2 = 0;
		do
		:: x2 < NK -> remap(crev[x2]); remap(etok[x2]);
#ifdef SEM
			remap(mrev[x2]);
#endif
			x2++
		:: else -> break
		od;
		x2 = 0;
		do
		:: x2 < NC -> remap(ctok[x2]); remap(cprv[x2]); remap(cpmr[x2]); remap(rrev[x2]); x2++
		:: else -> break
		od;
		x2 = 0;
		do
		:: x2 < QN -> remap(q[x2].t); x2++
		:: else -> break
		od;
		x2 = 0;
		do
		:: x2 < NB -> bag[x2] = (bag[x2] & ~(63 << 6) & ~(63 << 19)) |
			(mp[M_T(bag[x2])] << 6) | (mp[B_T(bag[x2])] << 19); x2++
		:: else -> break
		od;
		rev = r2;
		v2 = 0;
		do
		:: v2 < 64 -> mp[v2] = 0; v2++
		:: else -> break
		od;
		v2 = 0; r2 = 0; x2 = 0
	}
}

/* keep the bag sorted (a bag: order carries no meaning) */
inline canon()
{
	d_step {
		i2 = 0;
		do
		:: i2 < NB - 1 ->
			j2 = 0;
			do
			:: j2 < NB - 1 - i2 ->
				if
				:: bag[j2] < bag[j2+1] -> t2 = bag[j2]; bag[j2] = bag[j2+1]; bag[j2+1] = t2
				:: else
				fi;
				j2++
			:: else -> break
			od;
			i2++
		:: else -> break
		od;
		i2 = 0; j2 = 0; t2 = 0
	}
}

/* a deleted key: every watch of it (or of its name's range) sees it */
inline fire_delete(k)
{
	w2 = 0;
	do
	:: w2 < NC ->
		if
		:: wk[w2] == k+1 -> wev[w2] = true
		:: else
		fi;
#ifdef SEM
		if
		:: wk[w2] == NK+1+KN(k) -> wdel[w2] = wdel[w2] | (1 << KC(k))
		:: else
		fi;
#endif
		w2++
	:: else -> break
	od;
	w2 = 0
}

/* delete key k; bump: this write opens a new revision (else it shares the
 * revision of the txn (batch, lease expiry) it belongs to) */
inline del_key(k)
{
	if
	:: bump -> rev++; bump = false
	:: else
	fi;
	crev[k] = 0;
#ifdef SEM
	mrev[k] = 0;
#endif
	fire_delete(k)
}

inline put_key(k)
{
	if
	:: bump -> rev++; bump = false
	:: else
	fi;
	assert(rev < 63);
	crev[k] = rev;
#ifdef SEM
	mrev[k] = rev;
#endif
}

/* lease c ends in etcd (expiry, revoke): its keys go, in one revision */
inline end_lease(c)
{
	lalive[c] = false;
	bump = true;
	kk = 0;
	do
	:: kk < NN ->
		if
		:: crev[KEY(kk,c)] != 0 -> del_key(KEY(kk,c))
		:: else
		fi;
		kk++
	:: else -> break
	od;
	kk = 0; bump = false
}

/* the oldest key under name n (ascending create revision; ties by key) */
inline oldest(n, res)
{
	res = NONE; d = 0;
	do
	:: d < NC ->
		if
		:: crev[KEY(n,d)] != 0 && (res == NONE || crev[KEY(n,d)] < crev[res]) -> res = KEY(n,d)
		:: else
		fi;
		d++
	:: else -> break
	od;
	d = 0
}

/* etcd_lock_acquire, normal mode: put our key if absent; read it and the
 * oldest key of the name (parse_acquire) */
inline etcd_acquire(c, n)
{
	ek = KEY(n,c);
	if
	:: crev[ek] == 0 && !lalive[c] -> rr = R_ERR	/* lease not found: nothing written */
	:: else ->
		if
		:: crev[ek] == 0 -> put_key(ek)
		:: else
		fi;
		rr = R_OK; rrv = crev[ek];
		oldest(n, o);
		rh = (o == ek); o = 0
	fi
}

/* etcd_lock_acquire, try_only: put our key only if the name's range is
 * empty; else read our key and the oldest page (try_scan) */
inline etcd_try(c, n)
{
	ek = KEY(n,c);
	oldest(n, o);
	if
	:: o == NONE && !lalive[c] -> rr = R_ERR
	:: o == NONE && lalive[c] -> put_key(ek); rr = R_OK; rrv = crev[ek]; rh = true; ru = false
	:: else ->
		rr = R_OK; rrv = crev[ek];
#ifdef SEM
		/* N permit keys (and none of ours): taken; else undecided */
		nb = 0; d = 0;
		do
		:: d < NC -> if :: d != c && crev[KEY(n,d)] != 0 -> nb++ :: else fi; d++
		:: else -> break
		od;
		rh = false; ru = !(rrv == 0 && nb >= PERMITS); nb = 0; d = 0
#else
		/* the first key, oldest first, that is ours or blocks ours */
		o = NONE; d = 0;
		do
		:: d < NC ->
			if
			:: crev[KEY(n,d)] != 0 && (d == c || BLOCKS(c,d,n)) &&
			   (o == NONE || crev[KEY(n,d)] < crev[o]) -> o = KEY(n,d)
			:: else
			fi;
			d++
		:: else -> break
		od;
		d = 0;
		ru = (o == NONE); rh = (o == ek && rrv > 0)
#endif
		if
		:: MUT(MU_DROP_LOST_TRYLOCK) ->
			rh = false; ru = false; rrv = 0	/* not empty: "taken", our own key not looked for */
		:: else
		fi;
	fi;
	o = 0
}

/* etcd_release_request: delete our key only if its create_revision is t */
inline etcd_release(c, n, t)
{
	ek = KEY(n,c);
	if
	:: crev[ek] != 0 && (crev[ek] == t || MUT(MU_RELEASE_NO_COMPARE)) -> del_key(ek)
	:: else
	fi;
	rr = R_OK
}

/* one request's effect; the result for its sender in rr, rrv, rh, ru */
inline etcd_apply(mk, mc, mn, mt)
{
	if
	:: mk == M_ACQ -> etcd_acquire(mc, mn)
	:: mk == M_TRY -> etcd_try(mc, mn)
	:: mk == M_REL -> etcd_release(mc, mn, mt)
	:: mk == M_TOUCH ->		/* etcd_lock_touch: guarded by our create revision */
#ifdef SEM
		ek = KEY(mn,mc);
		if
		:: crev[ek] == mt ->
			rev++; mrev[ek] = rev;
			w2 = 0;
			do
			:: w2 < NC -> if :: wk[w2] == ek+1 -> wev[w2] = true :: else fi; w2++
			:: else -> break
			od;
			w2 = 0
		:: else
		fi;
#endif
		rr = R_OK
	:: mk == M_REVOKE ->
		if
		:: lalive[mc] -> end_lease(mc)
		:: else
		fi;
		rr = R_OK
	fi;
	ek = 0
}

/* finish_release_entry: queue entry e's release is confirmed */
inline deliver_q(e)
{
	if
	:: q[e].late && IN_USE(q[e].c) ->	/* late_until: read it once more, settled */
		q[e].st = Q_PEND; q[e].t = 0; q[e].held = 0; q[e].settled = 1; q[e].late = 0
	:: else -> free_q(e)
	fi
}

/* the reply to route `to` (0: nobody waits any more: dropped) */
inline deliver(to)
{
	if
	:: to == 0
	:: to != 0 && to <= NC ->
		rep[to-1] = rr; rrev[to-1] = rrv; rheld[to-1] = rh; rund[to-1] = ru
	:: to > NC && to != R_BATCH -> deliver_q(to-1-NC)
	:: to == R_BATCH -> deliver_q(0); deliver_q(1)	/* one answer for the batch */
	fi
}

/* the message in slot i reaches etcd */
inline apply_msg(i)
{
	m = bag[i];
	bump = true;
	if
	:: M_K(m) == M_BATCH ->
		/* one txn of nested compare-and-deletes: one revision */
		etcd_release(M_C(m), M_N(m), M_T(m));
		etcd_release(B_C(m), B_N(m), B_T(m))
	:: else -> etcd_apply(M_K(m), M_C(m), M_N(m), M_T(m))
	fi;
	bump = false;
	bag[i] = 0;
	deliver(M_TO(m));
	renum();
	canon();
	m = 0; rr = 0; rrv = 0; rh = false; ru = false
}

/* the message in slot i is lost, or so late that its sender gives up on
 * it (it may still be applied: it stays, stale) */
inline fail_msg(i)
{
	fb--;
	if
	:: M_TO(bag[i]) == R_BATCH ->
		if
		:: MUT(MU_BATCH_LOST_REPLY) ->
			/* the batch's lost answer taken as every release confirmed */
			free_q(0); free_q(1)
		:: else ->
			tmo[NC] = true; tmo[NC+1] = true	/* every entry of it is retried */
		fi
	:: else -> tmo[M_TO(bag[i])-1] = true
	fi;
	if
	:: bag[i] = 0				/* lost */
	/* LOST_REPLY_ONLY: no message outlives its sender's wait: applied now, its answer lost */
	:: lostreply -> bag[i] = STALE(bag[i]); apply_msg(i)
	:: !lostreply -> bag[i] = STALE(bag[i])	/* late: applied after its sender gave up on it */
	fi;
	canon()
}


active proctype Etcd()
{
end_etcd:
	do
	:: atomic { bag[0] != 0 -> apply_msg(0) }
	:: atomic { bag[1] != 0 -> apply_msg(1) }
	:: atomic { bag[2] != 0 -> apply_msg(2) }
	:: atomic { bag[3] != 0 -> apply_msg(3) }
	:: atomic { bag[4] != 0 -> apply_msg(4) }
	:: atomic { bag[5] != 0 -> apply_msg(5) }
	:: atomic { bag[6] != 0 -> apply_msg(6) }
	:: atomic { bag[7] != 0 -> apply_msg(7) }
	:: atomic { fb > 0 && M_TO(bag[0]) != 0 -> fail_msg(0) }	/* lost, or late */
	:: atomic { fb > 0 && M_TO(bag[1]) != 0 -> fail_msg(1) }	/* lost, or late */
	:: atomic { fb > 0 && M_TO(bag[2]) != 0 -> fail_msg(2) }	/* lost, or late */
	:: atomic { fb > 0 && M_TO(bag[3]) != 0 -> fail_msg(3) }	/* lost, or late */
	:: atomic { fb > 0 && M_TO(bag[4]) != 0 -> fail_msg(4) }	/* lost, or late */
	:: atomic { fb > 0 && M_TO(bag[5]) != 0 -> fail_msg(5) }	/* lost, or late */
	:: atomic { fb > 0 && M_TO(bag[6]) != 0 -> fail_msg(6) }	/* lost, or late */
	:: atomic { fb > 0 && M_TO(bag[7]) != 0 -> fail_msg(7) }	/* lost, or late */
	/* a watch is created: from now on it sees its key's (range's) events */
	:: atomic { wreq[0] != 0 -> wk[0] = wreq[0]; wreq[0] = 0; wev[0] = false; wok[0] = true;
#ifdef SEM
		wdel[0] = 0
#endif
		}
	:: atomic { wreq[1] != 0 -> wk[1] = wreq[1]; wreq[1] = 0; wev[1] = false; wok[1] = true;
#ifdef SEM
		wdel[1] = 0
#endif
		}
	:: atomic { wreq[2] != 0 -> wk[2] = wreq[2]; wreq[2] = 0; wev[2] = false; wok[2] = true;
#ifdef SEM
		wdel[2] = 0
#endif
		}
	od
}

/* ================================================================== */
/* leases: a deadline passes (its renewals failed); only then may etcd   */
/* expire the lease (README "Why (a) is enough", spec/lease.pml)         */

active proctype Env()
{
end_env:
	do
	:: atomic { lb > 0 && lok[0] && LOSER(0) -> lb--; lok[0] = false }
	:: atomic { lb > 0 && lok[1] && LOSER(1) -> lb--; lok[1] = false }
	:: atomic { lb > 0 && lok[2] && LOSER(2) -> lb--; lok[2] = false }
	:: atomic { cb > 0 && busy[0] && !intr[0] -> cb--; intr[0] = true }
	:: atomic { cb > 0 && busy[1] && !intr[1] -> cb--; intr[1] = true }
	:: atomic { cb > 0 && busy[2] && !intr[2] -> cb--; intr[2] = true }
	:: atomic { !lok[0] && lalive[0] -> ce = 0; end_lease(ce); ce = 0; renum(); canon() }
	:: atomic { !lok[1] && lalive[1] -> ce = 1; end_lease(ce); ce = 0; renum(); canon() }
	:: atomic { !lok[2] && lalive[2] -> ce = 2; end_lease(ce); ce = 0; renum(); canon() }
	od
}

/* ================================================================== */
/* the release queue and the worker                                    */

/* etcd_queue_release: the first free entry; ok false if the queue is full */
hidden byte qlast;	/* the entry queue_rel filled (read in the same step) */
inline queue_rel(kd, cc, nn, tt, hh, aa, ll, ok)
{
	ok = false; qi = 0;
	do
	:: qi < QN && q[qi].st == Q_FREE ->
		q[qi].st = Q_PEND; q[qi].kind = kd; q[qi].c = cc; q[qi].n = nn; q[qi].t = tt;
		q[qi].held = hh; q[qi].att = aa; q[qi].settled = 0; q[qi].late = ll;
		ok = true; qlast = qi; break
	:: qi < QN && q[qi].st != Q_FREE -> qi++
	:: qi == QN -> break
	od;
	qi = 0
}


/* an acquire of key (c, n) that was abandoned may still be applied */
#define LATE1(m,c,n)	((M_K(m) == M_ACQ || M_K(m) == M_TRY) && M_C(m) == (c) && M_N(m) == (n))
#define LATE_ACQ(c,n)	(LATE1(bag[0],c,n) || LATE1(bag[1],c,n) || LATE1(bag[2],c,n) || LATE1(bag[3],c,n) || \
						 LATE1(bag[4],c,n) || LATE1(bag[5],c,n) || LATE1(bag[6],c,n) || LATE1(bag[7],c,n))

/* start_releases: a due release goes out (compare-and-delete or revoke) */
inline w_start(e)
{
	q[e].st == Q_PEND && (q[e].kind == R_REV || q[e].t != 0) && bag[NB-1] == 0 ->
	q[e].st = Q_BUSY; q[e].att = 1;
	bag[NB-1] = MSG((q[e].kind == R_REV -> M_REVOKE : M_REL), q[e].c, q[e].n, q[e].t, NC+1+e);
	canon()
}

/* start_releases + collect_batch: both entries are due compare-and-deletes:
 * one txn, each key compared and deleted in a nested txn of its own
 * (etcd_release_batch_body); one answer for both */
#define CAD_DUE(e)	(q[e].st == Q_PEND && q[e].kind == R_DEL && q[e].t != 0)
inline w_start_batch()
{
	group && CAD_DUE(0) && CAD_DUE(1) && bag[NB-1] == 0 ->
	q[0].st = Q_BUSY; q[0].att = 1; q[1].st = Q_BUSY; q[1].att = 1;
	bag[NB-1] = MSG(M_BATCH, q[0].c, q[0].n, q[0].t, R_BATCH) | B2(q[1].c, q[1].n, q[1].t);
	canon()
}

/* start_releases / finish_resolve: a key of unknown revision is read
 * first; found: deleted by revision next; not found while its lease is in
 * use: read again once its acquire must have been applied or failed
 * (RESOLVE_SETTLE_MS: modelled as "no abandoned acquire of it is left in
 * the network"); else done */
inline w_resolve(e)
{
	q[e].st == Q_PEND && q[e].kind == R_DEL && q[e].t == 0 &&
	(!q[e].settled || !LATE_ACQ(q[e].c, q[e].n)) ->
	q[e].att = 1;
	if
	:: crev[KEY(q[e].n, q[e].c)] != 0 -> q[e].t = crev[KEY(q[e].n, q[e].c)]
	:: crev[KEY(q[e].n, q[e].c)] == 0 && IN_USE(q[e].c) && !q[e].settled -> q[e].settled = 1
	:: else -> free_q(e)
	fi
}

/* stale the worker's messages for entry e */
inline w_stale(e)
{
	i2 = 0;
	do
	:: i2 < NB -> if :: M_TO(bag[i2]) == NC+1+e || M_TO(bag[i2]) == R_BATCH -> bag[i2] = STALE(bag[i2]) :: else fi; i2++
	:: else -> break
	od;
	i2 = 0;
	canon()
}

active proctype Worker()
{
end_worker:
	do
	:: atomic { w_start(0) }
	:: atomic { w_start(1) }
	:: atomic { w_start_batch() }	/* GROUP */
	:: atomic { w_resolve(0) }
	:: atomic { w_resolve(1) }
	/* finish_release: failed or timed out: retried */
	:: atomic { q[0].st == Q_BUSY && tmo[NC] -> tmo[NC] = false; q[0].st = Q_PEND }
	:: atomic { q[1].st == Q_BUSY && tmo[NC+1] -> tmo[NC+1] = false; q[1].st = Q_PEND }
	/* finish_release_entry: given up once nobody renews its lease */
	:: atomic { q[0].st == Q_PEND && q[0].att && !IN_USE(q[0].c) -> free_q(0) }
	:: atomic { q[1].st == Q_PEND && q[1].att && !IN_USE(q[1].c) -> free_q(1) }
	/* check_deadlines (or a renewal answered "no such lease"): LOST */
	:: atomic { !lok[0] && !llost[0] && !lgone[0] -> llost[0] = true }
	:: atomic { !lok[1] && !llost[1] && !lgone[1] -> llost[1] = true }
	:: atomic { !lok[2] && !llost[2] && !lgone[2] -> llost[2] = true }
	/* the worker dies; its successor sends again what was being sent */
	:: atomic { wb > 0 && (q[0].st == Q_BUSY || q[1].st == Q_BUSY) ->
		wb--;
		e = 0;
		do
		:: e < QN ->
			if
			:: q[e].st == Q_BUSY -> q[e].st = Q_PEND; w_stale(e); tmo[NC+e] = false
			:: else
			fi;
			e++
		:: else -> break
		od;
		e = 0 }
	od
}

/* ================================================================== */
/* the backends                                                        */

#define tok	ctok[c]
#define ST	((sk == M_REL) * tok)	/* a request's token: a release's is the call's */
#define prv	cprv[c]
#define pmr	cpmr[c]

/* scripts (SCRIPT): a list of lock (L) and unlock (U) steps per client,
 * n = name; set up by cfg_read:
 *   1  C0: L0 U0 L0 U0   C1: L0 U0   C2: L0 U0
 *   2  C0: L0 U0         C1: L0 U0   C2: L0 U0
 *   3  C0: L0 U0 L0 U0   C1: L0 U0   C2: L1 L0 U0 U1
 *   4  C0: L0 U0         C1: L0 U0
 *   5  C0: L0 U0
 *   6  C0: L0 U0         C1: L1 U1
 *   7  C0: L0 U0 L0 U0   C1: L0 U0
 *   8  C0: L0 U0 L0 U0   C1: L1 U1 */
hidden byte nops[3];			/* steps per client */
hidden byte opnm[3];			/* bit op: the name of step op */
hidden byte oplk[3];			/* bit op: step op is a lock */
inline set_script()
{
	nops[0] = 2; nops[1] = 2; nops[2] = 2; opnm[0] = 0; opnm[1] = 0; opnm[2] = 0;
	oplk[0] = 1; oplk[1] = 1; oplk[2] = 1;
	if
	:: script == 1 -> nops[0] = 4; oplk[0] = 5
	:: script == 2
	:: script == 3 -> nops[0] = 4; oplk[0] = 5; nops[2] = 4; opnm[2] = 9; oplk[2] = 3
	:: script == 4 -> nops[2] = 0
	:: script == 5 -> nops[1] = 0; nops[2] = 0
	:: script == 6 -> opnm[1] = 3; nops[2] = 0
	:: script == 7 -> nops[0] = 4; oplk[0] = 5; nops[2] = 0
	:: script == 8 -> nops[0] = 4; oplk[0] = 5; opnm[1] = 3; nops[2] = 0
	:: else -> assert(false)	/* no such SCRIPT */
	fi
}
#define NOPS(c)	nops[c]
#define OPN(c,op)	((opnm[c] >> (op)) & 1)
#define OPLOCK(c,op)	(((oplk[c] >> (op)) & 1) != 0)

inline send(mm)
{
	atomic { assert(bag[NB-1] == 0); bag[NB-1] = mm; canon() }
}

/* stale every message of ours: nobody waits for their answers */
inline stale_mine()
{
	i2 = 0;
	do
	:: i2 < NB -> if :: M_TO(bag[i2]) == c+1 -> bag[i2] = STALE(bag[i2]) :: else fi; i2++
	:: else -> break
	od;
	i2 = 0;
	canon();
	tmo[c] = false; rep[c] = 0; rrev[c] = 0; rheld[c] = false; rund[c] = false
}

inline free_ent(kx)
{
	ent[kx] = 0; etok[kx] = 0
}

/* lt_release_async: hand the release to the worker and forget the entry;
 * queue full: the entry stays, owed */
inline release_async(kx, aa)
{
	att = aa || ((ent[kx] & E_OWED) && (ent[kx] & E_OATT));
	if
	:: LEASE_OK(c) ->
		queue_rel(R_DEL, c, KN(kx), etok[kx], 1, att, LATEK(kx), ok);
		if
		:: ok -> free_ent(kx)
		:: else -> ent[kx] = E_EX | E_OWED | (att -> E_OATT : 0) | (ent[kx] & E_LATE)
		fi
	:: else -> free_ent(kx)
	fi;
	att = false; ok = false
}

/* lt_settle_late (etcd_queue_settle): an acquire attempt of key k may
 * still land after its delete: the worker reads the key once more when no
 * attempt of it can be in flight (late_until; as finish_resolve does for a
 * key of unknown revision); not under a live lease: nothing to do; queue
 * full: owed, token 0 (lt_keep_owed(e, 0)) */
inline settle_entry()
{
	if
	:: LEASE_OK(c) ->
		queue_rel(R_DEL, c, n, 0, 0, 1, 0, ok);
		if
		:: ok -> q[qlast].settled = 1; qlast = 0; free_ent(k)
		:: else -> ent[k] = E_EX | E_OWED | E_OATT | E_LATE; etok[k] = 0
		fi;
		ok = false
	:: else -> free_ent(k)
	fi
}

/* lt_flush_owed */
inline flush_owed()
{
	atomic {
		kx2 = 0;
		do
		:: kx2 < NN ->
			if
			:: (ent[KEY(kx2,c)] & E_OWED) && !(ent[KEY(kx2,c)] & E_HELD) ->
				release_async(KEY(kx2,c), (ent[KEY(kx2,c)] & E_OATT) != 0)
			:: else
			fi;
			kx2++
		:: else -> break
		od;
		kx2 = 0
	}
}

/* lt_check_lost / lt_forget_lease: every entry freed, the lease given to
 * the worker for revocation (dropped if the queue is full: nobody renews
 * it, it expires) */
inline forget_lease()
{
	atomic {
		kx2 = 0;
		do
		:: kx2 < NN -> free_ent(KEY(kx2,c)); kx2++
		:: else -> break
		od;
		kx2 = 0;
		lgone[c] = true; cn[c] = 0;
		queue_rel(R_REV, c, 0, 0, 0, 1, 0, ok);
		ok = false
	}
}

/* etcd_reclaim_release */
#define RC_NONE	0
#define RC_TAKEN 1
#define RC_WAIT	2
inline reclaim(nn)
{
	r = RC_NONE; qi = 0;
	do
	:: qi < QN ->
		if
		:: q[qi].st != Q_FREE && q[qi].kind == R_DEL && q[qi].c == c && q[qi].n == nn ->
			if
			:: q[qi].st == Q_PEND && q[qi].t == 0 && q[qi].settled ->
				/* the late attempt may still land: the new entry watches for it */
				if
				:: !MUT(MU_LATE_RESEND) -> ent[KEY(nn,c)] = ent[KEY(nn,c)] | E_LATE
				:: else
				fi;
				free_q(qi)
			:: q[qi].st == Q_PEND && q[qi].held && !q[qi].att ->
				if
				:: q[qi].late -> ent[KEY(nn,c)] = ent[KEY(nn,c)] | E_LATE	/* inherits late_until */
				:: else
				fi;
				tok = q[qi].t; free_q(qi); r = RC_TAKEN
			:: else -> r = RC_WAIT
			fi;
			break
		:: else -> qi++
		fi
	:: else -> break
	od;
	qi = 0
}
#define PENDING1(e,nn)	(q[e].st != Q_FREE && q[e].kind == R_DEL && q[e].c == c && q[e].n == (nn))
#define PENDING(nn)	(PENDING1(0,nn) || PENDING1(1,nn))

/* wait for our request's reply.  fail: the request errored (etcd
 * unreachable once the gateway's failover gave up) or an interrupt
 * (cancel, statement_timeout, the lock's own timeout) ended the call.  A
 * lost reply is resent (failover repeats the same body) as long as the
 * call goes on. */
inline await()
{
	do
	:: rep[c] != 0 -> xre = rep[c]; xrev = rrev[c]; xh = rheld[c]; xu = rund[c];
		rep[c] = 0; rrev[c] = 0; rheld[c] = false; rund[c] = false; break
	:: tmo[c] -> tmo[c] = false;
		/* lt_note_late: an acquire resent after an attempt that may
		 * have reached etcd (etcd_gateway_late_resends) */
		if
		:: sk != M_REL && !MUT(MU_LATE_RESEND) -> ent[k] = ent[k] | E_LATE
		:: else
		fi;
		send(MSG(sk, c, n, ST, c+1))	/* resent */
	:: intr[c] -> intr[c] = false; stale_mine(); fail = true; break
	od
}

/* send request (sk, n, st) and wait for its answer */
inline request()
{
	fail = false;
	send(MSG(sk, c, n, ST, c+1));
	await()
}

/* the admission: the lock function returns success */
inline admit()
{
	ent[k] = E_EX | E_HELD | (ent[k] & E_LATE); etok[k] = tok; cn[c] = 0;
	/* FIFO: our key exists with our token and fewer than NEED blocking
	 * keys are older (none for a lock, < N for permits) */
	nblk = 0; d = 0;
	do
	:: d < NC ->
		if
		:: BLOCKS(c,d,n) && crev[KEY(n,d)] != 0 && crev[KEY(n,d)] < tok -> nblk++
		:: else
		fi;
		d++
	:: else -> break
	od;
	assert(tok != 0 && crev[k] == tok && nblk < NEED);	/* FIFO */
	assert(!BAD);		/* mutual exclusion, N permits */
	nblk = 0; d = 0
}

/* read_pred_ex: our key, our predecessor (the newest blocking key older
 * than ours), the oldest blocking key older than ours (for permits: how
 * many are older, which) -- one linearizable read */
inline read_pred()
{
	my = crev[k]; pk = NONE; prv = 0; ok_ = NONE; nblk = 0; d = 0;
#ifdef SEM
	ahead = 0;
#endif
	do
	:: d < NC ->
		if
		:: BLOCKS(c,d,n) && crev[KEY(n,d)] != 0 && crev[KEY(n,d)] < tok ->
			if
			:: pk == NONE || crev[KEY(n,d)] >= prv -> pk = KEY(n,d); prv = crev[pk]
			:: else
			fi;
			if
			:: ok_ == NONE || crev[KEY(n,d)] < crev[ok_] -> ok_ = KEY(n,d)
			:: else
			fi;
#ifdef SEM
			ahead = ahead | (1 << d);
#endif
			nblk++
		:: else
		fi;
		d++
	:: else -> break
	od;
	/* pred_oldest: the predecessor is the oldest blocking key, the only
	 * one of its revision */
	pold = (pk != NONE && pk == ok_);
	d = 0;
	do
	:: d < NC ->
		if
		:: pold && KEY(n,d) != pk && BLOCKS(c,d,n) && crev[KEY(n,d)] == prv -> pold = false
		:: else
		fi;
		d++
	:: else -> break
	od;
	d = 0; ok_ = 0;
#ifdef SEM
	nah = nblk;
	if
	:: pk != NONE -> pmr = mrev[pk]
	:: else -> pmr = 0
	fi;
#endif
	nblk = 0
}

inline close_watch()
{
	wk[c] = 0; wev[c] = false;
#ifdef SEM
	wdel[c] = 0;
#endif
}

/* MUT_GRANT_AFTER_EXPIRY (etcd #11456): no deadline check at the grant */
#define GRANT_OK	(MUT(MU_GRANT_AFTER_EXPIRY) || LEASE_OK(c))


#define W_HELD	1
#define W_TIMEOUT 2
#define W_ERR	3
#define WR_DELETED 1
#define WR_BROKEN 3

/* which calls each client makes: WAITS 1 lock, 2 try-lock, 3 either;
 * UNLOCKS 1 etcd_unlock, 2 the transaction's end, 3 either */
#define WAITS(c)	waits[c]
#define UNLOCKS(c)	unlocks[c]

/* A client runs its script; each step is one atomic block that yields
 * only where the backend waits: for a request's reply, a watch, the worker
 * (lt_wait_queued), or a free slot in the network.  Between steps it
 * holds what it holds while the others run. */
proctype Client(byte c)
{
	byte op, n, k, pk, wr, sk;
	bool wt, held, sent, waited, pold, fail, dl;
#ifdef SEM
	byte nah, ahead;
#endif

	do
	:: atomic { op < NOPS(c) && !lgone[c] ->
		n = OPN(c, op); k = KEY(n, c); busy[c] = true;
		if
		:: OPLOCK(c, op) ->
			/* ---- lt_acquire ---- */
			/* lt_begin_acquire: lt_check_lost, lt_flush_owed */
			if
			:: !LEASE_OK(c) -> forget_lease(); goto next
			:: else
			fi;
			flush_owed();
			/* lt_check_entry: a release that may have been sent and is owed */
			if
			:: (ent[k] & E_OWED) && (ent[k] & E_OATT) -> goto next
			:: else
			fi;
			ent[k] = ent[k] | E_EX; cn[c] = n+1;	/* lt_enter */
			if
			:: (WAITS(c) & 1) -> wt = true
			:: (WAITS(c) & 2) -> wt = false		/* try-lock */
			fi;
			sent = false; held = false; tok = 0;
			/* lt_wait_queued: a queued release of our key is taken back or waited for */
wq:			reclaim(n);
			if
			:: r == RC_TAKEN ->
				r = RC_NONE;
				if
				:: LEASE_OK(c) -> held = true; goto won
				:: else -> goto catch
				fi
			:: r == RC_WAIT ->
				r = RC_NONE;
				if
				:: !PENDING(n) -> goto wq
				:: intr[c] -> intr[c] = false; goto catch	/* deadline, 2 x request_timeout, cancel */
				fi
			:: else
			fi;
			sent = true;
			if
			:: wt ->
				/* etcd_lock_acquire: the acquire txn */
				sk = M_ACQ; request();
				if
				:: fail || xre == R_ERR -> goto catch
				:: else
				fi;
				tok = xrev; held = xh
			:: else ->
				/* etcd_lock_acquire(try_only) */
				sk = M_TRY; request();
				if
				:: fail || xre == R_ERR -> goto catch
				:: else
				fi;
				if
				:: xu ->
					/* undecided: put our key, then check whether a lock key is older */
					sk = M_ACQ; request();
					if
					:: fail || xre == R_ERR -> goto catch
					:: else
					fi;
					if
					:: !xh ->
						/* etcd_lock_first */
						if
						:: intr[c] -> intr[c] = false; goto catch
						:: else
						fi;
						tok = xrev; read_pred(); tok = 0;
#ifdef SEM
						xh = (nah < PERMITS); nah = 0; ahead = 0; pmr = 0;
#else
						xh = (pk == NONE);
#endif
						pk = 0; prv = 0; pold = false;
						if
						:: my != xrev -> my = 0; goto catch	/* our place disappeared */
						:: else -> my = 0
						fi
					:: else
					fi
				:: else
				fi;
				tok = xrev; held = xh
			fi;
			xre = 0; xrev = 0; xh = false; xu = false;
			if
			:: !held && wt ->
				/* ---- etcd_lock_wait / wait_loop ---- */
				waited = false; dl = false;
wl:				if
				:: !LEASE_OK(c) -> wres = W_ERR; goto wdone	/* expired while it waited */
				:: else
				fi;
				if
				:: intr[c] -> intr[c] = false; wres = W_ERR; goto wdone		/* the read is interrupted */
				:: else
				fi;
				read_pred();
				if
				:: my != tok -> wres = W_ERR; goto wdone	/* check_mine */
				:: else
				fi;
#ifdef SEM
				if
				:: nah < PERMITS ->
					if
					:: waited -> send(MSG(M_TOUCH, c, n, tok, 0))	/* etcd_lock_touch */
					:: else
					fi;
					wres = W_HELD; goto wdone
				:: else
				fi;
#else
				if
				:: pk == NONE -> wres = W_HELD; goto wdone
				:: else
				fi;
#endif
				if
				:: dl -> wres = W_TIMEOUT; goto wdone		/* the deadline passed */
				:: else
				fi;
				waited = true; wr = 0;
#ifdef SEM
				if
				:: nah == PERMITS ->
					/* sem_wait_once, first waiter: watch the range for deletions */
					if
					:: wfb > 0 -> wfb--; wr = WR_BROKEN
					:: true ->
						wreq[c] = NK+1+n;		/* etcd_watch_open_ex: the create request */
						if
						:: wok[c] -> wok[c] = false		/* etcd answered "created" */
						:: intr[c] -> intr[c] = false; wreq[c] = 0; wok[c] = false; close_watch(); wres = W_ERR; goto wdone
						fi;
						/* confirm (a deletion before the watch existed), etcd_watch_rearm */
						if
						:: intr[c] -> intr[c] = false; close_watch(); wres = W_ERR; goto wdone
						:: else
						fi;
						read_pred(); wdel[c] = 0;
						if
						:: my != tok -> close_watch(); wres = W_ERR; goto wdone
						:: nah < PERMITS -> held = true
						:: nah == PERMITS ->
							if
							:: wdel[c] != 0 -> wr = WR_DELETED;
								if
								:: GRANT_OK -> held = ((wdel[c] & ahead) != 0)
								:: else
								fi
							:: wfb > 0 -> wfb--; wr = WR_BROKEN	/* broken, or the 1 s safety net */
							:: intr[c] -> intr[c] = false;
								if
								:: close_watch(); wres = W_ERR; goto wdone
								:: dl = true
								fi
							fi
						:: nah > PERMITS -> wr = WR_DELETED	/* the queue moved */
						fi;
						close_watch()
					fi
				:: else ->
					/* a waiter further back: its predecessor, any change */
					if
					:: wfb > 0 -> wfb--; wr = WR_BROKEN
					:: true ->
						wreq[c] = pk+1;
						if
						:: wok[c] -> wok[c] = false		/* etcd answered "created" */
						:: intr[c] -> intr[c] = false; wreq[c] = 0; wok[c] = false; close_watch(); wres = W_ERR; goto wdone
						fi;
						if
						:: intr[c] -> intr[c] = false; close_watch(); wres = W_ERR; goto wdone
						:: else
						fi;
						if
						:: crev[pk] == prv && mrev[pk] == pmr ->	/* pred_unchanged */
							if
							:: wev[c] -> wr = WR_DELETED
							:: wfb > 0 -> wfb--; wr = WR_BROKEN
							:: intr[c] -> intr[c] = false;
								if
								:: close_watch(); wres = W_ERR; goto wdone
								:: dl = true
								fi
							fi
						:: else -> wr = WR_DELETED
						fi;
						close_watch()
					fi
				fi;
				pk = 0; prv = 0; pold = false; nah = 0; ahead = 0; pmr = 0;
				if
				:: held -> send(MSG(M_TOUCH, c, n, tok, 0)); wres = W_HELD; goto wdone
				:: else
				fi;
#else
				/* etcd_watch_open: watch the predecessor, then re-read it */
				if
				:: wfb > 0 -> wfb--; wr = WR_BROKEN		/* no watch */
				:: true ->
					wreq[c] = pk+1;		/* etcd_watch_open: the create request */
					if
					:: wok[c] -> wok[c] = false		/* etcd answered "created" */
					:: intr[c] -> intr[c] = false; wreq[c] = 0; wok[c] = false; close_watch(); wres = W_ERR; goto wdone
					fi;
					if
					:: intr[c] -> intr[c] = false; close_watch(); wres = W_ERR; goto wdone
					:: else
					fi;
					if
					:: crev[pk] == prv ->	/* pred_still_there */
						if
						:: wev[c] -> wr = WR_DELETED
						:: wfb > 0 -> wfb--; wr = WR_BROKEN	/* broken, or the 1 s safety net */
						:: intr[c] -> intr[c] = false;
							if
							:: close_watch(); wres = W_ERR; goto wdone	/* cancel */
							:: dl = true		/* the lock's deadline: read once more */
							fi
						fi
					:: else -> wr = WR_DELETED
					fi;
					close_watch()
				fi;
				/* handoff without a read */
				if
				:: wr == WR_DELETED && (pold || MUT(MU_HANDOFF_NOT_OLDEST)) && GRANT_OK ->
					wres = W_HELD; goto wdone
				:: else
				fi;
				pk = 0; prv = 0; pold = false;
#endif
				wr = 0;
				goto wl;
wdone:			my = 0; pk = 0; prv = 0; pold = false; wr = 0; waited = false; dl = false;
#ifdef SEM
				nah = 0; ahead = 0; pmr = 0;
#endif
				if
				:: wres == W_HELD -> wres = 0; held = true
				:: wres == W_ERR -> wres = 0; goto catch
				:: wres == W_TIMEOUT ->
					/* give our place up (etcd_lock_release, its own time bound) */
					wres = 0;
					sk = M_REL; request();
					if
					:: !fail -> sent = false
					:: else
					fi;
					xre = 0; xrev = 0; xh = false; xu = false;
					goto catch		/* lt_raise_timeout */
				fi
			:: else
			fi;
			if
			:: !held && !wt && tok > 0 ->
				/* a try found our key, not as the holder: give it up */
				queue_rel(R_DEL, c, n, tok, 0, 1, LATEK(k), ok);
				if
				:: !ok -> ent[k] = ent[k] | E_OWED | E_OATT; etok[k] = tok	/* lt_keep_owed */
				:: else
				fi;
				ok = false
			:: else
			fi;
			if
			:: !held ->
				/* an attempt of this call may still land: the worker reads
				 * the key once more (lt_settle_late) */
				if
				:: LATEK(k) && tok == 0 -> settle_entry()
				:: else
				fi;
				/* lt_acquire: forgotten unless kept owed (LT_OWED_SENT);
				 * MUT_FORGET_OWED_TRY, the defect fixed in 8ac5c03: the owed
				 * entry freed all the same */
				if
				:: !(ent[k] & E_OWED) || MUT(MU_FORGET_OWED_TRY) -> free_ent(k)
				:: else
				fi;
				goto next
			:: else
			fi;
won:		/* lt_hold; counted, then the deadline checked again */
			if
			:: GRANT_OK -> admit()
			:: else -> forget_lease()		/* lt_check_lost: ERROR */
			fi;
			goto next;
catch:		/* PG_CATCH of lt_acquire: our key may exist: the worker removes it */
			if
			:: !wt && MUT(MU_DROP_LOST_TRYLOCK) -> sent = false
			:: else
			fi;
			if
			:: sent ->
				queue_rel(R_DEL, c, n, tok, 0, 1, LATEK(k), ok);
				if
				:: !ok && !(ent[k] & E_HELD) -> ent[k] = ent[k] | E_OWED | E_OATT; etok[k] = tok
				:: else
				fi
			:: !sent && LATEK(k) && !(ent[k] & (E_HELD | E_OWED)) -> settle_entry()	/* lt_settle_late */
			:: else
			fi;
			if
			:: !(ent[k] & E_HELD) && !(ent[k] & E_OWED) -> free_ent(k)
			:: else
			fi
		:: else ->
			/* ---- unlock: etcd_release (lt_release_now) or the end of the
			 * transaction (lt_end_xact -> lt_release_async) ---- */
			if
			:: !(ent[k] & E_HELD) -> skip		/* not held: nothing to do */
			:: else ->
				if
				:: (UNLOCKS(c) & 1) ->
					if
					:: !LEASE_OK(c) -> forget_lease()	/* lt_check_lost: ERROR */
					:: else ->
						ent[k] = E_EX | (ent[k] & E_LATE); tok = etok[k];	/* never relied on once sent */
						sk = M_REL; request();
						if
						:: !fail && !LATEK(k) -> free_ent(k)
						:: !fail && LATEK(k) -> settle_entry()	/* lt_settle_late */
						:: else ->
							if
							:: MUT(MU_FORGET_TIMED_OUT_RELEASE) -> free_ent(k)
							:: else -> release_async(k, true)	/* attempted: never taken back */
							fi
						fi
					fi
				:: (UNLOCKS(c) & 2) -> ent[k] = E_EX | (ent[k] & E_LATE); release_async(k, false)
				fi
			fi
		fi;
next:	op++; k = 0; n = 0; wt = false; sk = 0; fail = false; tok = 0; held = false;
		sent = false; ok = false; xre = 0; xrev = 0; xh = false; xu = false;
		cn[c] = 0; busy[c] = false; intr[c] = false }
	:: op >= NOPS(c) || lgone[c] -> break
	od;
	sdone[c] = true;
	/* idle: the session ends a transaction now and then (lt_xact_cb) */
end_idle:
	do
	:: atomic { !lgone[c] && ((ent[KEY(0,c)] | ent[KEY(1,c)]) & E_OWED) &&
		(q[0].st == Q_FREE || q[1].st == Q_FREE || !LEASE_OK(c)) -> flush_owed() }
	od
}

/* cfg_read: the configuration, defaults from the -D options, overridden
 * by pan's environment (see the top) */
init {
	atomic {
		fb = FAULTS; lb = LOSSES; wfb = WFAULTS; wb = WRESTARTS; cb = GIVEUPS;
		waits[0] = WAITS0; waits[1] = WAITS1; waits[2] = WAITS2;
		unlocks[0] = UNLOCKS0; unlocks[1] = UNLOCKS1; unlocks[2] = UNLOCKS2;
		mut = (MUT_FORGET_TIMED_OUT_RELEASE -> MU_FORGET_TIMED_OUT_RELEASE : 0) |
			(MUT_DROP_LOST_TRYLOCK -> MU_DROP_LOST_TRYLOCK : 0) |
			(MUT_TRUST_WORKER -> MU_TRUST_WORKER : 0) |
			(MUT_HANDOFF_NOT_OLDEST -> MU_HANDOFF_NOT_OLDEST : 0) |
			(MUT_RELEASE_NO_COMPARE -> MU_RELEASE_NO_COMPARE : 0) |
			(MUT_GRANT_AFTER_EXPIRY -> MU_GRANT_AFTER_EXPIRY : 0) |
			(MUT_BATCH_LOST_REPLY -> MU_BATCH_LOST_REPLY : 0) |
			(MUT_FORGET_OWED_TRY -> MU_FORGET_OWED_TRY : 0) |
			(MUT_LATE_RESEND -> MU_LATE_RESEND : 0);
		c_code {
			now.fb = cfg_env("FAULTS", now.fb);
			now.lb = cfg_env("LOSSES", now.lb);
			now.wfb = cfg_env("WFAULTS", now.wfb);
			now.wb = cfg_env("WRESTARTS", now.wb);
			now.cb = cfg_env("GIVEUPS", now.cb);
			loser = cfg_env("LOSER_C", loser);
			script = cfg_env("SCRIPT", script);
			group = cfg_env("GROUP", group) != 0;
			lostreply = cfg_env("LOST_REPLY_ONLY", lostreply) != 0;
			waits[0] = cfg_env("WAITS0", waits[0]); waits[1] = cfg_env("WAITS1", waits[1]);
			waits[2] = cfg_env("WAITS2", waits[2]);
			unlocks[0] = cfg_env("UNLOCKS0", unlocks[0]); unlocks[1] = cfg_env("UNLOCKS1", unlocks[1]);
			unlocks[2] = cfg_env("UNLOCKS2", unlocks[2]);
			if (cfg_env("MUT_FORGET_TIMED_OUT_RELEASE", 0)) mut |= MU_FORGET_TIMED_OUT_RELEASE;
			if (cfg_env("MUT_DROP_LOST_TRYLOCK", 0)) mut |= MU_DROP_LOST_TRYLOCK;
			if (cfg_env("MUT_TRUST_WORKER", 0)) mut |= MU_TRUST_WORKER;
			if (cfg_env("MUT_HANDOFF_NOT_OLDEST", 0)) mut |= MU_HANDOFF_NOT_OLDEST;
			if (cfg_env("MUT_RELEASE_NO_COMPARE", 0)) mut |= MU_RELEASE_NO_COMPARE;
			if (cfg_env("MUT_GRANT_AFTER_EXPIRY", 0)) mut |= MU_GRANT_AFTER_EXPIRY;
			if (cfg_env("MUT_BATCH_LOST_REPLY", 0)) mut |= MU_BATCH_LOST_REPLY;
			if (cfg_env("MUT_FORGET_OWED_TRY", 0)) mut |= MU_FORGET_OWED_TRY;
			if (cfg_env("MUT_LATE_RESEND", 0)) mut |= MU_LATE_RESEND;
		};
		set_script();
		run Client(0); run Client(1); run Client(2)
	}
}
