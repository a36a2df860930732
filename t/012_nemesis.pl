# Nemesis run: one real etcd; node A reaches it only through the fault
# proxy (t/FaultProxy.pm), node B directly. 4 sessions on each take locks
# on 3 names in a loop and, inside each critical section, do an unprotected
# read-modify-write of a counter file kept outside both instances (one per
# name), some sections outlasting the lease TTL. Meanwhile a seeded random
# nemesis holds, cuts, delays, drops replies to and duplicates node A's etcd
# traffic. Sessions that get an ERROR catch it and carry on on the same
# connection, like an application retrying.
#
# A section counts as "told lost" if the session learnt during it that its
# lease was lost (an ERROR in it, or etcd_lock_token NULL when checked just
# before the write or just after it). The write happens only if the token
# is still there just before it. At the end:
#   (1) no two sections not told lost overlap (per name);
#   (2) each counter equals the number of writes made (no lost increment);
#   (3) fencing tokens strictly increase per name among sections not told lost;
#   (4) once everything stopped, no key is left under /nm/ in etcd;
#   (5) no backend crashed;
#   (6) the history of every lock call, unlock call and lease loss told
#       (invocation and return times, outcome) is linearizable against a
#       mutex per name (t/history_check, Porcupine; HISTORY_CHECK is the
#       built checker, else skipped), and copies of it corrupted to hold a
#       name twice at once are rejected.
# The seed is printed (rerun with NEMESIS_SEED=<seed>); the proxy's log is
# the fault schedule of the run and is printed when a check fails.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $NAMES = 3;            # lock names /nm/0 .. /nm/2, one counter file each
my $PER_NODE = 4;         # sessions per node
my $NEMESIS_SECS = 35;    # how long faults are injected
my $SETTLE_SECS = 5;      # fault-free running after the nemesis

my $seed = $ENV{NEMESIS_SEED} // (int(time * 1000) ^ ($$ << 7)) % 1_000_000;
note "nemesis seed $seed (rerun with NEMESIS_SEED=$seed)";
srand($seed);

my $etcd = start_etcd();
my $fp = FaultProxy->start($etcd->{endpoint});
note "proxy " . $fp->endpoint . " -> etcd $etcd->{endpoint}; fault log $fp->{log}";
# one acquire or release request of an instance in flight at a time
# (etcd_lock.group_commit_inflight = 1, default 2), so that the nemesis's
# few sessions form batches of each other's txns (issue 21)
my %conf = ('etcd_lock.lease_ttl' => '3s', 'etcd_lock.request_timeout' => '1s',
	'etcd_lock.group_commit_inflight' => '1');
my $na = etcd_node('node_a', { endpoint => $fp->endpoint }, %conf);
my $nb = etcd_node('node_b', $etcd, %conf);

my $dir = PostgreSQL::Test::Utils::tempdir('nemesis');
chmod 0777, $dir;
for my $i (0 .. $NAMES - 1)
{
	open(my $fh, '>', "$dir/counter_$i") or die;
	print $fh "0\n";
	close $fh;
	chmod 0666, "$dir/counter_$i";
}

