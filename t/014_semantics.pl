# PostgreSQL-like semantics: a release at COMMIT is done when COMMIT
# returns (a procedure that commits and retakes, another instance right
# after COMMIT), the timeout and lock_timeout bound the whole call even
# against a frozen etcd, ROLLBACK is bounded when etcd hangs, and an
# invalid etcd_lock.endpoints at startup refuses instead of falling back.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use IO::Socket::INET;
use MIME::Base64;
use Math::BigInt;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $a = etcd_node('sem_a', $etcd);
my $b = etcd_node('sem_b', $etcd);

# --- the first lock of a new session needs no lease grant: it adopts one
# the worker granted ahead
{
	my $ids = sub {
		my $json = `curl -s -m 5 $etcd->{endpoint}/v3/lease/leases -d '{}'`;
		return map { $_ => 1 } $json =~ /"ID":"(\d+)"/g;
	};
	sleep_full(1);    # the worker fills its pool at start
	my %before = $ids->();
	my $s = session($a);
	$s->query_safe("SELECT etcd_lock('/first')");
	my $hex = $s->query_safe("SELECT lease_id FROM etcd_locks WHERE pid = pg_backend_pid()");
	my $dec = Math::BigInt->from_hex($hex)->bstr;
	ok($before{$dec}, "a new session's first lock used a lease granted before it connected ($hex)");
	$s->query_safe("SELECT etcd_unlock_all()");
	$s->quit;
}

# --- commit-and-retake in a procedure: the previous iteration's release
# is done when COMMIT returns, so the try-lock never fails
{
	my $s = session($a);
	my ($out, $err) = finish_query($s, start_query($s, q{
DO $$DECLARE f int := 0; BEGIN
	FOR i IN 1..100 LOOP
		IF NOT etcd_try_xact_lock('/loop') THEN f := f + 1; END IF;
		COMMIT;
	END LOOP;
	RAISE NOTICE 'failures: %', f;
END$$;}), 120);
	like($err, qr/failures: 0\b/, 'a procedure that commits after each try-lock never fails on its own release (100 iterations)');
	$s->quit;
}

# --- another instance's try-lock right after COMMIT returns succeeds
{
	my $sa = session($a);
	my $sb = session($b);
	my $ok = 0;
	for my $i (1 .. 20)
	{
		$sa->query_safe("BEGIN; SELECT etcd_xact_lock('/after_commit'); COMMIT;");
		my $r = $sb->query_safe("SELECT etcd_try_lock('/after_commit')");
		$ok++ if $r eq 't';
		$sb->query_safe("SELECT etcd_unlock('/after_commit')") if $r eq 't';
	}
	is($ok, 20, "another instance's try-lock right after COMMIT returned succeeded $ok of 20 times");
	$_->quit for $sa, $sb;
}

# --- the timeout bounds the whole call, etcd requests included
{
	my $s = session($a);
	$s->query_safe("SET etcd_lock.request_timeout = '30s'");
	$s->query_safe("SELECT etcd_lock('/warm'); SELECT etcd_unlock('/warm');");
	kill 'STOP', $etcd->{pid};
	my $t0 = time;
	my ($out, $err) = finish_query($s, start_query($s, "\\set VERBOSITY verbose\nSELECT etcd_lock('/frozen', '1s')"), 40);
	my $el = time - $t0;
	like($err, qr/55P03.*could not obtain etcd lock "\/frozen" within the timeout/s,
		'frozen etcd: etcd_lock(name, \'1s\') fails with 55P03');
	ok($el < 10, sprintf('... after %.2f s, not the 30 s request timeout', $el));
	$t0 = time;
	($out, $err) = finish_query($s, start_query($s, "SET lock_timeout = '1s';\nSELECT etcd_lock('/frozen');\nRESET lock_timeout;"), 40);
	$el = time - $t0;
	like($err, qr/55P03.*due to lock_timeout/s, 'frozen etcd: lock_timeout ends the call with 55P03');
	ok($el < 10, sprintf('... after %.2f s', $el));
	($out, $err) = finish_query($s, start_query($s, "SET statement_timeout = '1s';\nSELECT etcd_lock('/frozen');\nRESET statement_timeout;"), 40);
	like($err, qr/57014/, 'frozen etcd: statement_timeout ends the call with 57014');

	# ROLLBACK with etcd hung: bounded by etcd_lock.release_wait
	kill 'CONT', $etcd->{pid};
	$s->query_safe("BEGIN; SELECT etcd_xact_lock('/rb1'), etcd_xact_lock('/rb2');");
	kill 'STOP', $etcd->{pid};
	$t0 = time;
	($out, $err) = finish_query($s, start_query($s, 'ROLLBACK'), 30);
	my $rb = time - $t0;
	ok($rb < 3, sprintf('hung etcd: ROLLBACK returned after %.2f s (release_wait 1 s)', $rb));
	like($err, qr/WARNING:.*release of 2 lock\(s\) ended by this transaction is not confirmed/,
		'hung etcd: ROLLBACK warns that the release is not confirmed yet');
	kill 'CONT', $etcd->{pid};
	ok(wait_until(sub { scalar(keys %{ etcd_keys($etcd, '/rb') }) == 0 }, 20),
		'hung etcd: the worker finished the releases once etcd answered');
	$s->quit;
}

