/*
 * lease.pml: leases with real (abstract) time, checked with SPIN.  This is
 * the part spec/lock.pml takes as given: "a backend relies on its lease
 * only while etcd still has it" (src/README.md, "Why (a) is enough").
 *
 * Instance A runs backends C0, C1 (NBACK=1: C0 only) and their worker; C2 is a backend of
 * instance B whose lease never fails (B's worker is not modelled).  All
 * contend for one lock name with one-request try-locks (the lock algorithm
 * itself, and its faults, are spec/lock.pml's).
 *
 *   time       Tick: a clock `now` of TMAX ticks (two lease periods); every
 *              time below is absolute.  TTL = 4 ticks, margin 1 tick:
 *              deadline = send time + 3 (LEASE_DEADLINE).
 *   etcd       grant (a second grant of the same ID answers "exists"),
 *              keepalive (renews to TTL; answers TTL 0 if the lease is
 *              gone), revoke; a lease expires TTL after its last renewal
 *              reached etcd, and its key goes with it.
 *   network    grants, keepalives and revokes are messages: lost, or late
 *              (applied after their sender gave up on them); a partition
 *              of instance A holds all of them for as long as it lasts.
 *   instance A lt_ensure_lease (grant, resent by the gateway with the same
 *              ID; the deadline counts from the first send), the worker's
 *              keepalives (deadline from the send time of the renewal that
 *              was answered, never extended once passed: apply_renewal),
 *              check_deadlines, the backend's own check (lt_lease_lost),
 *              lt_forget_lease (revoke queued), and one crash restart: the
 *              backends die, shared memory is lost, the new worker revokes
 *              every lease in the lease file (record_leases /
 *              revoke_previous_leases, granting_id included).
 */

#ifndef TMAX
#define TMAX	8			/* two lease periods */
#endif
#define TTL		4
#define DL		3			/* TTL - margin: a deadline is send time + DL */
#define NL		4			/* leases of A: client c, generation g: l = 2c + g */
#define NONE	255
#ifndef FAULTS
#define FAULTS	2
#endif
#ifndef CRASHES
#define CRASHES	1
#endif
#ifndef PARTS
#define PARTS	1
#endif
#ifndef OPS
#define OPS		2			/* lock calls per backend of A */
#endif
#ifndef NBACK
#define NBACK	2			/* backends of instance A (1: C0 only) */
#endif

/* etcd */
byte now;
byte eexp[NL];				/* when etcd expires the lease; 0: no such lease */
byte key[NL+1];				/* the lock name's key of lease l (l = NL: C2's), 0/1 */

/* network: per lease and kind, the current attempt in flight (its sender
 * waits for it) and a late one (nobody waits; several late copies of one
 * request are as the last of them to arrive, so one is kept) */
bool gcur[NL], glate[NL];	/* grants */
bool kacur[NL], kalate[NL];	/* keepalives */
bool revcur[NL], revlate[NL];	/* revokes */
byte fb = FAULTS;
bool part;					/* instance A is partitioned */
byte pb = PARTS;

/* instance A's shared memory: one slot per backend */
#define S_NONE	0
#define S_LIVE	1
#define S_LOST	2
byte sst[2];				/* slot state */
byte slease[2];				/* its lease (NONE: none) */
byte sdl[2];				/* its deadline (LEASE_DEADLINE) */
byte sgrant[2];				/* granting_id (NONE: none) */
bool kafl[2];				/* a renewal in flight (w_ka_inflight) */
byte kalease[2];			/* ... of this lease (req->lease_id) */
byte kadl[2];				/* ... the deadline it sets if answered: its send time + DL */
bool kadue[2];				/* a renewal may be sent this tick (one per period) */
bool kaans[2];				/* its answer came: ok ... */
bool kagone[2];				/* ... with TTL 0: the lease is gone */
bool katmo[2];				/* ... no answer: the request failed or is late */
/* the release queue: revokes only */
byte rq[2];					/* lease to revoke + 1, 0: free */
bool rbusy[2];
bool rans[2];
bool rtmo[2];
byte cb = CRASHES;
bool dead;					/* A's backends died (crash); the new worker runs */