# The worker: critical sections on random names until the stop file appears
# (or max_secs pass). Every error is caught and the loop goes on. Each
# section, and each failed lock call, is logged as one line:
#   kind|who|name|token|t_enter|t_exit|lost|wrote|uncertain|long|err|unlock_err|msg|
#     t_call|t_told|t_ucall|t_uret|unlock_out
# kind S = a section (the lock was obtained), F = a failed lock call (its
# t_enter is when the error was caught), G = an error outside both.
# For the lock history (the linearizability check at the end): t_call is
# taken just before etcd_lock is called (NULL if it never was), t_enter just
# after it returned; t_ucall just before etcd_unlock is called and t_uret
# just after it returned or its error was caught, unlock_out its outcome
# (ok = true, false, error; NULL if it was not called); t_told, in a section
# told lost, the moment the session learnt it (after the NULL token check,
# or when the error was caught).
# The counter is written through a shell that renames a temp file over it,
# so a write cancelled halfway leaves the old value or the new one, never an
# empty file; such a write is marked uncertain (and the section lost)
# unless the COPY was refused at its start (55000: the session learns of a
# loss it was not told of yet at its next statement).
# t_exit is taken before the token check that follows the write: a section
# whose token is still there then held the lock over [t_enter, t_exit].
# A cancel can land anywhere (also in a handler or between iterations),
# hence the guard block and the outer loop around it.
my $worker = q{
CREATE PROCEDURE nm_worker(who text, dir text, nnames int, seed float8, max_secs int)
LANGUAGE plpgsql AS $$
DECLARE
	sfx text; nm text; f text; prog text;
	tok bigint; pre bigint; v bigint;
	t_in timestamptz; t_out timestamptz;
	t_call timestamptz; t_told timestamptz; t_uc timestamptz; t_ur timestamptz; uo text;
	stage text; lost bool; wrote bool; uncertain bool; long bool; failed bool;
	err text; unl text; msg text;
	recorded bool := true;
	nsec int := 0;
	restarts int := 0;
	log text[] := '{}';
	stop_at timestamptz := clock_timestamp() + make_interval(secs => max_secs);
BEGIN
	PERFORM setseed(seed);
	-- the outer loop: a late cancel between two iterations (outside the
	-- guard) restarts the loop instead of ending the CALL
	LOOP
		BEGIN
			WHILE clock_timestamp() < stop_at AND pg_stat_file(dir || '/stop', true) IS NULL LOOP
				BEGIN
					sfx := floor(random() * nnames)::int::text;
					nm := '/nm/' || sfx;
					f := dir || '/counter_' || sfx;
					long := nsec % 10 = 9;
					tok := NULL; t_in := NULL; t_out := NULL; lost := false; wrote := false;
					uncertain := false; failed := false; err := NULL; unl := NULL; msg := NULL;
					t_call := NULL; t_told := NULL; t_uc := NULL; t_ur := NULL; uo := NULL;
					stage := 'lock';
					BEGIN
						t_call := clock_timestamp();
						tok := etcd_lock(nm, '10 s');
						t_in := clock_timestamp();
						recorded := false;
						nsec := nsec + 1;
						stage := 'read';
						v := trim(pg_read_file(f))::bigint;
						stage := 'sleep';
						PERFORM pg_sleep(CASE WHEN long THEN 4 ELSE 0.002 + random() * 0.008 END);
						stage := 'check';
						pre := etcd_lock_token(nm);
						IF pre IS NULL OR pre <> tok THEN
							t_out := clock_timestamp();
							t_told := t_out;
							lost := true;
							err := CASE WHEN pre IS NULL THEN 'check:null' ELSE 'check:token ' || pre END;
						ELSE
							stage := 'write';
							prog := format('read v && echo "$v" >%s.tmp.%s && mv -f %s.tmp.%s %s', f, who, f, who, f);
							EXECUTE format('COPY (SELECT %s) TO PROGRAM %L', v + 1, prog);
							wrote := true;
							stage := 'after';
							t_out := clock_timestamp();
							IF etcd_lock_token(nm) IS NULL THEN
								t_told := clock_timestamp();
								lost := true;
								err := 'after:null';
							END IF;
						END IF;
						-- t_uc before the stage: an error between the two is
						-- a section lost with no unlock called (uo NULL)
						t_uc := clock_timestamp();
						stage := 'unlock';
						uo := CASE WHEN etcd_unlock(nm) THEN 'ok' ELSE 'false' END;
						t_ur := clock_timestamp();
						stage := 'done';
					EXCEPTION WHEN query_canceled OR others THEN
						msg := left(translate(SQLERRM, E'|\n\t', '   '), 120);
						IF stage = 'lock' THEN
							failed := true;
							log := log || format('F|%s|%s||%s||||||%s||%s|%s||||', who, nm, clock_timestamp(),
								'lock:' || SQLSTATE, msg, t_call);
						ELSIF stage IN ('unlock', 'done') THEN
							unl := SQLSTATE;
							-- uo set: etcd_unlock had returned before the error
							uo := coalesce(uo, 'error');
							t_ur := coalesce(t_ur, clock_timestamp());
						ELSE
							t_out := coalesce(t_out, clock_timestamp());
							t_told := coalesce(t_told, clock_timestamp());
							lost := true;
							-- 55000 here: the COPY was refused at its start (the
							-- lease-loss check of a new statement), nothing written
							uncertain := stage = 'write' AND SQLSTATE <> '55000';
							err := stage || ':' || SQLSTATE;
						END IF;
					END;
					IF NOT recorded THEN
						log := log || format('S|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', who, nm, tok,
							t_in, t_out, lost, wrote, uncertain, long, err, unl, msg, t_call, t_told, t_uc, t_ur, uo);
						recorded := true;
					END IF;
					IF failed THEN
						PERFORM pg_sleep(0.02 + random() * 0.05);
					END IF;
				EXCEPTION WHEN query_canceled OR others THEN
					-- an error outside the inner block (a late cancel): the section
					-- in progress, if any, counts as lost unless it had finished
					IF NOT recorded THEN
						IF stage NOT IN ('unlock', 'done') THEN
							lost := true;
							uncertain := uncertain OR stage = 'write';
							t_out := coalesce(t_out, clock_timestamp());
							t_told := coalesce(t_told, clock_timestamp());
						ELSIF stage = 'unlock' THEN
							uo := coalesce(uo, 'error');
							t_ur := coalesce(t_ur, clock_timestamp());
						END IF;
						err := coalesce(err || '/', '') || 'guard:' || SQLSTATE;
						log := log || format('S|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', who, nm, tok,
							t_in, t_out, lost, wrote, uncertain, long, err, unl, msg, t_call, t_told, t_uc, t_ur, uo);
						recorded := true;
					ELSE
						log := log || format('G|%s|%s||%s||||||%s|||||||', who, nm, clock_timestamp(), 'guard:' || SQLSTATE);
					END IF;
				END;
			END LOOP;
			EXIT;
		EXCEPTION WHEN query_canceled OR others THEN
			IF NOT recorded THEN
				lost := lost OR stage NOT IN ('unlock', 'done');
				IF lost THEN
					t_told := coalesce(t_told, clock_timestamp());
				END IF;
				IF stage = 'unlock' THEN
					uo := coalesce(uo, 'error');
					t_ur := coalesce(t_ur, clock_timestamp());
				END IF;
				err := coalesce(err || '/', '') || 'outer:' || SQLSTATE;
				log := log || format('S|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s', who, nm, tok, t_in,
					coalesce(t_out, clock_timestamp()), lost, wrote, uncertain OR stage = 'write', long, err, unl, msg,
					t_call, t_told, t_uc, t_ur, uo);
				recorded := true;
			ELSE
				log := log || format('G|%s|%s||%s||||||%s|||||||', who, nm, clock_timestamp(), 'outer:' || SQLSTATE);
			END IF;
			restarts := restarts + 1;
			EXIT WHEN restarts > 100;
		END;
	END LOOP;
	-- a cancel still pending lands here, not in the COPY of the log
	BEGIN
		PERFORM pg_sleep(0.05);
		PERFORM etcd_unlock_all();
	EXCEPTION WHEN query_canceled OR others THEN
		NULL;
	END;
	FOR i IN 1 .. 3 LOOP
		BEGIN
			EXECUTE format('COPY (SELECT unnest(%L::text[])) TO %L', log, dir || '/log_' || who);
			EXIT;
		EXCEPTION WHEN query_canceled OR others THEN
			NULL;
		END;
	END LOOP;
END $$;
};
$_->safe_psql('postgres', $worker) for $na, $nb;