# --- an invalid etcd_lock.endpoints at startup: the functions refuse,
# quoting it; nothing falls back to the default 127.0.0.1:2379
{
	my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 2379,
		Listen => 5, ReuseAddr => 1, Blocking => 0);
	my $bad = PostgreSQL::Test::Cluster->new('badep');
	$bad->init;
	$bad->append_conf('postgresql.conf', "shared_preload_libraries = 'etcd_lock'\netcd_lock.endpoints = 'htp://127.0.0.1:2379'\n");
	$bad->start;
	$bad->safe_psql('postgres', 'CREATE EXTENSION etcd_lock');
	is($bad->safe_psql('postgres', 'SHOW etcd_lock.endpoints'), 'htp://127.0.0.1:2379',
		'bad endpoint at startup: the setting keeps the bad value, not the default');
	my ($rc, $out, $err) = $bad->psql('postgres', "\\set VERBOSITY verbose\nSELECT etcd_lock('/x')");
	like($err, qr/F0000.*etcd_lock\.endpoints is invalid: "htp:\/\/127\.0\.0\.1:2379"/s,
		'bad endpoint at startup: a lock call fails quoting the bad value');
	ok($bad->log_contains('etcd_lock.endpoints is invalid'), 'bad endpoint at startup: the log says so');
	if ($listener)
	{
		my $conn = $listener->accept;
		ok(!defined $conn, 'bad endpoint at startup: nothing connected to 127.0.0.1:2379');
	}
	else
	{
		note 'port 2379 is in use here; the no-fallback connection check is skipped';
	}
	ok(!$bad->log_contains('terminated by signal') && !$bad->log_contains('exited with exit code 1'),
		'bad endpoint at startup: no crash, no worker restart loop');
	# issue 23 item 4: an endpoint with a path is refused at reload with a
	# WARNING (the README says so); before, it was taken, shown by SHOW,
	# and every request went to /v3/v3/...
	my ($arc, $aout, $aerr) = $bad->psql('postgres', "ALTER SYSTEM SET etcd_lock.endpoints = 'http://127.0.0.1:2379/v3'");
	like($aerr, qr/invalid value for parameter "etcd_lock.endpoints".*has a path/s,
		'endpoint with a path: ALTER SYSTEM refuses it');
	$bad->append_conf('postgresql.conf', "etcd_lock.endpoints = 'http://127.0.0.1:2379/v3'\n");
	$bad->reload;
	ok(wait_until(sub { $bad->log_contains('endpoint "http://127.0.0.1:2379/v3" has a path') }, 10),
		'endpoint with a path in postgresql.conf: refused at reload, the log says why');
	is($bad->safe_psql('postgres', 'SHOW etcd_lock.endpoints'), 'htp://127.0.0.1:2379',
		'endpoint with a path at reload: the previous value stays');
	$bad->stop;
}