/* backends */
byte glease[3];				/* the lease a backend uses (NONE: none) */
bool gdead[3];				/* lt_dead: the lease counted lost, for good */
byte gdl[3];				/* deadline of a grant in flight: first send + DL */
bool gans[3];				/* grant answered */
bool gtmo[3];				/* grant failed / late */
bool held[3];				/* the lock function returned success (ghost) */
byte ops[3];

#ifdef MUT_TRUST_WORKER
#define LEASE_OK(c)	(glease[c] != NONE && !gdead[c] && sst[c] == S_LIVE && slease[c] == glease[c])
#else
#define LEASE_OK(c)	(glease[c] != NONE && !gdead[c] && sst[c] == S_LIVE && slease[c] == glease[c] && now < sdl[c])
#endif
#define RELY(c)	(held[c] && ((c) == 2 || (!dead && LEASE_OK(c))))
#define BAD	((RELY(0) && RELY(1)) || (RELY(0) && RELY(2)) || (RELY(1) && RELY(2)))
#define KEYL(c)	(((c) == 2) -> NL : glease[c])
#define RANGE_EMPTY	(key[0] + key[1] + key[2] + key[3] + key[4] == 0)
/* a key its owner holds */
#define OWNS(l)	(!dead && glease[(l)/2] == (l) && held[(l)/2])


/* ---- time ---- */
#define ALIVE(l)	(eexp[l] > now)		/* etcd has lease l */

active proctype Tick()
{
	byte l;
end_tick:
	do
	:: d_step { now < TMAX ->
		now++;
		l = 0;
		do
		:: l < NL ->
			if
			:: eexp[l] != 0 && eexp[l] <= now -> eexp[l] = 0; key[l] = 0	/* expired, and its key */
			:: else
			fi;
			l++
		:: else -> break
		od;
		l = 0;
		kadue[0] = true; kadue[1] = true;		/* one renewal per period */
		/* a backend relies on its lease only while etcd has it */
		assert(!(held[0] && !dead && LEASE_OK(0)) || ALIVE(glease[0]));
		assert(!(held[1] && !dead && LEASE_OK(1)) || ALIVE(glease[1]))
	}
	od
}

/* At the end (time stopped, nothing left to do): no key outlives its use
 * while its lease is kept alive -- every key left is held, or its lease is
 * renewed by nobody (no LIVE slot), so it expires. */
#define RENEWED(l)	(!dead && sst[(l)/2] == S_LIVE && slease[(l)/2] == (l))
#define GONE(l)	(key[l] == 0 || OWNS(l) || !RENEWED(l))
active proctype Final()
{
end_final:
	timeout -> assert(GONE(0) && GONE(1) && GONE(2) && GONE(3) && (key[NL] == 0 || held[2]))
}