# --- the sessions
my (@s, @m, @who);
for my $i (1 .. $PER_NODE)
{
	for my $n ([ $na, 'a' ], [ $nb, 'b' ])
	{
		my $who = "$n->[1]$i";
		my $s = session($n->[0]);
		push @s, $s;
		push @who, $who;
		my $sseed = sprintf('%.6f', rand(2) - 1);
		push @m, start_query($s, "CALL nm_worker('$who', '$dir', $NAMES, $sseed, 150)");
	}
}
my $t_start = time;
note sprintf('%.3f started %d sessions', $t_start, scalar @s);

# --- the nemesis: rounds of every fault kind in a random order, with pass
# periods between; each fault is noted with its time (the proxy logs them too).
# hold comes twice a round: a hold past the lease deadline is what makes
# sections lose their lock.
my %injected;
my @kinds = qw(hold cut drop_txn_cut drop_txn_hold drop_keepalive_cut drop_keepalive_hold delay dup_txn);
my @round_kinds = (@kinds, 'hold');

sub fault_note
{
	note sprintf('%.3f nemesis: %s', time, $_[0]);
}

sub inject
{
	my ($kind) = @_;
	$injected{$kind}++;
	if ($kind eq 'hold')
	{
		my $secs = 0.2 + rand(3.8);
		fault_note(sprintf('hold for %.2f s', $secs));
		$fp->hold;
		usleep(int($secs * 1e6));
		$fp->pass;
		fault_note('pass');
	}
	elsif ($kind eq 'cut')
	{
		my $n = $fp->cut;
		fault_note("cut ($n connections)");
	}
	elsif ($kind =~ /^drop_(txn|keepalive)_(cut|hold)$/)
	{
		my $re = $1 eq 'txn' ? '/v3/kv/txn' : '/v3/lease/keepalive';
		$fp->drop_reply($re, $2);
		fault_note("drop_reply $re $2");
	}
	elsif ($kind eq 'delay')
	{
		my $ms = 50 + int(rand(251));
		my $secs = 1 + rand(3);
		fault_note(sprintf('delay %d ms for %.2f s', $ms, $secs));
		$fp->delay($ms);
		usleep(int($secs * 1e6));
		$fp->delay(0);
		fault_note('delay 0');
	}
	elsif ($kind eq 'dup_txn')
	{
		$fp->dup('/v3/kv/txn');
		fault_note('dup /v3/kv/txn');
	}
	return;
}