# --- issue 23 item 3: pointed at etcd's peer port, every request gets
# HTTP 404 (not etcd's client API). Before, etcd_lock_status said
# etcd_reachable = t while every lock failed.
{
	my $np = etcd_node('peerport', { endpoint => $etcd->{peer} });
	my ($rc, $out, $err) = $np->psql('postgres', "SELECT etcd_lock('/pp', '1 s')");
	like($err, qr/not etcd's client API/, 'peer port: a lock fails saying this is not the client API');
	ok(wait_until(sub { $np->safe_psql('postgres', 'SELECT etcd_reachable IS FALSE FROM etcd_lock_status') eq 't' }, 15),
		'peer port: etcd_lock_status says etcd is not reachable');
	sleep 2;
	is($np->safe_psql('postgres', 'SELECT etcd_reachable FROM etcd_lock_status'), 'f',
		'peer port: ... and keeps saying so');
	$np->stop;
}

# --- issue 23 item 5: etcd_lock_holders(name) matches whole path
# components: the name and the names nested under it, not every name that
# starts with the same characters. Before, '/sw' also returned '/swx'.
{
	my $sa = session($a);
	$sa->query_safe("SELECT etcd_lock('/sw'), etcd_lock('/swx'), etcd_lock('/sw/a')");
	my $names = sub {
		join(',', sort split /\n/, $sa->query_safe("SELECT name FROM etcd_lock_holders('$_[0]')"));
	};
	is($names->('/sw'), '/sw,/sw/a', "etcd_lock_holders('/sw'): the name and its nested names, not /swx");
	is($names->('/sw/'), '/sw/a', "etcd_lock_holders('/sw/'): the names nested under /sw");
	is($names->('/swx'), '/swx', "etcd_lock_holders('/swx'): that name");
	like($names->(''), qr{^(.*,)?/sw,/sw/a,/swx(,.*)?$}, "etcd_lock_holders(''): every name");
	$sa->query_safe("SELECT etcd_unlock_all()");
	$sa->quit;
}

# --- issue 23 item 6: etcd_lock.prefix changed (a superuser's SET, or a
# reload) while the session holds locks. Before, the held lock's token read
# NULL, etcd_unlock warned "you don't own" and left the key, and a try-lock
# of the same name took a second, independent key. Now the held locks keep
# the prefix they were taken under, new acquisitions are refused (55000)
# until the session holds nothing, then the new prefix applies.
{
	my $s = sess($a);
	ok_sql($s, "SET etcd_lock.prefix = '/p6a'");
	my $tok = ok_sql($s, "SELECT etcd_lock('/six')");
	ok($tok > 0, 'prefix change: a lock taken under /p6a');
	ok_sql($s, "SET etcd_lock.prefix = '/p6b'");
	is(ok_sql($s, "SELECT etcd_lock_token('/six')"), $tok, 'prefix change: the held lock keeps its token');
	my ($out, $err) = run($s, "SELECT etcd_try_lock('/six')");
	like($err, qr/55000.*etcd_lock.prefix changed while this session holds etcd locks/s,
		'prefix change: a new acquisition is refused (55000)');
	like($err, qr{under prefix "/p6a"; the setting is now "/p6b"}, '... saying which prefixes');
	is(scalar(keys %{ etcd_keys($etcd, '/p6b') }), 0, '... and puts no key under the new prefix');
	($out, $err) = run($s, "SELECT etcd_unlock('/six')");
	is($out, 't', 'prefix change: etcd_unlock releases the held lock');
	unlike($err, qr/WARNING/, '... without a warning');
	is(scalar(keys %{ etcd_keys($etcd, '/p6a/') }), 0, '... and its key under /p6a is gone');
	is(ok_sql($s, "SELECT etcd_try_lock('/six')"), 't', 'prefix change: once nothing is held the new prefix applies');
	is(join(',', map { s{/[0-9a-f]+$}{}r } keys %{ etcd_keys($etcd, '/p6') }), '/p6b/six',
		'... the key is under /p6b');
	ok_sql($s, "SELECT etcd_unlock_all()");
	$s->quit;
}

# --- independent names: data under a name's range that is not a lock key
# of that name (another application's keys, nested names) neither holds
# nor queues; a key with a lock-mode marker this version does not know
# counts as a holder (fail-safe for mixed versions)
{
	etcd_put($etcd, '/svc/pgcluster/leader', 'node1');
	etcd_put($etcd, '/svc/pgcluster/members/node1', '{}');
	my $sa = session($a);
	my $sb = session($b);
	is($sa->query_safe("SELECT etcd_try_lock('/svc/pgcluster')"), 't',
		'foreign keys under a name: a try-lock takes it (they are not holders)');
	my ($out, $err) = finish_query($sb, start_query($sb, "SELECT etcd_lock('/svc/pgcluster', '1 s')"), 20);
	like($err, qr/could not obtain etcd lock "\/svc\/pgcluster" within the timeout/, 'foreign keys under a name: another instance waits for the real holder');
	is($sb->query_safe("SELECT etcd_try_lock('/svc/pgcluster/members')"), 't',
		'a nested name is independent of its parent (other instance)');
	$sa->query_safe("SELECT etcd_unlock('/svc/pgcluster')");
	is($sb->query_safe("SELECT etcd_lock('/svc/pgcluster', '10 s') > 0"), 't',
		'foreign keys under a name: the waiter gets it once the holder releases');
	$sb->query_safe("SELECT etcd_unlock_all()");
	my $k = etcd_keys($etcd, '/svc/pgcluster/');
	is(join(',', sort keys %$k), '/svc/pgcluster/leader,/svc/pgcluster/members/node1',
		'foreign keys under a name: untouched, and no lock key left');

	# a newer version's key with an unknown marker holds the name
	my $lease = `curl -s -m 5 $etcd->{endpoint}/v3/lease/grant -d '{"TTL":"30"}'`;
	my ($id) = $lease =~ /"ID":"(\d+)"/;
	my $key = MIME::Base64::encode_base64(sprintf('/mk/%x.shared9', $id), '');
	system("curl -s -m 5 $etcd->{endpoint}/v3/kv/put -d '{\"key\":\"$key\",\"value\":\"\",\"lease\":\"$id\"}' >/dev/null");
	is($sa->query_safe("SELECT etcd_try_lock('/mk')"), 'f', 'an unknown lock-mode marker counts as a holder (fail-safe)');
	is(scalar(keys %{ etcd_keys($etcd, '/mk/') }), 1, '... and the failed try-lock left no key');
	system("curl -s -m 5 $etcd->{endpoint}/v3/lease/revoke -d '{\"ID\":\"$id\"}' >/dev/null");
	is($sa->query_safe("SELECT etcd_try_lock('/mk')"), 't', '... and once it is gone the name is free');
	$sa->query_safe("SELECT etcd_unlock_all()");
	$_->quit for $sa, $sb;
}

# run_cycle(sessions, names): each session holds its name (xact), then
# waits for the next one's, the last starting last; returns each session's
# (output, errors)
sub run_cycle
{
	my ($sess, $names) = @_;
	my $n = @$sess;
	$sess->[$_]->query_safe("BEGIN; SELECT etcd_xact_lock('$names->[$_]')") for 0 .. $n - 1;
	my @m;
	for my $i (0 .. $n - 1)
	{
		push @m, start_query($sess->[$i], "\\set VERBOSITY verbose\nSELECT etcd_xact_lock('$names->[($i + 1) % $n]', '30 s') > 0");
		usleep(300_000);    # a known order: the last one waits youngest
	}
	my @res = map { [ finish_query($sess->[$_], $m[$_], 60) ] } 0 .. $n - 1;
	$_->query('ROLLBACK') for @$sess;
	return @res;
}

# --- a deadlock across two instances: exactly one side (the younger wait)
# gets 40P01 after deadlock_timeout, the other proceeds
{
	my $sa = session($a);
	my $sb = session($b);
	my $t0 = time;
	my @r = run_cycle([ $sa, $sb ], [ '/dl/a', '/dl/b' ]);
	my $el = time - $t0;
	my @dead = grep { $r[$_][1] =~ /40P01/ } 0 .. 1;
	is(scalar(@dead), 1, 'two-instance deadlock: exactly one side gets 40P01');
	is($dead[0] // -1, 1, '... the one whose wait began last (instance B)');
	like($r[1][1], qr/deadlock detected.*waits for etcd lock "\/dl\/a".*waits for etcd lock "\/dl\/b"/s,
		'... naming the cycle in the detail');
	is($r[0][0], 't', '... the other side got its lock');
	ok($el < 15, sprintf('... resolved in %.1f s (deadlock_timeout 1 s)', $el));
	$_->quit for $sa, $sb;
}

# --- a three-party cycle through a Go client: its keys are what etcd's
# concurrency.Mutex writes (a lease-attached key with an empty value per
# name; the reference Go program cannot hold one lock while waiting for
# another, so they are written through the gateway): the youngest SQL
# waiter is the victim, the Go party is never chosen
{
	my $sa = session($a);
	my $sb = session($b);
	my $lease = `curl -s -m 5 $etcd->{endpoint}/v3/lease/grant -d '{"TTL":"60"}'`;
	my ($id) = $lease =~ /"ID":"(\d+)"/;
	my $go_put = sub {
		my $k = MIME::Base64::encode_base64(sprintf('%s/%x', $_[0], $id), '');
		system("curl -s -m 5 $etcd->{endpoint}/v3/kv/put -d '{\"key\":\"$k\",\"value\":\"\",\"lease\":\"$id\"}' >/dev/null");
	};
	$go_put->('/dl3/c');    # Go holds c
	$sa->query_safe("BEGIN; SELECT etcd_xact_lock('/dl3/a')");
	$sb->query_safe("BEGIN; SELECT etcd_xact_lock('/dl3/b')");
	$go_put->('/dl3/a');    # Go waits for a (held by A)
	my $ma = start_query($sa, "SELECT etcd_xact_lock('/dl3/b', '30 s') > 0");    # A waits for b
	usleep(300_000);
	my $mb = start_query($sb, "\\set VERBOSITY verbose\nSELECT etcd_xact_lock('/dl3/c', '30 s') > 0");    # B waits for c
	my ($ob, $eb) = finish_query($sb, $mb, 60);
	like($eb, qr/40P01/, 'three-party cycle through a Go client: the youngest SQL waiter gets 40P01');
	like($eb, qr/waits for etcd lock "\/dl3\/c"/, '... the detail names the Go client\'s lock');
	$sb->query('ROLLBACK');
	my ($oa, $ea) = finish_query($sa, $ma, 60);
	is($oa, 't', '... the other SQL waiter got its lock once the victim rolled back');
	$sa->query('ROLLBACK');
	system("curl -s -m 5 $etcd->{endpoint}/v3/lease/revoke -d '{\"ID\":\"$id\"}' >/dev/null");
	$_->quit for $sa, $sb;
}

# --- handoff without a read: a waiter whose predecessor is the holder takes
# the lock on its deletion; one whose predecessor was itself a waiter that
# gave up reads the queue again and keeps waiting for the real holder
{
	my $h = session($a);
	my $w1 = session($b);
	my $w2 = session($a);
	my $t0 = $h->query_safe("SELECT etcd_lock('/hg')");
	my $m1 = start_query($w1, "SELECT etcd_lock('/hg', '2 s')");
	usleep(300_000);
	my $m2 = start_query($w2, "SELECT etcd_lock('/hg', '30 s')");
	my ($o1, $e1) = finish_query($w1, $m1, 20);
	like($e1, qr/within the timeout/, 'the middle waiter gives up');
	sleep_full(1);
	ok(!query_done($w2, $m2), 'the last waiter did not take the lock its predecessor gave up: the holder still holds it');
	$h->query_safe("SELECT etcd_unlock('/hg')");
	my ($o2, $e2) = finish_query($w2, $m2, 20);
	ok($o2 > $t0, 'once the holder releases, the last waiter gets it');
	$w2->query_safe("SELECT etcd_unlock('/hg')");
	$_->quit for $h, $w1, $w2;
}

# --- etcd_locks tells the truth: a lock whose lease lapsed shows as lost,
# and locks beyond the registry are counted, not silently dropped
{
	my $c = etcd_node('sem_c', $etcd, 'etcd_lock.lease_ttl' => '3s', 'etcd_lock.max_locks' => '20',
		'etcd_lock.on_lease_loss' => 'warn');
	my $s = session($c);
	$s->query_safe("SELECT etcd_lock('/many/' || i) FROM generate_series(1, 30) i");
	my ($out, $err) = finish_query($s, start_query($s, 'SELECT count(*) FROM etcd_locks'), 20);
	is($out, '20', 'more locks than the registry holds: etcd_locks shows what fits');
	like($err, qr/NOTICE:  etcd_locks: 10 lock\(s\) of this instance are not shown/, '... and says how many it does not');
	is($c->safe_psql('postgres', 'SELECT locks_not_shown FROM etcd_lock_status'), '10',
		'... etcd_lock_status counts them');
	is($c->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE state = 'held'"), '20',
		'... all shown as held');
	kill 'STOP', $etcd->{pid};
	sleep_full(3.5);
	my $lost = $c->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE state = 'lost'");
	kill 'CONT', $etcd->{pid};
	is($lost, '20', 'a lapsed lease: its locks show as lost, not held');
	$s->query('SELECT etcd_unlock_all()');
	$s->quit;
	ok(wait_until(sub { $c->safe_psql('postgres', 'SELECT locks_not_shown FROM etcd_lock_status') eq '0' }, 10),
		'... and nothing is left uncounted once the session ends');
	$c->stop;
}

ok(!$a->log_contains('terminated by signal') && !$b->log_contains('terminated by signal'), 'no backend crashed');
done_testing();