/* ---- etcd and the network ---- */
active proctype Etcd()
{
	byte l;
end_etcd:
	do
	/* a grant: the lease exists from now on (a second one: "exists") */
	:: atomic { gcur[0] && !part -> gcur[0] = false;
		if :: !ALIVE(0) -> eexp[0] = now + TTL :: else fi; gans[0] = true }
	:: atomic { glate[0] && !part -> glate[0] = false;
		if :: !ALIVE(0) -> eexp[0] = now + TTL :: else fi }
	:: atomic { gcur[1] && !part -> gcur[1] = false;
		if :: !ALIVE(1) -> eexp[1] = now + TTL :: else fi; gans[0] = true }
	:: atomic { glate[1] && !part -> glate[1] = false;
		if :: !ALIVE(1) -> eexp[1] = now + TTL :: else fi }
	:: atomic { gcur[2] && !part -> gcur[2] = false;
		if :: !ALIVE(2) -> eexp[2] = now + TTL :: else fi; gans[1] = true }
	:: atomic { glate[2] && !part -> glate[2] = false;
		if :: !ALIVE(2) -> eexp[2] = now + TTL :: else fi }
	:: atomic { gcur[3] && !part -> gcur[3] = false;
		if :: !ALIVE(3) -> eexp[3] = now + TTL :: else fi; gans[1] = true }
	:: atomic { glate[3] && !part -> glate[3] = false;
		if :: !ALIVE(3) -> eexp[3] = now + TTL :: else fi }
	/* a renewal: the lease lives TTL from now on, if it still exists */
	:: atomic { kacur[0] && !part -> kacur[0] = false; kaans[0] = true; kagone[0] = !ALIVE(0);
		if :: ALIVE(0) -> eexp[0] = now + TTL :: else fi }
	:: atomic { kalate[0] && !part -> kalate[0] = false;
		if :: ALIVE(0) -> eexp[0] = now + TTL :: else fi }
	:: atomic { kacur[1] && !part -> kacur[1] = false; kaans[0] = true; kagone[0] = !ALIVE(1);
		if :: ALIVE(1) -> eexp[1] = now + TTL :: else fi }
	:: atomic { kalate[1] && !part -> kalate[1] = false;
		if :: ALIVE(1) -> eexp[1] = now + TTL :: else fi }
	:: atomic { kacur[2] && !part -> kacur[2] = false; kaans[1] = true; kagone[1] = !ALIVE(2);
		if :: ALIVE(2) -> eexp[2] = now + TTL :: else fi }
	:: atomic { kalate[2] && !part -> kalate[2] = false;
		if :: ALIVE(2) -> eexp[2] = now + TTL :: else fi }
	:: atomic { kacur[3] && !part -> kacur[3] = false; kaans[1] = true; kagone[1] = !ALIVE(3);
		if :: ALIVE(3) -> eexp[3] = now + TTL :: else fi }
	:: atomic { kalate[3] && !part -> kalate[3] = false;
		if :: ALIVE(3) -> eexp[3] = now + TTL :: else fi }
	/* a revoke */
	:: atomic { revcur[0] && !part -> revcur[0] = false; eexp[0] = 0; key[0] = 0; rans[0] = rans[0] || (rq[0] == 1); rans[1] = rans[1] || (rq[1] == 1) }
	:: atomic { revlate[0] && !part -> revlate[0] = false; eexp[0] = 0; key[0] = 0 }
	:: atomic { revcur[1] && !part -> revcur[1] = false; eexp[1] = 0; key[1] = 0; rans[0] = rans[0] || (rq[0] == 2); rans[1] = rans[1] || (rq[1] == 2) }
	:: atomic { revlate[1] && !part -> revlate[1] = false; eexp[1] = 0; key[1] = 0 }
	:: atomic { revcur[2] && !part -> revcur[2] = false; eexp[2] = 0; key[2] = 0; rans[0] = rans[0] || (rq[0] == 3); rans[1] = rans[1] || (rq[1] == 3) }
	:: atomic { revlate[2] && !part -> revlate[2] = false; eexp[2] = 0; key[2] = 0 }
	:: atomic { revcur[3] && !part -> revcur[3] = false; eexp[3] = 0; key[3] = 0; rans[0] = rans[0] || (rq[0] == 4); rans[1] = rans[1] || (rq[1] == 4) }
	:: atomic { revlate[3] && !part -> revlate[3] = false; eexp[3] = 0; key[3] = 0 }
	/* lost, or late: its sender stops waiting (no fault counted while partitioned) */
	:: atomic { gcur[0] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		gcur[0] = false; gtmo[0] = true;
		if :: skip :: glate[0] = true fi }
	:: atomic { kacur[0] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		kacur[0] = false; katmo[0] = true;
		if :: skip :: kalate[0] = true fi }
	:: atomic { revcur[0] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		revcur[0] = false; rtmo[0] = rtmo[0] || (rq[0] == 1); rtmo[1] = rtmo[1] || (rq[1] == 1);
		if :: skip :: revlate[0] = true fi }
	:: atomic { gcur[1] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		gcur[1] = false; gtmo[0] = true;
		if :: skip :: glate[1] = true fi }
	:: atomic { kacur[1] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		kacur[1] = false; katmo[0] = true;
		if :: skip :: kalate[1] = true fi }
	:: atomic { revcur[1] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		revcur[1] = false; rtmo[0] = rtmo[0] || (rq[0] == 2); rtmo[1] = rtmo[1] || (rq[1] == 2);
		if :: skip :: revlate[1] = true fi }
	:: atomic { gcur[2] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		gcur[2] = false; gtmo[1] = true;
		if :: skip :: glate[2] = true fi }
	:: atomic { kacur[2] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		kacur[2] = false; katmo[1] = true;
		if :: skip :: kalate[2] = true fi }
	:: atomic { revcur[2] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		revcur[2] = false; rtmo[0] = rtmo[0] || (rq[0] == 3); rtmo[1] = rtmo[1] || (rq[1] == 3);
		if :: skip :: revlate[2] = true fi }
	:: atomic { gcur[3] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		gcur[3] = false; gtmo[1] = true;
		if :: skip :: glate[3] = true fi }
	:: atomic { kacur[3] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		kacur[3] = false; katmo[1] = true;
		if :: skip :: kalate[3] = true fi }
	:: atomic { revcur[3] && (fb > 0 || part) -> if :: !part -> fb-- :: else fi;
		revcur[3] = false; rtmo[0] = rtmo[0] || (rq[0] == 4); rtmo[1] = rtmo[1] || (rq[1] == 4);
		if :: skip :: revlate[3] = true fi }
	:: atomic { pb > 0 && !part -> pb--; part = true }
	:: atomic { part -> part = false }
	od
}

