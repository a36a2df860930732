# The defects two outside reviews of 1.1 found (issues 22 and 24), and the
# model (issue 20), whose etcd answers are the same on every etcd line: run
# once, in the full suite (the line-dependent ones are in t/021). Each
# block names its item; each failed on the code before its fix.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $a = etcd_node('rev_a', $etcd);
my $b = etcd_node('rev_b', $etcd);

# the keys under P (decoded key => value)
sub keys_under { return etcd_keys($etcd, $_[0]) }

# the IDs of the leases etcd has now
sub etcd_lease_ids
{
	my $j = `curl -s -m 5 $etcd->{endpoint}/v3/lease/leases -d '{}'`;
	my $r = eval { decode_json($j) } // {};
	return map { $_->{ID} } @{ $r->{leases} // [] };
}

# --- issue 22 item 1: a multi-lock on a name this session campaigns for is
# refused before anything is sent; the election key stays, and nobody else
# becomes leader. Before: the give-up deleted the election key (another
# session then won the election while this one still said it led), and
# with an empty value the multi-lock adopted the election key as a lock.
{
	my $s = sess($a);
	my $o = sess($b);
	my $tok = ok_sql($s, "SELECT etcd_campaign('/e1', 'v1')");
	my ($out, $err) = run($s, "SELECT etcd_lock_many(ARRAY['/e1'], '2 s')");
	like($err, qr/42809/, '22.1: etcd_lock_many on a name this session campaigns for: 42809');
	($out, $err) = run($s, "SELECT etcd_try_lock_many(ARRAY['/free1', '/e1'])");
	like($err, qr/42809/, '22.1: ... also as a try, with another name');
	sleep 1.5;    # the worker would have sent a queued give-up by now
	my $k = keys_under('/e1/');
	is(scalar(keys %$k), 1, '22.1: the election key is still in etcd');
	is((values %$k)[0], 'v1', '22.1: ... with the candidate value');
	is(scalar(keys %{ keys_under('/free1/') }), 0, '22.1: the other name of the refused call has no key');
	is(ok_sql($o, "SELECT etcd_try_campaign('/e1', 'v2')"), 'f', '22.1: another session does not win the election');
	is(ok_sql($s, "SELECT token = $tok AND is_mine FROM etcd_leader('/e1')"), 't', '22.1: this session is still the leader in etcd');

	# an empty candidate value (as a Go client's mutex key would look)
	my $tok2 = ok_sql($s, "SELECT etcd_campaign('/e2', '')");
	($out, $err) = run($s, "SELECT etcd_lock_many(ARRAY['/e2'], '2 s')");
	like($err, qr/42809/, '22.1: empty campaign value: the multi-lock is refused (not adopted)');
	($out, $err) = run($s, "SELECT etcd_unlock('/e2')");
	sleep 1;
	is(scalar(keys %{ keys_under('/e2/') }), 1, '22.1: empty campaign value: the election key survives an etcd_unlock');
	is(ok_sql($o, "SELECT etcd_try_campaign('/e2', 'v2')"), 'f', '22.1: empty campaign value: nobody else wins');
	ok_sql($s, "SELECT etcd_resign('/e1'), etcd_resign('/e2')");
	ok(wait_until(sub { !%{ keys_under('/e1/') } && !%{ keys_under('/e2/') } }, 10), '22.1: resign removes both election keys');
	$s->quit;
	$o->quit;
}

# --- issue 22 item 3: a queued release is taken back only as the kind it
# was. A rolled-back xact lock's release, taken back by a campaign on the
# same name, left the lock's value under the election (etcd_leader showed
# it, other candidates got 42809). Races the worker: repeated.
{
	my $s = sess($a);
	my $bad = 0;
	my $n = 12;
	for my $i (1 .. $n)
	{
		ok_sql($s, "BEGIN; SAVEPOINT p; SELECT etcd_xact_lock('/tb$i'); ROLLBACK TO p; "
			  . "SELECT etcd_campaign('/tb$i', 'cand$i'); COMMIT;");
		my $k = keys_under("/tb$i/");
		my @v = values %$k;
		$bad++ unless @v == 1 && $v[0] eq "cand$i";
	}
	is($bad, 0, "22.3: after a rolled-back lock, a campaign's key carries the candidate's value ($bad of $n did not)");
	is(ok_sql($s, "SELECT value FROM etcd_leader('/tb1')"), 'cand1', '22.3: etcd_leader shows the candidate value');
	ok_sql($s, "SELECT etcd_resign('/tb$_')") for 1 .. $n;
	$s->quit;
}

# --- issue 22 item 2: a pool lease confirmed by a resent grant keeps the
# deadline of its first grant. The four pool grants of a starting instance
# reach etcd but their answers are lost (the fault proxy holds them); the
# worker resends the same IDs about request_timeout + 1 s later and etcd
# answers 412 "exists". A lock taken on such a lease, with the instance cut
# off from etcd before the first renewal, must be reported lost before
# etcd expires the lease and another instance gets the name. Before: the
# deadline came from the resend, and the session still returned its token
# for seconds after the other instance held the lock.
{
	my $fp = FaultProxy->start($etcd->{endpoint});
	$fp->drop_reply('/v3/lease/grant', 'hold') for 1 .. 4;
	my %leases_before = map { $_ => 1 } etcd_lease_ids();
	my $p = etcd_node('rev_pool', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '10s', 'etcd_lock.request_timeout' => '3s');
	ok(wait_until(sub { $fp->status->{drops_fired} >= 4 }, 20), '22.2: the four pool grants were sent, their answers lost');
	my $t0 = time;
	my @pool = grep { !$leases_before{$_} } etcd_lease_ids();
	is(scalar(@pool), 4, '22.2: etcd granted the four pool leases');
	# the resends (same IDs, answered 412) come about 3 s + 1 s later
	usleep(int((4.6 - (time - $t0)) * 1e6)) if time - $t0 < 4.6;
	my $sa = sess($p);
	ok_sql($sa, "SELECT etcd_lock('/pool22')");
	my $lease = ok_sql($sa, "SELECT lease_id FROM etcd_locks WHERE name = '/pool22'");
	ok((grep { sprintf('%x', $_) eq $lease || $_ eq $lease } @pool), "22.2: the lock is on a pool lease that was granted twice ($lease)");
	$fp->hold;
	my $t_hold = time;
	my $sb = sess($b);
	my $qb = start_query($sb, "SELECT etcd_lock('/pool22', '40 s')");
	my ($t_lost, $t_b);
	while (time - $t_hold < 30 && !(defined $t_lost && defined $t_b))
	{
		if (!defined $t_lost)
		{
			my ($out, $err) = run($sa, "SELECT etcd_lock_token('/pool22') IS NOT NULL", 10);
			$t_lost = time if $err =~ /ERROR/ || $out ne 't';
		}
		$t_b = time if !defined $t_b && query_done($sb, $qb);
		usleep(50_000);
	}
	ok(defined $t_b, sprintf('22.2: the other instance got the name once etcd expired the lease (%.1f s after the cut)',
		defined $t_b ? $t_b - $t_hold : -1));
	ok(defined $t_lost && defined $t_b && $t_lost < $t_b,
		sprintf('22.2: the session was told it lost the lock before the other instance held it (lost %.1f s, other %.1f s after the cut)',
			defined $t_lost ? $t_lost - $t_hold : -1, defined $t_b ? $t_b - $t_hold : -1));
	finish_query($sb, $qb, 30);
	ok_sql($sb, "SELECT etcd_unlock_all()");
	$sb->quit;
	$sa->quit;
	$fp->pass;
	$p->stop;
	$fp->stop;
}

# --- issue 24 item 1: queue reads page by create revision; every key of
# one multi-lock shares one. A page boundary between two such keys in one
# name's range (a name and its nested name, or one name in two modes) made
# the next page skip the second: the waiter held while the lock was held.
# The boundary falls there for one number of newer keys under the name
# (63 in the report); 61-65 are tried.
{
	my $s = sess($a);
	my $o = sess($b);
	my @wrong;
	for my $fill (61 .. 65)
	{
		for my $case ('nested', 'modes')
		{
			my $n = "/pg$fill$case";
			my $call = $case eq 'nested'
			  ? "SELECT etcd_lock_many(ARRAY['$n', '$n/x'])"
			  : "SELECT etcd_lock_many(ARRAY['$n', '$n'], NULL, ARRAY['exclusive', 'shared'])";
			ok_sql($s, $call);
			etcd_put($etcd, "$n/zz/$_", 'filler') for 1 .. $fill;
			my $want = $case eq 'nested' ? "etcd_lock('$n', '1 s')" : "etcd_lock_shared('$n', '1 s')";
			my ($out, $err) = run($o, "SELECT $want");
			push @wrong, "$case/$fill: got $out" unless $err =~ /55P03/;
			ok_sql($o, "SELECT etcd_unlock_all()");
			ok_sql($s, "SELECT etcd_unlock_all()");
		}
	}
	is(scalar(@wrong), 0, '24.1: behind a multi-lock\'s keys of one revision, with 61-65 newer keys, the waiter waits (nested name; exclusive+shared)')
	  or diag join('; ', @wrong);
	$s->quit;
	$o->quit;
}

# --- issue 24 item 1, the handoff: a waiter whose predecessor is the
# oldest blocking key takes the lock on its deletion without a read; with
# two keys of one revision ahead (a multi-lock's exclusive and shared key of
# one name) the deletion of one of them must not admit it.
{
	my $s = sess($a);
	my $o = sess($b);
	my @wrong;
	for my $i (1 .. 4)
	{
		my $n = "/ho$i";
		ok_sql($s, "SELECT etcd_lock_many(ARRAY['$n', '$n'], NULL, ARRAY['exclusive', 'shared'])");
		my $q = start_query($o, "SELECT etcd_lock('$n', '20 s')");
		ok(wait_until(sub { $b->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE name = '$n' AND mode = 'waiting'") eq '1' }, 10),
			"24.1 handoff $i: the other session waits");
		ok_sql($s, $i % 2 ? "SELECT etcd_unlock_shared('$n')" : "SELECT etcd_unlock('$n')");
		usleep(500_000);
		push @wrong, "$n: admitted after one of two keys went" if query_done($o, $q);
		ok_sql($s, "SELECT etcd_unlock_all()");
		my ($out, $err) = finish_query($o, $q, 30);
		push @wrong, "$n: not admitted at the end ($err)" unless $out =~ /^\d+$/;
		ok_sql($o, "SELECT etcd_unlock_all()");
	}
	is(scalar(@wrong), 0, '24.1 handoff: the deletion of one of two keys of one revision ahead admits nobody')
	  or diag join('; ', @wrong);
	$s->quit;
	$o->quit;
}

# --- issue 24 item 2: the longest keys (a 256-byte prefix, a 1024-byte
# name, a mode marker) are released like any other. Before, their releases
# did not fit the queue: an xact lock outlived its COMMIT, in etcd_locks and
# in etcd, until the session ended.
{
	my $s = sess($a);
	my $pfx = '/' . ('p' x 254) . '/';
	ok_sql($s, "SET etcd_lock.prefix = '$pfx'");
	ok_sql($s, "BEGIN; SELECT etcd_xact_lock_shared(repeat('n', 1024)); "
		  . "SELECT etcd_xact_semaphore(repeat('s', 1024), 1000); SELECT etcd_xact_lock(repeat('x', 1024)); COMMIT;");
	is(ok_sql($s, "SELECT count(*) FROM etcd_locks WHERE pid = pg_backend_pid()"), '0',
		'24.2: after COMMIT no xact lock with the longest key is left in etcd_locks');
	is(scalar(keys %{ keys_under($pfx) }), 0, '24.2: ... nor in etcd');
	ok_sql($s, "SELECT etcd_lock_shared(repeat('n', 1024)), etcd_unlock_shared(repeat('n', 1024))");
	is(scalar(keys %{ keys_under($pfx) }), 0, '24.2: a session lock with the longest key is released by its unlock');
	$s->quit;
}

# --- issue 24 item 3: etcd_lock_holders in a database that is not UTF8,
# with a holder value any etcd client may write: a \u escape of a character
# the encoding cannot hold. Before, the whole report failed (22P05).
{
	$a->safe_psql('postgres', "CREATE DATABASE l1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0");
	$a->safe_psql('l1', 'CREATE EXTENSION etcd_lock');
	my $s = sess($a);
	ok_sql($s, q{SELECT etcd_campaign('/u8/cand', '{"a":"\u4e2d"}')});
	ok_sql($s, q{SELECT etcd_lock('/u8/plain')});
	my ($rc, $out, $err) = $a->psql('l1',
		"SELECT name, holder IS NULL FROM etcd_lock_holders('/u8/') ORDER BY name");
	is($rc, 0, '24.3: etcd_lock_holders in a LATIN1 database does not fail') or diag $err;
	is($out, "/u8/cand|t\n/u8/plain|f", '24.3: the unrepresentable value is NULL, the others are shown');
	like($err, qr/NOTICE:.*1 holder value\(s\) shown as NULL/, '24.3: a NOTICE says so');
	ok_sql($s, 'SELECT etcd_resign(\'/u8/cand\'), etcd_unlock_all()');
	$s->quit;
}

# --- issue 22 item 5: an owed queue place of unknown revision (an acquire
# cut short while the release queue was full) is never removed by a plain
# delete, which applied late could remove a newer key of the same name.
# Before, etcd_unlock_all sent it as /v3/kv/deleterange; now the worker
# reads it and deletes it by revision. Counted by etcd itself (DeleteRange
# calls; the extension otherwise deletes only inside txns).
{
	my $fp = FaultProxy->start($etcd->{endpoint});
	my $nq = etcd_node('rev_owed', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '30s', 'etcd_lock.request_timeout' => '2s');
	my $deletes = sub {
		my $m = `curl -s -m 5 $etcd->{endpoint}/metrics`;
		my $n = 0;
		$n += $1 while $m =~ /^grpc_server_handled_total\{[^}]*grpc_method="DeleteRange"[^}]*\} (\d+)/mg;
		return $n;
	};
	my $s = sess($nq);
	# at least the queue's size (4 x MaxBackends, at least 256; MaxBackends
	# counts connections, autovacuum, special and other workers, WAL
	# senders): more is fine, the rest is released by the backend itself
	my $slots = $nq->safe_psql('postgres', q{SELECT greatest(256, 4 * (current_setting('max_connections')::int
		+ coalesce(current_setting('autovacuum_worker_slots', true), current_setting('autovacuum_max_workers'))::int
		+ 2 + current_setting('max_worker_processes')::int + current_setting('max_wal_senders')::int) + 64)});
	# the worker stopped, hold as many xact locks as the queue has
	# entries and roll back: the queue is full
	my $wpid = $nq->safe_psql('postgres', 'SELECT worker_pid FROM etcd_lock_status');
	my @names = map { "'/owed/$_'" } 1 .. $slots;
	my $sql = 'BEGIN;';
	while (my @chunk = splice(@names, 0, 128))
	{
		$sql .= ' SELECT etcd_xact_lock_many(ARRAY[' . join(',', @chunk) . ']);';
	}
	ok_sql($s, $sql);
	kill 'STOP', $wpid or die "SIGSTOP $wpid: $!";
	ok_sql($s, 'ROLLBACK');
	# an acquire whose txn reaches etcd but whose reply never comes, cut
	# short by its timeout: its queue place (revision unknown) is owed
	$fp->drop_reply('/v3/kv/txn', 'hold');
	my ($out, $err) = run($s, "SELECT etcd_lock('/owed/x', '1 s')");
	note "cut-short acquire: $err";
	is($fp->status->{drops_fired}, 1, '22.5: the acquire txn reached etcd, its reply lost');
	ok($nq->safe_psql('postgres', 'SELECT releases_owed FROM etcd_lock_status') >= 1,
		'22.5: the queue is full: the cut-short acquire\'s queue place is owed');
	ok(scalar(grep { m{^/owed/x/} } keys %{ keys_under('/owed/') }),
		'22.5: its key exists in etcd, its revision unknown to the session');
	my $d0 = $deletes->();
	($out, $err) = run($s, 'SELECT etcd_unlock_all()');
	my $d1 = $deletes->();
	kill 'CONT', $wpid;
	is($d1 - $d0, 0, '22.5: etcd_unlock_all sends no plain delete for it (before: one DeleteRange)');
	ok(wait_until(sub { $nq->safe_psql('postgres', 'SELECT releases_queued + releases_attempted FROM etcd_lock_status') eq '0' }, 30),
		'22.5: the queued releases drain once the worker runs');
	run($s, 'SELECT 1');    # the owed place is handed on at the next statement
	ok(wait_until(sub { !grep { m{^/owed/x/} } keys %{ keys_under('/owed/') } }, 20), '22.5: the cut-short queue place is removed');
	is($deletes->() - $d0, 0, '22.5: ... by the worker, by revision (no DeleteRange call reached etcd)');
	ok(wait_until(sub { !%{ keys_under('/owed/') } }, 20), '22.5: no key left');
	$s->quit;
	$nq->stop;
	$fp->stop;
}

# --- issue 20, found by the model (spec/): a try-lock that finds its own
# key in the queue but not holding (a leftover: an earlier acquire applied
# late) gives that key up; with the release queue full the release is kept
# owed and queued later. Before, the entry was kept owed and then freed all
# the same: the key stayed under the session's live lease, and once it was
# the oldest it blocked the name for everyone until the session ended.
{
	my $nt = etcd_node('rev_tryowed', $etcd, 'etcd_lock.lease_ttl' => '30s');
	my $s = sess($nt);
	ok_sql($s, "SELECT etcd_lock('/tryowed/warm')");
	my $lease = ok_sql($s, "SELECT lease_id FROM etcd_locks WHERE name = '/tryowed/warm'");
	ok_sql($s, "SELECT etcd_unlock('/tryowed/warm')");
	my $range = ok_sql($s, "SELECT etcd_lock_key('/tryowed/x')");
	my $sb = sess($b);
	ok_sql($sb, "SELECT etcd_lock('/tryowed/x')");
	# the leftover: our own key, under our lease, younger than B's
	my $mykey = $range . $lease;
	my $lid = $lease =~ /^[0-9a-f]+$/ ? do { no warnings 'portable'; hex($lease) } : $lease;
	my $kb = encode_base64($mykey, '');
	system("curl -s -m 5 $etcd->{endpoint}/v3/kv/put -d '{\"key\":\"$kb\",\"value\":\"eA==\",\"lease\":\"$lid\"}' >/dev/null");
	ok(exists keys_under('/tryowed/x/')->{$mykey}, "20.found: the session's own key is in the queue behind B ($mykey)");
	# the worker stopped, fill the release queue (as 22.5 does)
	my $slots = $nt->safe_psql('postgres', q{SELECT greatest(256, 4 * (current_setting('max_connections')::int
		+ coalesce(current_setting('autovacuum_worker_slots', true), current_setting('autovacuum_max_workers'))::int
		+ 2 + current_setting('max_worker_processes')::int + current_setting('max_wal_senders')::int) + 64)});
	my $wpid = $nt->safe_psql('postgres', 'SELECT worker_pid FROM etcd_lock_status');
	my @names = map { "'/tryowed/q/$_'" } 1 .. $slots;
	my $sql = 'BEGIN;';
	while (my @chunk = splice(@names, 0, 128))
	{
		$sql .= ' SELECT etcd_xact_lock_many(ARRAY[' . join(',', @chunk) . ']);';
	}
	ok_sql($s, $sql);
	kill 'STOP', $wpid or die "SIGSTOP $wpid: $!";
	ok_sql($s, 'ROLLBACK');
	is(ok_sql($s, "SELECT etcd_try_lock('/tryowed/x')"), 'f', '20.found: the try-lock does not get the name B holds');
	kill 'CONT', $wpid;
	ok(wait_until(sub { $nt->safe_psql('postgres', 'SELECT releases_queued + releases_attempted FROM etcd_lock_status') eq '0' }, 30),
		'20.found: the queued releases drain once the worker runs');
	run($s, 'SELECT 1');    # owed releases are handed on at the next statement
	ok(wait_until(sub { !exists keys_under('/tryowed/x/')->{$mykey} }, 20),
		'20.found: the own key the try gave up is removed (before: it stayed under the live lease)');
	ok_sql($sb, "SELECT etcd_unlock('/tryowed/x')");
	my $sc = sess($a);
	is(ok_sql($sc, "SELECT etcd_try_lock('/tryowed/x')"), 't',
		'20.found: once B unlocks, another session gets the name (before: the leftover blocked it)');
	ok_sql($sc, "SELECT etcd_unlock('/tryowed/x')");
	ok(wait_until(sub { !%{ keys_under('/tryowed/') } }, 30), '20.found: no key left');
	$_->quit for $s, $sb, $sc;
	$nt->stop;
}

# --- issue 24 item 6: a reload that changes etcd_lock.endpoints moves the
# worker's keepalive stream to the new list. Before, renewals kept going
# through the old endpoint until it broke: cut off there, the stream
# stalled and counted failures although the new endpoint answered.
{
	my $fp = FaultProxy->start($etcd->{endpoint});
	my $nr = etcd_node('rev_reload', { endpoint => $fp->endpoint }, 'etcd_lock.lease_ttl' => '6s');
	my $s = sess($nr);
	my $tok = ok_sql($s, "SELECT etcd_lock('/reload24')");
	sleep 3;    # renewals are on the stream through the proxy
	$nr->safe_psql('postgres', "ALTER SYSTEM SET etcd_lock.endpoints = '$etcd->{endpoint}'; SELECT pg_reload_conf()");
	ok(wait_until(sub { $nr->log_contains('keepalive stream reopens on the new endpoints') }, 10),
		'24.6: the worker reopens the keepalive stream after the endpoints reload');
	my $f0 = $nr->safe_psql('postgres', 'SELECT failures FROM etcd_lock_status');
	$fp->hold;    # the old endpoint goes silent
	sleep 8;
	is(ok_sql($s, "SELECT etcd_lock_token('/reload24')"), $tok, '24.6: the lock is still held after more than a TTL');
	is($nr->safe_psql('postgres', 'SELECT failures FROM etcd_lock_status'), $f0,
		'24.6: no failed request: nothing goes to the old endpoint');
	ok_sql($s, "SELECT etcd_unlock('/reload24')");
	$s->quit;
	$fp->pass;
	$nr->stop;
	$fp->stop;
}

# --- issue 22 item 4: an acquire cut short whose txn reaches etcd only
# after the worker's read found no key. Before, that read let the queue
# place go: the key, under the session's live lease, blocked the name
# until the session ended. Now the place is read again once a late
# request must have been applied, and the key is removed.
{
	my $fp = FaultProxy->start($etcd->{endpoint});
	my $nl = etcd_node('rev_late', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '30s', 'etcd_lock.request_timeout' => '2s');
	my $s = sess($nl);
	my $o = sess($b);
	ok_sql($s, "SELECT etcd_lock('/late/warm'); SELECT etcd_unlock('/late/warm')");    # the session's lease
	$fp->drop_reply('/v3/kv/txn', 'late=4000');
	my ($out, $err) = run($s, "SELECT etcd_lock('/late/x', '1 s')");
	like($err, qr/55P03/, '22.4: the acquire is cut short by its timeout');
	ok(wait_until(sub { $fp->log_text =~ /late request forwarded/ }, 15), '22.4: its txn reaches etcd 4 s late');
	ok(wait_until(sub { scalar(grep { m{^/late/x/} } keys %{ keys_under('/late/') }) }, 5),
		'22.4: ... and creates the key under the session\'s live lease');
	ok(wait_until(sub { !grep { m{^/late/x/} } keys %{ keys_under('/late/') } }, 30),
		'22.4: the worker removes the late key while the session lives (before: it stayed)');
	is(ok_sql($o, "SELECT etcd_try_lock('/late/x')"), 't', '22.4: another session takes the name');
	ok_sql($o, "SELECT etcd_unlock_all()");
	$s->quit;
	$o->quit;
	$nl->stop;
	$fp->stop;
}

# --- issue 22 item 7: the lock/semaphore mix-up is found behind any
# number of older keys of nested names. Before, with 64 of them first, the
# first page held no lock key, no conflict was raised, and an exclusive
# lock held beside the semaphore's permits (an exclusive key does not
# block on permit keys).
{
	my $s = sess($a);
	my $o = sess($b);
	etcd_put($etcd, "/mix/zz/$_", 'older') for 1 .. 70;
	ok_sql($s, "SELECT etcd_semaphore('/mix', 2)");
	my ($out, $err) = run($o, "SELECT etcd_lock('/mix', '1 s')");
	like($err, qr/42809/, '22.7: a lock on a semaphore name behind 70 nested keys: 42809');
	($out, $err) = run($o, "SELECT etcd_lock_shared('/mix', '1 s')");
	like($err, qr/42809/, '22.7: ... a shared lock too');
	($out, $err) = run($o, "SELECT etcd_semaphore('/mix', 3, '1 s')");
	like($err, qr/22023/, '22.7: ... and a semaphore of another size: 22023');
	is(scalar(grep { m{^/mix/[0-9a-f]+} } keys %{ keys_under('/mix/') }), 1, '22.7: only the permit key is left');
	ok_sql($s, "SELECT etcd_unlock_all()");
	$s->quit;
	$o->quit;
}

# --- issue 22 item 8: a backend's own grant whose answer is lost is
# handed to the worker for revocation, not forgotten (and its ID is in the
# lease file from before it is sent). The pool is used up and the worker
# stopped, so the fifth session grants its own lease; the proxy loses the
# answer after etcd applied it. Before, that lease stayed in etcd for its
# TTL (30 s), known to no one.
{
	my %before = map { $_ => 1 } etcd_lease_ids();
	my $fp = FaultProxy->start($etcd->{endpoint});
	my $ng = etcd_node('rev_grant', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '30s', 'etcd_lock.request_timeout' => '2s');
	my $pool = sub { scalar grep { !$before{$_} } etcd_lease_ids() };
	ok(wait_until(sub { $pool->() >= 4 }, 20), '22.8: the worker granted its pool');
	my @s = map { sess($ng) } 1 .. 5;
	my $wpid = $ng->safe_psql('postgres', 'SELECT worker_pid FROM etcd_lock_status');
	kill 'STOP', $wpid or die "SIGSTOP $wpid: $!";
	ok_sql($s[$_], "SELECT etcd_lock('/gr/$_')") for 0 .. 3;    # the pool's four leases
	my %known = map { $_ => 1 } etcd_lease_ids();
	$fp->drop_reply('/v3/lease/grant', 'hold');
	my ($out, $err) = run($s[4], "SELECT etcd_lock('/gr/4')");
	like($err, qr/58000.*grant a lease|grant a lease/s, '22.8: the fifth session\'s grant fails (its answer lost)');
	my @orphan = grep { !$known{$_} } etcd_lease_ids();
	is(scalar @orphan, 1, '22.8: ... though etcd granted it');
	kill 'CONT', $wpid;
	ok(wait_until(sub { my %now = map { $_ => 1 } etcd_lease_ids(); !grep { $now{$_} } @orphan }, 15),
		'22.8: the worker revokes that lease (before: it stayed for its TTL)');
	ok_sql($s[4], "SELECT etcd_lock('/gr/4')");
	ok_sql($_, 'SELECT etcd_unlock_all()') for @s;
	$_->quit for @s;
	$ng->stop;
	$fp->stop;
}

# --- issue 22 item 8, first part: a lease_ttl reload while a pool grant's
# answer is lost. The grant (TTL 3) is resent with its own TTL; before,
# that resend also replaced the TTL the loop compares the other pool
# slots with, so slots already granted again at the new TTL (30) were
# revoked and granted once more at the old one (3), then again at 30.
# Counted from etcd's own metrics on an etcd of its own: after the reload,
# no grant carries the old TTL, and there are at most as many revocations
# as pool slots plus the resent one. (With the old line put back this test
# still passed, in three timings tried: the grant's timeout makes etcd
# "unreachable", the renewals are resent at once when it answers again, and
# a slot whose renewal is in flight is skipped in the very turn of the
# resend. It guards the churn count, not that one line.)
{
	my $em = start_etcd();
	my $metric = sub {
		my $m = `curl -s -m 5 $em->{endpoint}/metrics`;
		my %v;
		$v{granted} = $1 if $m =~ /^etcd_debugging_lease_granted_total (\d+)/m;
		$v{revoked} = $1 if $m =~ /^etcd_debugging_lease_revoked_total (\d+)/m;
		$v{le4} = $1 if $m =~ /^etcd_debugging_lease_ttl_total_bucket\{le="4"\} (\d+)/m;
		return \%v;
	};
	my $leases = sub {
		my $j = `curl -s -m 5 $em->{endpoint}/v3/lease/leases -d '{}'`;
		return scalar @{ (eval { decode_json($j) } // {})->{leases} // [] };
	};
	my $fp = FaultProxy->start($em->{endpoint});
	my $nr = etcd_node('rev_ttl', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '3s', 'etcd_lock.request_timeout' => '2500ms');
	ok(wait_until(sub { $leases->() >= 4 }, 20), '22.8a: the worker granted its pool (TTL 3 s)');
	my $s = sess($nr);
	# held, not cut: the grant stays in flight until request_timeout, so the
	# reload comes before its resend. The regranted slots (TTL 30) are
	# renewed every 10 s, so at the resend (2.5 s + the 1 s retry pause)
	# none has a renewal in flight (such a slot is not looked at in a turn)
	$fp->drop_reply('/v3/lease/grant', 'hold');
	ok_sql($s, "SELECT etcd_lock('/ttl8')");    # adopts a pool lease: the refill's answer is lost
	ok(wait_until(sub { $fp->status->{drops_fired} >= 1 }, 10), '22.8a: the refill grant\'s answer was lost');
	my $m0 = $metric->();
	$nr->safe_psql('postgres', "ALTER SYSTEM SET etcd_lock.lease_ttl = '30s'; SELECT pg_reload_conf();");
	# the resend (after request_timeout) and the turns after it
	sleep_full(8);
	my $m1 = $metric->();
	my $old_ttl = $m1->{le4} - $m0->{le4};
	my $revoked = $m1->{revoked} - $m0->{revoked};
	note "22.8a: after the reload: " . ($m1->{granted} - $m0->{granted}) . " grants ($old_ttl with the old TTL), $revoked revocations";
	is($old_ttl, 0, '22.8a: no lease is granted with the old TTL after the reload');
	ok($revoked <= 4 + 1, "22.8a: no grant/revoke churn: $revoked revocations for 4 pool slots and the resent grant");
	is($nr->safe_psql('postgres', "SELECT etcd_try_lock('/ttl8')"), 'f', '22.8a: the session still holds its lock');
	ok_sql($s, 'SELECT etcd_unlock_all()');
	$s->quit;
	$nr->stop;
	$fp->stop;
	stop_etcd($em);
}

ok(!$a->log_contains('terminated by signal') && !$b->log_contains('terminated by signal'), 'no backend crashed');

done_testing();