my $nemesis_end = time + $NEMESIS_SECS;
my @round;
while (time < $nemesis_end)
{
	my $pause = 0.3 + rand(1.7);
	usleep(int($pause * 1e6));
	last if time >= $nemesis_end;
	unless (@round)
	{
		@round = @round_kinds;
		for (my $i = $#round; $i > 0; $i--)
		{
			my $j = int(rand($i + 1));
			@round[ $i, $j ] = @round[ $j, $i ];
		}
	}
	inject(shift @round);
}
$fp->pass;
$fp->delay(0);
my $t_calm = time;
fault_note('end: pass, delay 0');

usleep(int($SETTLE_SECS * 1e6));
open(my $stop, '>', "$dir/stop") or die;
close $stop;
note sprintf('%.3f stop file written', time);

for my $i (0 .. $#s)
{
	my ($out, $err) = finish_query($s[$i], $m[$i], 300);
	unlike($err, qr/ERROR|FATAL/, "session $who[$i] finished its loop without an uncaught error");
	note "session $who[$i] stderr: $err" if $err ne '';
}
$_->quit for @s;
note sprintf('%.3f sessions done (%.1f s after start)', time, time - $t_start);

# --- the log, into a table on node B (its server reads the files)
$nb->safe_psql('postgres', q{
	CREATE TABLE nm_log(kind text, who text, nm text, tok bigint, t_in timestamptz, t_out timestamptz,
		lost bool, wrote bool, uncertain bool, long bool, err text, unl text, msg text,
		t_call timestamptz, t_told timestamptz, t_uc timestamptz, t_ur timestamptz, uo text)});
my $logs = 0;
for my $who (@who)
{
	next unless -e "$dir/log_$who";
	$logs++;
	$nb->safe_psql('postgres', "COPY nm_log FROM '$dir/log_$who' WITH (FORMAT text, DELIMITER '|', NULL '')");
}
is($logs, scalar @who, 'every session wrote its log');

sub q1
{
	return $nb->safe_psql('postgres', $_[0]);
}

my ($nsec, $nlost, $nclean_a, $nclean_b, $nlong_ok_a, $nlong_ok_b, $nuncertain) = split /\|/, q1(q{
	SELECT count(*), count(*) FILTER (WHERE lost),
	       count(*) FILTER (WHERE NOT lost AND who LIKE 'a%'),
	       count(*) FILTER (WHERE NOT lost AND who LIKE 'b%'),
	       count(*) FILTER (WHERE NOT lost AND long AND who LIKE 'a%'),
	       count(*) FILTER (WHERE NOT lost AND long AND who LIKE 'b%'),
	       count(*) FILTER (WHERE uncertain)
	FROM nm_log WHERE kind = 'S'});
note "critical sections: $nsec, told lost: $nlost, uncertain writes: $nuncertain; "
  . "not lost: node A $nclean_a (long $nlong_ok_a), node B $nclean_b (long $nlong_ok_b)";
note "sections told lost, by node and reason:\n"
  . q1(q{SELECT substr(who, 1, 1), err, count(*) FROM nm_log WHERE kind = 'S' AND lost GROUP BY 1, 2 ORDER BY 1, 2});
note "failed lock calls, by node and SQLSTATE:\n"
  . q1(q{SELECT substr(who, 1, 1), err, count(*) FROM nm_log WHERE kind = 'F' GROUP BY 1, 2 ORDER BY 1, 2});
note "failed unlocks, by node and SQLSTATE:\n"
  . q1(q{SELECT substr(who, 1, 1), unl, count(*) FROM nm_log WHERE kind = 'S' AND unl IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2});
note "errors outside any section (guard): " . q1(q{SELECT count(*) FROM nm_log WHERE kind = 'G'});
note "faults injected: " . join(', ', map { "$_=" . ($injected{$_} // 0) } @kinds);
note "proxy status: " . JSON::PP->new->canonical->encode($fp->status);

ok($nclean_a > 0 && $nclean_b > 0, 'both nodes completed critical sections not told lost');
# group commit (issue 21) was on: the checks above held with batches of
# several sessions' txns in flight, through the faults on node A too
{
	my %b = map { my ($n, $x) = @$_; ($n => $x->safe_psql('postgres', 'SELECT batches || \' batches, max \' || max_batch || \', \' || resent_alone || \' sent again alone\' FROM etcd_lock_stats')) }
	  ([ 'node A', $na ], [ 'node B', $nb ]);
	note "group commit: node A: $b{'node A'}; node B: $b{'node B'}";
	my $sum = 0;
	$sum += ($_ =~ /^(\d+)/)[0] for values %b;
	cmp_ok($sum, '>', 0, 'batches of several sessions\' txns were sent during the run');
}
ok($nlong_ok_b > 0, 'sections longer than the lease TTL complete (the worker renews)');
is(q1(q{SELECT count(*) FROM nm_log WHERE kind = 'S' AND lost AND who LIKE 'b%'}), '0',
	'node B (direct to a healthy etcd) was never told a lock was lost');
# Node A recovered: once the faults stopped and the sessions ended, it
# takes every name (a key left by a lease lost in the faults can only delay
# this by the lease TTL). How many sections node A's own sessions completed
# in the calm seconds depends on node B's long sections ahead of them in
# the queue (three 4 s sections in a row outlast a 10 s wait), so it is
# only reported.
note "node A sections begun after the faults stopped: "
  . q1("SELECT count(*) FROM nm_log WHERE kind = 'S' AND NOT lost AND who LIKE 'a%' AND t_in > to_timestamp($t_calm)");
is($na->safe_psql('postgres', join('', map {
		"SELECT etcd_lock('/nm/$_', '20 s') > 0; SELECT etcd_unlock('/nm/$_');" } 0 .. $NAMES - 1)),
	join("\n", ('t') x (2 * $NAMES)),
	'node A takes every lock again once the faults stop');

# sections told lost must have been told so by etcd_lock: a lease-loss
# error (57014 is the cancel as PL/pgSQL sees it; 55000 the loss itself) or
# a NULL token; anything else (a token that changed, another error) is wrong
my $odd = q1(q{
	SELECT string_agg(format('%s %s tok %s %s: %s (%s)', who, nm, tok, t_in, err, msg), E'\n')
	FROM nm_log WHERE kind = 'S' AND err IS NOT NULL
	  AND NOT (err IN ('check:null', 'after:null')
	           OR (err ~ '^(read|sleep|check|write|after):(57014|55000)$'
	               AND (err LIKE '%57014' OR msg LIKE '%lease of this session expired%'))
	           OR err ~ '^((check|after):null/)?(guard|outer):57014$')});
is($odd, '', 'every section told lost was told by a lease-loss error or a NULL token');

# (1) overlaps among sections not told lost, as timestamps in PostgreSQL
my $overlaps = q1(q{
	SELECT count(*) FROM nm_log a JOIN nm_log b
	  ON a.nm = b.nm AND (a.who, a.t_in) < (b.who, b.t_in) AND a.t_in < b.t_out AND b.t_in < a.t_out
	WHERE a.kind = 'S' AND b.kind = 'S' AND NOT a.lost AND NOT b.lost});
is($overlaps, '0', 'no overlapping critical sections among sections not told lost');
if ($overlaps ne '0')
{
	note "overlapping sections (up to 20):\n" . q1(q{
		SELECT a.nm, a.who, a.tok, a.t_in, a.t_out, b.who, b.tok, b.t_in, b.t_out FROM nm_log a JOIN nm_log b
		  ON a.nm = b.nm AND (a.who, a.t_in) < (b.who, b.t_in) AND a.t_in < b.t_out AND b.t_in < a.t_out
		WHERE a.kind = 'S' AND b.kind = 'S' AND NOT a.lost AND NOT b.lost ORDER BY a.t_in LIMIT 20});
}

# (2) no lost increments: each counter equals the writes made to it
for my $i (0 .. $NAMES - 1)
{
	open(my $fh, '<', "$dir/counter_$i") or die "counter_$i: $!";
	my $count = <$fh> // '';
	close $fh;
	chomp $count;
	my ($writes, $unsure, $lost_writes) = split /\|/, q1(qq{
		SELECT count(*) FILTER (WHERE wrote), count(*) FILTER (WHERE uncertain),
		       count(*) FILTER (WHERE wrote AND lost)
		FROM nm_log WHERE kind = 'S' AND nm = '/nm/$i'});
	note "/nm/$i: counter $count, writes $writes (of them after a loss was seen: $lost_writes), "
	  . "uncertain writes $unsure";
	if ($unsure == 0)
	{
		is($count, $writes, "/nm/$i: no lost increments (counter $count, writes $writes)");
	}
	else
	{
		ok($count =~ /^\d+$/ && $count >= $writes && $count <= $writes + $unsure,
			"/nm/$i: no lost increments (counter $count, writes $writes + up to $unsure uncertain)");
	}
}

# (3) fencing tokens strictly increase per name among sections not told lost
my $tokens = q1(q{
	SELECT count(*) FROM (SELECT tok, lag(tok) OVER (PARTITION BY nm ORDER BY t_in) AS prev
	                      FROM nm_log WHERE kind = 'S' AND NOT lost) x
	WHERE tok <= prev});
is($tokens, '0', 'fencing tokens strictly increase per name among sections not told lost');

# (6) the lock history, for the linearizability check. One line per lock
# call, unlock call and lease loss told, in the checker's format
# (t/history_check/main.go has the model):
#   session|name|section|op|outcome|call|return   (times in microseconds)
# lock: ok (a section), failed (55P03, the wait timed out: the queue key is
# removed before the error returns, no hold) or unknown (any other error:
# the acquire may have happened, and the rolled-back call's release with it,
# at moments nobody knows); a lock call cancelled before it was called (its
# t_call NULL) is left out. unlock: ok, false or unknown (an error: the
# worker finishes the release at some later moment). lost: a section told
# lost held the lock from within its lock call until some moment nobody
# knows, at the latest when the session learnt of the loss (t_told: the
# NULL token check, or the error caught); so the loss is a release whose
# effect lies anywhere in [the section's lock invocation, t_told] (the model
# puts it after the acquire, which lies in that window too). The section's
# later etcd_unlock, if any, is listed and has no effect in the model.
my $us = sub { "(extract(epoch FROM $_[0]) * 1000000)::bigint" };
my @history = split /\n/, q1(qq{
	WITH c AS (SELECT row_number() OVER (ORDER BY who, t_call, t_in) AS sec, *
	           FROM nm_log WHERE kind = 'S' OR (kind = 'F' AND t_call IS NOT NULL))
	SELECT line FROM (
		SELECT t_call AS t, 0 AS o, format('%s|%s|%s|lock|%s|%s|%s', who, nm, sec,
			CASE WHEN kind = 'S' THEN 'ok' WHEN err = 'lock:55P03' THEN 'failed' ELSE 'unknown' END,
			@{[ $us->('t_call') ]}, @{[ $us->('t_in') ]}) AS line FROM c
		UNION ALL
		SELECT t_told, 1, format('%s|%s|%s|lost|told|%s|%s', who, nm, sec,
			@{[ $us->('t_call') ]}, @{[ $us->('t_told') ]}) FROM c WHERE kind = 'S' AND lost
		UNION ALL
		SELECT t_uc, 2, format('%s|%s|%s|unlock|%s|%s|%s', who, nm, sec,
			CASE uo WHEN 'error' THEN 'unknown' ELSE uo END,
			@{[ $us->('t_uc') ]}, @{[ $us->('t_ur') ]}) FROM c WHERE kind = 'S' AND uo IS NOT NULL
	) x ORDER BY t, o});
my $history = "$dir/history";
my $history_head = "# etcd_lock t/012_nemesis.pl lock history, seed $seed\n"
  . "# session|name|section|op|outcome|call_us|return_us\n";

sub write_history
{
	my ($path, @lines) = @_;
	open(my $fh, '>', $path) or die "$path: $!";
	print $fh $history_head, map { "$_\n" } @lines;
	close $fh or die "$path: $!";
	return $path;
}
write_history($history, @history);
note sprintf('lock history %s: %d operations (%d lock calls, %d lost, %d unlock calls); '
	  . 'lock calls cancelled before they were called, left out: %s',
	$history, scalar @history, scalar(grep { /\|lock\|/ } @history), scalar(grep { /\|lost\|/ } @history),
	scalar(grep { /\|unlock\|/ } @history), q1(q{SELECT count(*) FROM nm_log WHERE kind = 'F' AND t_call IS NULL}));

# runs the checker: (exit code, stdout, stderr)
sub history_check
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ $ENV{HISTORY_CHECK}, '-timeout', '120s', @_ ], '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

SKIP:
{
	skip 'HISTORY_CHECK (the built t/history_check) is not set: the lock history is not checked', 8
	  unless $ENV{HISTORY_CHECK};

	my ($rc, $out, $err) = history_check($history);
	note "history check: $out$err";
	is($rc, 0, 'the history of lock and unlock calls is linearizable (a mutex per name)');
	my $nops = scalar @history;
	like($out, qr/^history-check: $nops operations .* $NAMES partitions: /,
		"the checker read all $nops operations in $NAMES partitions");

	# Two corrupted copies. The sections: lock, lost and unlock lines by id.
	my (%sec, @order);
	for my $i (0 .. $#history)
	{
		my @f = split /\|/, $history[$i];
		push @order, $f[2] unless $sec{ $f[2] };
		$sec{ $f[2] }{ $f[3] } = { i => $i, f => \@f };
	}
	# clean holds: lock ok, no loss, unlock ok, with room inside
	# [lock return, unlock call] for a corrupted call
	my @clean = grep {
		my $x = $sec{$_};
		$x->{lock}{f}[4] eq 'ok' && !$x->{lost} && $x->{unlock} && $x->{unlock}{f}[4] eq 'ok'
		  && $x->{unlock}{f}[5] - $x->{lock}{f}[6] >= 3
	} @order;
	# (a) the latest pair of clean holds of one name by two sessions, the
	# second after the first: the second's lock call is moved into the
	# first's hold ([lock return, unlock call], where that hold is sure),
	# so the two holds overlap. Latest, as a violation late in the history
	# is the hardest one for the search.
	my ($x, $y);
	my %last;
	for my $id (@clean)
	{
		my $nm = $sec{$id}{lock}{f}[1];
		my $p = $last{$nm};
		($x, $y) = ($p, $id)
		  if defined $p
		  && $sec{$p}{lock}{f}[0] ne $sec{$id}{lock}{f}[0]
		  && $sec{$id}{lock}{f}[5] > $sec{$p}{unlock}{f}[6];
		$last{$nm} = $id;
	}
	ok(defined $y, 'the history has two successive clean holds of one name by two sessions, to corrupt');
	my ($a_rc, $a_out, $d_rc, $d_out) = (-1, '', -1, '');
	my $cnm = defined $y ? $sec{$y}{lock}{f}[1] : '?';
	if (defined $y)
	{
		my @bad = @history;
		my ($lr, $uc) = ($sec{$x}{lock}{f}[6], $sec{$x}{unlock}{f}[5]);
		my @f = @{ $sec{$y}{lock}{f} };
		@f[ 5, 6 ] = (int($lr + ($uc - $lr) / 3), int($lr + 2 * ($uc - $lr) / 3));
		$bad[ $sec{$y}{lock}{i} ] = join('|', @f);
		note "corrupted copy (a): section $y ($f[0]) of $cnm now locked at [$f[5], $f[6]], "
		  . "inside section $x ($sec{$x}{lock}{f}[0]) holding it over [$lr, $uc]";
		($a_rc, $a_out, my $a_err) = history_check(write_history("$history.overlap", @bad));
		note "history check of copy (a): $a_out$a_err";

		# (b) the same clean hold of section x duplicated under another
		# session (the same times, a new section): two holds at once
		my $other = (grep { $_ ne $sec{$x}{lock}{f}[0] } @who)[0];
		my @dup = map { my @g = @{ $sec{$x}{$_}{f} }; @g[ 0, 2 ] = ($other, 'dup'); join('|', @g) } qw(lock unlock);
		note "corrupted copy (b): section $x ($sec{$x}{lock}{f}[0], $cnm) duplicated under $other";
		($d_rc, $d_out, my $d_err) = history_check(write_history("$history.dup", @history, @dup));
		note "history check of copy (b): $d_out$d_err";
	}
	is($a_rc, 1, 'a copy of the history with one lock call moved into another session\'s hold is rejected');
	like($a_out, qr/: NOT linearizable \(\Q$cnm\E\) in /, '... in the partition of that name only');
	is($d_rc, 1, 'a copy of the history with a hold duplicated under another session is rejected');
	like($d_out, qr/: NOT linearizable \(\Q$cnm\E\) in /, '... in the partition of that name only');

	# and input it cannot read is not taken for a history
	my @trunc = @history;
	$trunc[-1] =~ s/\|[^|]*$//;
	($rc) = history_check(write_history("$history.truncated", @trunc));
	is($rc, 2, 'a history with a truncated line is refused as bad input (exit 2)');
}

# (4) once both nodes are stopped, nothing is left in etcd
$na->stop('fast');
$nb->stop('fast');
my $left = {};
ok(wait_until(sub { $left = etcd_keys($etcd, '/nm/'); !%$left }, 15),
	'no key is left under /nm/ in etcd once everything stopped');
note "keys left: " . join(', ', sort keys %$left) if %$left;

# (5) no backend crashed
ok(!$na->log_contains('terminated by signal'), 'node A: no backend crashed');
ok(!$nb->log_contains('terminated by signal'), 'node B: no backend crashed');

unless (Test::More->builder->is_passing)
{
	note "seed $seed; fault schedule ($fp->{log}):\n" . $fp->log_text;
	for my $n ($na, $nb)
	{
		my @lines = grep { /^\d{4}-\d\d-\d\d .*(etcd_lock|lease|terminated by signal)/ && !/ statement: / }
		  split /\n/, PostgreSQL::Test::Utils::slurp_file($n->logfile);
		splice(@lines, 0, @lines - 200) if @lines > 200;
		note "server log " . $n->logfile . " (etcd_lock lines, last 200):\n" . join("\n", @lines);
	}
	note "session logs and the lock history in $dir";
}
note sprintf('total %.1f s', time - $t_start);
$fp->stop;

done_testing();