/* ---- instance A's worker ---- */
inline queue_revoke(l)
{
	if
	:: rq[0] == 0 -> rq[0] = l+1
	:: rq[0] != 0 && rq[1] == 0 -> rq[1] = l+1
	:: else				/* queue full: dropped; nobody renews it: it expires */
	fi
}

/* apply_renewal: the deadline counts from the send time of the renewal
 * answered; a passed deadline is never extended */
inline apply_renewal(c)
{
	kafl[c] = false;
	if
	:: sst[c] == S_LIVE && slease[c] == kalease[c] && kaans[c] && !kagone[c] && now < sdl[c] ->
		if :: kadl[c] > sdl[c] -> sdl[c] = kadl[c] :: else fi
	:: sst[c] == S_LIVE && slease[c] == kalease[c] && kaans[c] && (kagone[c] || now >= sdl[c]) -> sst[c] = S_LOST
	:: else
	fi;
	kaans[c] = false; kagone[c] = false; katmo[c] = false; kadl[c] = 0; kalease[c] = 0
}

active proctype Worker()
{
	byte c, i;
end_worker:
	do
	/* check_deadlines */
	:: atomic { sst[0] == S_LIVE && now >= sdl[0] -> sst[0] = S_LOST }
	:: atomic { sst[1] == S_LIVE && now >= sdl[1] -> sst[1] = S_LOST }
	/* start_keepalives: at most one per period, none once the deadline passed */
	:: atomic { sst[0] == S_LIVE && now < sdl[0] && !kafl[0] && kadue[0] ->
		kafl[0] = true; kadue[0] = false; kadl[0] = now + DL; kalease[0] = slease[0];
		kacur[slease[0]] = true }
	:: atomic { sst[1] == S_LIVE && now < sdl[1] && !kafl[1] && kadue[1] ->
		kafl[1] = true; kadue[1] = false; kadl[1] = now + DL; kalease[1] = slease[1];
		kacur[slease[1]] = true }
	/* finish_keepalive */
	:: atomic { kafl[0] && (kaans[0] || katmo[0]) -> apply_renewal(0) }
	:: atomic { kafl[1] && (kaans[1] || katmo[1]) -> apply_renewal(1) }
	/* start_releases / finish_release: the revokes */
	:: atomic { rq[0] != 0 && !rbusy[0] ->
		rbusy[0] = true; revcur[rq[0]-1] = true }
	:: atomic { rq[1] != 0 && !rbusy[1] ->
		rbusy[1] = true; revcur[rq[1]-1] = true }
	:: atomic { rbusy[0] && rans[0] -> rq[0] = 0; rbusy[0] = false; rans[0] = false; rtmo[0] = false }
	:: atomic { rbusy[1] && rans[1] -> rq[1] = 0; rbusy[1] = false; rans[1] = false; rtmo[1] = false }
	:: atomic { rbusy[0] && rtmo[0] -> rbusy[0] = false; rtmo[0] = false }
	:: atomic { rbusy[1] && rtmo[1] -> rbusy[1] = false; rtmo[1] = false }
	/* a crash restart: A's backends die with shared memory; the new
	 * worker revokes every lease of the lease file */
	:: atomic { cb > 0 && !dead ->
		cb--; dead = true;
		i = 0;
		do
		:: i < NL -> if :: gcur[i] -> gcur[i] = false :: else fi;
			if :: kacur[i] -> kacur[i] = false :: else fi;
			if :: revcur[i] -> revcur[i] = false :: else fi; i++
		:: else -> break
		od;
		rq[0] = 0; rq[1] = 0; rbusy[0] = false; rbusy[1] = false; rans[0] = false; rans[1] = false;
		rtmo[0] = false; rtmo[1] = false;
		c = 0;
		do
		:: c < 2 ->
			if :: sst[c] != S_NONE -> queue_revoke(slease[c]) :: else fi;
			if :: sgrant[c] != NONE -> queue_revoke(sgrant[c]) :: else fi;
			sst[c] = S_NONE; slease[c] = NONE; sgrant[c] = NONE; sdl[c] = 0; kafl[c] = false; kalease[c] = 0;
			kadl[c] = 0; kaans[c] = false; kagone[c] = false; katmo[c] = false;
			held[c] = false; glease[c] = NONE; gans[c] = false; gtmo[c] = false; gdl[c] = 0;
			c++
		:: else -> break
		od;
		c = 0; i = 0 }
	od
}

/* ---- instance A's backends ---- */
/* lt_forget_lease: every lock forgotten, the slot freed, the revoke queued */
inline forget_lease()
{
	held[c] = false;
	sst[c] = S_NONE; slease[c] = NONE;
	queue_revoke(glease[c]);
	glease[c] = NONE; gdead[c] = false
}

proctype Backend(byte c)
{
	byte g = 0;
	do
	:: atomic { !dead && ops[c] < OPS ->
		/* lt_check_lost */
		if
		:: glease[c] != NONE && !LEASE_OK(c) -> gdead[c] = true; forget_lease()
		:: else
		fi;
		/* lt_ensure_lease: a grant of a fresh ID; the ID is in the lease
		 * file (granting_id) before it is sent; the deadline counts from
		 * this first send */
		if
		:: glease[c] == NONE && g < 2 ->
			sgrant[c] = 2*c + g; gdl[c] = now + DL;
			gcur[2*c+g] = true;
			do
			:: gans[c] -> break
			:: gtmo[c] && !dead -> gtmo[c] = false;	/* resent, same ID */
#ifdef MUT_DEADLINE_LATEST_SEND
				gdl[c] = now + DL;
#endif
				gcur[2*c+g] = true
			:: gtmo[c] && !dead -> break			/* failed: revoked (it may exist) */
			:: dead -> break
			od;
			if
			:: dead -> skip
			:: gans[c] ->
				glease[c] = 2*c + g; slease[c] = glease[c]; sst[c] = S_LIVE; sdl[c] = gdl[c];
				sgrant[c] = NONE; kadue[c] = true
			:: else -> queue_revoke(2*c+g); sgrant[c] = NONE
			fi;
			gans[c] = false; gtmo[c] = false; gdl[c] = 0; g++
		:: else
		fi;
		/* a try-lock: our key if the name is free */
		if
		:: !dead && glease[c] != NONE && RANGE_EMPTY && ALIVE(glease[c]) ->
			key[glease[c]] = 1;
			/* counted, then the deadline checked (lt_acquire) */
			if
			:: LEASE_OK(c) -> held[c] = true; assert(!BAD)
			:: else -> gdead[c] = true; forget_lease()
			fi
		:: else
		fi;
		ops[c]++ }
		/* holds it a while; then etcd_unlock (or it finds the lease lost) */
		atomic {
			if
			:: held[c] && !dead && LEASE_OK(c) -> held[c] = false; key[glease[c]] = 0	/* compare-and-delete */
			:: held[c] && !dead && !LEASE_OK(c) -> gdead[c] = true; forget_lease()
			:: else
			fi }
	:: atomic { dead || ops[c] == OPS -> break }
	od;
end_b:
	(false)
}

/* instance B's backend: its lease never fails */
active proctype B()
{
	byte n = 0;
	do
	:: atomic { n < OPS && RANGE_EMPTY -> key[NL] = 1; held[2] = true; assert(!BAD); n++ }
		atomic { held[2] = false; key[NL] = 0 }
	:: atomic { n < OPS && !RANGE_EMPTY -> n++ }
	:: n == OPS -> break
	od;
end_b:
	(false)
}

init {
	atomic {
		byte i;
		for (i : 0 .. 1) { slease[i] = NONE; sgrant[i] = NONE; glease[i] = NONE }
		glease[2] = NONE;
		run Backend(0);
		if
		:: NBACK > 1 -> run Backend(1)
		:: else
		fi
	}
}
