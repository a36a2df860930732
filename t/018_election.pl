# Leader election (version 1.1) across two instances on one etcd, and with
# etcd's own Go client (clientv3/concurrency.Election, t/go_election):
#  1. SQL campaigns and wins on an empty name (a token, its key in etcd);
#     etcd_leader elsewhere shows the value and token (is_mine false there,
#     true here; any role may call it); campaigning again while leader
#     proclaims the new value and keeps the token;
#  2. a second campaigner on the other instance waits until the leader
#     resigns, then wins with a larger token; etcd_try_campaign fails (and
#     leaves no key) while someone leads; the timeout argument (55P03, no
#     key left); proclaim changes value and revision, not the token, and is
#     seen elsewhere; proclaim/resign by a non-leader (55000 / WARNING);
#  3. etcd_observe: wakes on a proclaim, returns at once for a stale
#     revision, returns the unchanged state at its timeout, and wakes when
#     the leader resigns (no leader);
#  4. Go interop, SQL leading: the Go candidate waits, Go sees the SQL
#     value and token, Go's Observe sees an SQL proclaim, SQL resigns and Go
#     leads (seen by SQL, is_mine false);
#  5. Go interop, Go leading: SQL campaign with a timeout fails (55P03),
#     SQL observe sees Go's proclaim, Go resigns (SIGTERM) and SQL's pending
#     campaign wins;
#  6. the end of a leading session (pg_terminate_backend) and the loss of a
#     leader's lease (revoked in etcd) hand leadership to the next
#     campaigner;
#  7. a name held with etcd_lock cannot be campaigned on, nor a name with a
#     candidate locked (42809, no key left);
# and no key is left under the test's names at the end.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use IPC::Run;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $t_begin = time;

# --- the Go election client (etcd's go.etcd.io/etcd/client/v3):
# $ENV{GO_ELECTION}, else built here if Go 1.26 is present; skipped
# otherwise (not under CI)
my $go = $ENV{GO_ELECTION};
my $go_skip;
if (!$go)
{
	if (-x '/usr/local/go/bin/go')
	{
		my $dir = PostgreSQL::Test::Utils::tempdir('go_election');
		$go = "$dir/go-election";
		my $log = "$dir/build.log";
		if (system("sh '$FindBin::RealBin/go_election/build.sh' '$go' >'$log' 2>&1") != 0)
		{
			fail('building t/go_election: ' . slurp_file($log));
			$go_skip = 'the Go election client did not build';
		}
	}
	else
	{
		$go_skip = 'GO_ELECTION is not set and there is no /usr/local/go/bin/go to build t/go_election';
	}
}
elsif (!-x $go)
{
	$go_skip = "GO_ELECTION=$go is not an executable";
}
fail("the Go election client is required under CI: $go_skip") if $go_skip && $ENV{CI};

my $etcd = start_etcd();
(my $ep = $etcd->{endpoint}) =~ s{^http://}{};
my $na = etcd_node('el_a', $etcd);
my $nb = etcd_node('el_b', $etcd);

# leader(s_or_node, name): etcd_leader(name) as a hash (NULL: undef)
sub leader
{
	my ($s, $name) = @_;
	my $sql = "SELECT coalesce(value, '<null>'), coalesce(token::text, '<null>'), coalesce(lease_id, '<null>'), "
	  . "coalesce(revision::text, '<null>'), is_mine FROM etcd_leader('$name')";
	my $out = $s->isa('PostgreSQL::Test::Cluster') ? $s->safe_psql('postgres', $sql) : ok_sql($s, $sql);
	my %r;
	@r{qw(value token lease_id revision is_mine)} = map { $_ eq '<null>' ? undef : $_ } split /\|/, $out, -1;
	return \%r;
}

# row3(out): an etcd_observe row "value|token|revision" ($obs_cols) as a hash
sub row3
{
	my ($out) = @_;
	my %r;
	@r{qw(value token revision)} = map { $_ eq '<null>' ? undef : $_ } split /\|/, $out, -1;
	return \%r;
}
my $obs_cols = "coalesce(value, '<null>'), coalesce(token::text, '<null>'), coalesce(revision::text, '<null>')";

# keys_under(name): the keys of an election name in etcd (a list)
sub keys_under
{
	my ($name) = @_;
	my @k = sort keys %{ etcd_keys($etcd, "$name/") };
	return @k;
}

# etcd_kv(key): create_revision, mod_revision, lease (decimal) of one key
sub etcd_kv
{
	my ($key) = @_;
	my $k = encode_base64($key, '');
	my $r = JSON::PP::decode_json(`curl -s $etcd->{endpoint}/v3/kv/range -d '{"key":"$k"}'`);
	my $kv = ($r->{kvs} // [])->[0] or return undef;
	return { rev => $kv->{create_revision}, modrev => $kv->{mod_revision}, lease => $kv->{lease} };
}

# campaign_waiting(s, name, nkeys): the session's backend is busy in a wait
# (wait_event_type Extension) and the name has nkeys keys in etcd
sub campaign_waiting
{
	my ($s, $name, $nkeys) = @_;
	return wait_until(
		sub {
			$s->{node}->safe_psql('postgres',
				"SELECT state = 'active' AND wait_event_type IS NOT DISTINCT FROM 'Extension' "
				  . "FROM pg_stat_activity WHERE pid = $s->{pid}") eq 't'
			  && scalar(keys_under($name)) == $nkeys;
		},
		20);
}

# Go helpers: go_start(args) runs the client in the background; go_wait(g,
# re) waits for a line; go_run(args) runs it to its end: (out, err, status)
my @go_running;

sub go_start
{
	my %g = (out => '', err => '');
	$g{h} = IPC::Run::start([ $go, @_, '-ep', $ep ], '>', \$g{out}, '2>', \$g{err});
	push @go_running, \%g;
	return \%g;
}

sub go_pump
{
	my ($g) = @_;
	eval { $g->{h}->pump_nb if $g->{h}->pumpable; };
}

sub go_wait
{
	my ($g, $re, $timeout) = @_;
	return wait_until(sub { go_pump($g); $g->{out} =~ $re }, $timeout // 30);
}

sub go_finish
{
	my ($g) = @_;
	my $t = IPC::Run::timer(30);
	$t->start;
	while ($g->{h}->pumpable && !$t->is_expired)
	{
		go_pump($g);
		usleep(10_000);
	}
	$g->{h}->kill_kill if $g->{h}->pumpable;
	$g->{h}->finish;
	return ($g->{h}->results)[0];
}

sub go_run
{
	my ($out, $err) = ('', '');
	my $ok = eval {
		IPC::Run::run([ $go, @_, '-ep', $ep ], '>', \$out, '2>', \$err, IPC::Run::timeout(30));
		1;
	};
	return ($out, $err . ($ok ? '' : $@), $ok ? $? >> 8 : -1);
}

END
{
	local $?;
	for my $g (@go_running)
	{
		eval { $g->{h}->kill_kill if $g->{h}->pumpable; };
	}
}

my $sa = sess($na);
my $sa2 = sess($na);
my $sb = sess($nb);
my $sb2 = sess($nb);

# ---- 1. an empty name: SQL campaigns and wins
my $n = '/el/basic';
my $tok1 = ok_sql($sa, "SELECT etcd_campaign('$n', 'alpha')");
ok($tok1 > 0, "etcd_campaign on an empty name wins at once: token $tok1");
my $l = leader($nb, $n);
is_deeply([ @$l{qw(value token is_mine)} ], [ 'alpha', $tok1, 'f' ],
	'etcd_leader on the other instance: the value, the same token, is_mine false');
my @k = keys_under($n);
is_deeply(\@k, ["$n/$l->{lease_id}"], 'etcd holds one key, <name>/<lease_id>');
my $kv = etcd_kv("$n/$l->{lease_id}");
is_deeply([ $kv->{rev}, $kv->{modrev} ], [ $tok1, $l->{revision} ],
	'token = the key\'s create_revision, revision = its mod_revision');
is(etcd_keys($etcd, "$n/")->{"$n/$l->{lease_id}"}, 'alpha', 'the key\'s value is the campaign value');
is(leader($sa, $n)->{is_mine}, 't', 'etcd_leader in the leading session: is_mine true');
$nb->safe_psql('postgres', 'CREATE ROLE el_plain LOGIN');
is($nb->safe_psql('postgres', "SET ROLE el_plain; SELECT value, token FROM etcd_leader('$n')"),
	"alpha|$tok1", 'etcd_leader is executable by a role without etcd_lock_user');
is(ok_sql($sa, "SELECT etcd_campaign('$n', 'alpha2')"), $tok1,
	'campaigning again while leader returns the same token');
$l = leader($nb, $n);
is_deeply([ @$l{qw(value token)} ], [ 'alpha2', $tok1 ], '... and proclaims the new value');

# ---- 2. a second campaigner waits for the resignation
my $mb = start_query($sb, "SELECT etcd_campaign('$n', 'beta')");
ok(campaign_waiting($sb, $n, 2), 'a campaigner on the other instance waits (its key queued in etcd)');
is(ok_sql($sb2, "SELECT etcd_try_campaign('$n', 'gamma')"), 'f', 'etcd_try_campaign is false while someone leads');
is(scalar(keys_under($n)), 2, '... and leaves no key');
my ($out, $err) = run($sb2, "SELECT etcd_campaign('$n', 'delta', '300 ms')");
like($err, qr/ERROR:  55P03: could not obtain leadership of etcd election/, 'etcd_campaign with a timeout: 55P03 while someone leads, naming the election');
is(scalar(keys_under($n)), 2, '... and leaves no key');

my $rev0 = $l->{revision};
my $modrev = ok_sql($sa, "SELECT etcd_proclaim('$n', 'alpha3')");
ok($modrev > $rev0, "etcd_proclaim returns the new mod_revision ($modrev > $rev0)");
$l = leader($nb, $n);
is_deeply([ @$l{qw(value token revision)} ], [ 'alpha3', $tok1, $modrev ],
	'the proclaim is seen on the other instance: new value and revision, same token');

($out, $err) = run($sb2, "SELECT etcd_proclaim('$n', 'usurper')");
like($err, qr/ERROR:  55000/, 'etcd_proclaim by a session that is not the leader: 55000');
($out, $err) = run($sb2, "SELECT etcd_resign('$n')");
is($out, 'f', 'etcd_resign by a session not campaigning on the name is false');
like($err, qr/WARNING/, '... with a WARNING');
is(leader($na, $n)->{value}, 'alpha3', 'the leader is unchanged');
ok(!query_done($sb, $mb), 'the second campaigner is still waiting');

is(ok_sql($sa, "SELECT etcd_resign('$n')"), 't', 'the leader resigns');
my ($tok2) = finish_query($sb, $mb, 30);
ok($tok2 > $tok1, "the waiting campaigner wins with a larger token ($tok2 > $tok1)");
$l = leader($na, $n);
is_deeply([ @$l{qw(value token is_mine)} ], [ 'beta', $tok2, 'f' ], 'etcd_leader on the first instance shows it');
is(ok_sql($sb, "SELECT etcd_resign('$n')"), 't', 'it resigns too');
$l = leader($na, $n);
is_deeply([ @$l{qw(value token lease_id revision is_mine)} ], [ undef, undef, undef, undef, 'f' ],
	'no leader: etcd_leader is all NULL, is_mine false');
is(scalar(keys_under($n)), 0, 'no key left under the name');

# ---- 3. etcd_observe
$n = '/el/obs';
my $tok = ok_sql($sa, "SELECT etcd_campaign('$n', 'v1')");
$l = leader($na, $n);
my $mo = start_query($sb, "SELECT $obs_cols FROM etcd_observe('$n', $l->{revision}, '20s')");
ok(campaign_waiting($sb, $n, 1), 'etcd_observe with the current revision waits');
$modrev = ok_sql($sa, "SELECT etcd_proclaim('$n', 'v2')");
my ($o) = finish_query($sb, $mo, 30);
is_deeply(row3($o), { value => 'v2', token => $tok, revision => $modrev },
	'etcd_observe returns after the leader proclaims: the new value and revision');
my $t0 = time;
($o) = run($sb, "SELECT $obs_cols FROM etcd_observe('$n', $l->{revision}, '20s')", 30);
my $el = time - $t0;
is_deeply(row3($o), { value => 'v2', token => $tok, revision => $modrev },
	'etcd_observe with a stale revision returns the current state');
ok($el < 15, sprintf('... without waiting for its 20 s timeout (%.2f s)', $el));
($o) = run($sb, "SELECT $obs_cols FROM etcd_observe('$n', 0, '20s')", 30);
is(row3($o)->{value}, 'v2', 'etcd_observe with last_revision 0 returns the current state');
$t0 = time;
($o) = run($sb, "SELECT $obs_cols FROM etcd_observe('$n', $modrev, '1s')", 30);
$el = time - $t0;
is_deeply(row3($o), { value => 'v2', token => $tok, revision => $modrev },
	'etcd_observe with no change returns the unchanged state at its timeout');
ok($el >= 0.9, sprintf('... after waiting for it (%.2f s)', $el));
$mo = start_query($sb, "SELECT $obs_cols FROM etcd_observe('$n', $modrev, '20s')");
ok(campaign_waiting($sb, $n, 1), 'etcd_observe waits again');
ok_sql($sa, "SELECT etcd_resign('$n')");
($o) = finish_query($sb, $mo, 30);
is_deeply(row3($o), { value => undef, token => undef, revision => undef },
	'etcd_observe returns when the leader resigns: no leader');

# a plpgsql loop follows leadership: two changes (a new leader, a proclaim)
$mo = start_query($sb, <<"SQL");
DO \$\$
DECLARE r record; seen text := '';
BEGIN
	r := etcd_observe('$n', 0, '20s');
	WHILE seen NOT LIKE '%f2%' LOOP
		r := etcd_observe('$n', coalesce(r.revision, 0), '20s');
		IF r.value IS NOT NULL THEN seen := seen || r.value || ','; END IF;
	END LOOP;
	RAISE NOTICE 'seen=%', seen;
END \$\$;
SQL
ok(campaign_waiting($sb, $n, 0), 'a plpgsql loop waits in etcd_observe');
ok_sql($sa, "SELECT etcd_campaign('$n', 'f1')");
usleep(300_000);
ok_sql($sa, "SELECT etcd_proclaim('$n', 'f2')");
(undef, $err) = finish_query($sb, $mo, 60);
like($err, qr/seen=(f1,)?f2,/, 'the plpgsql loop follows the new leader and its proclaim');
ok_sql($sa, "SELECT etcd_resign('$n')");

# ---- 4. and 5. Go interop
SKIP:
{
	skip "Go interop: $go_skip", 30 if $go_skip;

	# -- 4. SQL leads, Go campaigns
	$n = '/el/go1';
	my $stok = ok_sql($sa, "SELECT etcd_campaign('$n', 'sqlval')");
	my $sl = leader($na, $n);
	my $g = go_start('campaign', '-name', $n, '-value', 'goval', '-hold', '60s', '-ttl', '10');
	ok(go_wait($g, qr/campaigning key=\S+\n/), 'Go campaigns on the name SQL leads');
	my ($gkey) = $g->{out} =~ /campaigning key=(\S+)/;
	ok(wait_until(sub { scalar(keys_under($n)) == 2 }, 20), 'Go\'s key is queued in etcd');
	sleep_full(0.5);
	go_pump($g);
	unlike($g->{out}, qr/leader key/, 'Go waits while SQL leads');
	my ($gout, $gerr, $rc) = go_run('leader', '-name', $n);
	is($gout, "leader value=sqlval rev=$stok modrev=$sl->{revision} lease=$sl->{lease_id}\n",
		'Go Election.Leader reports SQL\'s value, token, revision and lease');

	my $gobs = go_start('observe', '-name', $n, '-count', '2', '-timeout', '20s');
	ok(go_wait($gobs, qr/observed .*\n/), 'Go Observe reports the current leader first')
	  or diag($gobs->{err});
	like($gobs->{out}, qr/^observed value=sqlval rev=$stok /, '... SQL\'s value');
	my $smod = ok_sql($sa, "SELECT etcd_proclaim('$n', 'sqlval2')");
	ok(go_wait($gobs, qr/observed value=sqlval2 rev=$stok modrev=$smod\n/),
		'Go Observe sees the SQL proclaim (value, same token, new revision)')
	  or diag("out: $gobs->{out} err: $gobs->{err}");
	is(go_finish($gobs), 0, 'Go observe exits 0 after its lines');

	is(ok_sql($sa, "SELECT etcd_resign('$n')"), 't', 'SQL resigns');
	ok(go_wait($g, qr/leader key=\S+ rev=\d+\n/), 'Go becomes leader') or diag($g->{err});
	my ($gk, $grev) = $g->{out} =~ /leader key=(\S+) rev=(\d+)/;
	is($gk, $gkey, 'with the key it queued');
	ok($grev > $stok, "Go's token is larger ($grev > $stok)");
	my $gl = leader($nb, $n);
	is_deeply([ @$gl{qw(value token is_mine)} ], [ 'goval', $grev, 'f' ],
		'SQL etcd_leader shows Go\'s value and token, is_mine false');
	$g->{h}->signal('TERM');
	is(go_finish($g), 0, 'Go exits cleanly on SIGTERM');
	like($g->{out}, qr/resigned\n/, '... having resigned');
	is(scalar(keys_under($n)), 0, 'no key left under the name');

	# -- 5. Go leads, SQL campaigns
	$n = '/el/go2';
	$g = go_start('campaign', '-name', $n, '-value', 'g1', '-hold', '60s', '-proclaim', 'g2',
		'-after', '5s', '-ttl', '10');
	ok(go_wait($g, qr/leader key=\S+ rev=\d+\n/), 'Go leads an empty name') or diag($g->{err});
	($gk, $grev) = $g->{out} =~ /leader key=(\S+) rev=(\d+)/;
	$gl = leader($na, $n);
	is_deeply([ @$gl{qw(value token is_mine)} ], [ 'g1', $grev, 'f' ],
		'SQL etcd_leader shows Go\'s value and token');
	is("$n/$gl->{lease_id}", $gk, 'and Go\'s lease');
	$mo = start_query($sb, "SELECT $obs_cols FROM etcd_observe('$n', $gl->{revision}, '20s')");
	($out, $err) = run($sa, "SELECT etcd_campaign('$n', 'sql', '500 ms')");
	like($err, qr/ERROR:  55P03/, 'SQL etcd_campaign with a timeout: 55P03 while Go leads');
	is_deeply([ keys_under($n) ], [$gk], '... and leaves no key');
	my $mc = start_query($sa, "SELECT etcd_campaign('$n', 'sql')");
	ok(campaign_waiting($sa, $n, 2), 'SQL etcd_campaign waits while Go leads');
	ok(go_wait($g, qr/proclaimed\n/), 'Go proclaims') or diag($g->{err});
	($o) = finish_query($sb, $mo, 30);
	my $r = row3($o);
	is_deeply([ @$r{qw(value token)} ], [ 'g2', $grev ], 'SQL etcd_observe sees Go\'s proclaimed value, same token');
	ok($r->{revision} > $gl->{revision}, 'and a new revision');
	ok(!query_done($sa, $mc), 'SQL still waits');
	$g->{h}->signal('TERM');
	my ($stok2) = finish_query($sa, $mc, 30);
	ok($stok2 > $grev, "Go resigns (SIGTERM): SQL's pending campaign wins ($stok2 > $grev)");
	is(go_finish($g), 0, 'Go exited cleanly');
	($gout) = go_run('leader', '-name', $n);
	like($gout, qr/^leader value=sql rev=$stok2 /, 'Go Election.Leader reports the SQL leader');
	ok_sql($sa, "SELECT etcd_resign('$n')");
	($gout) = go_run('leader', '-name', $n);
	is($gout, "noleader\n", 'after SQL resigns Go sees no leader');
}

# ---- 6. session end and lease loss hand leadership on
$n = '/el/term';
my $victim = sess($na);
my $vtok = ok_sql($victim, "SELECT etcd_campaign('$n', 'first')");
$mb = start_query($sb, "SELECT etcd_campaign('$n', 'second')");
ok(campaign_waiting($sb, $n, 2), 'a second campaigner waits');
$na->safe_psql('postgres', "SELECT pg_terminate_backend($victim->{pid})");
my ($ttok) = finish_query($sb, $mb, 30);
ok($ttok > $vtok, "the leader's backend terminated: the waiting campaigner wins ($ttok > $vtok)");
is(leader($na, $n)->{value}, 'second', 'etcd_leader shows it');
eval { $victim->quit };

# a leader whose lease is revoked in etcd loses leadership
my $ltok = ok_sql($sa, "SELECT etcd_campaign('/el/lost', 'doomed')");
$mb = start_query($sb2, "SELECT etcd_campaign('/el/lost', 'heir')");
ok(campaign_waiting($sb2, '/el/lost', 2), 'a campaigner waits behind a leader');
$l = leader($na, '/el/lost');
my $lease_dec = do { no warnings 'portable'; hex($l->{lease_id}) };
system("curl -s $etcd->{endpoint}/v3/lease/revoke -d '{\"ID\":\"$lease_dec\"}' >/dev/null");
my ($htok) = finish_query($sb2, $mb, 30);
ok($htok > $ltok, "the leader's lease revoked: the waiting campaigner wins ($htok > $ltok)");
$l = leader($na, '/el/lost');
is_deeply([ @$l{qw(value is_mine)} ], [ 'heir', 'f' ], 'the former leader sees the new leader, is_mine false');
($out, $err) = run($sa, "SELECT etcd_proclaim('/el/lost', 'still me?')");
like($err, qr/ERROR/, 'the former leader cannot proclaim');
ok_sql($sb2, "SELECT etcd_resign('/el/lost')");
ok_sql($sb, "SELECT etcd_resign('$n')");

# ---- 7. a name held with etcd_lock is not an election
$n = '/el/mix';
ok_sql($sa2, "SELECT etcd_lock('$n')");
($out, $err) = run($sb, "SELECT etcd_campaign('$n', 'x')");
like($err, qr/ERROR:  42809/, 'etcd_campaign on a name held with etcd_lock: 42809');
is(scalar(keys_under($n)), 1, '... and leaves no key');
($out, $err) = run($sb, "SELECT etcd_campaign('$n', 'x', '1s')");
like($err, qr/ERROR:  42809/, 'with a timeout too: 42809');
is(scalar(keys_under($n)), 1, '... and leaves no key');
ok_sql($sa2, "SELECT etcd_unlock('$n')");
# and the converse: a name with a candidate is not a lock
ok_sql($sb, "SELECT etcd_campaign('/el/mix2', 'leader')");
($out, $err) = run($sa2, "SELECT etcd_lock('/el/mix2', '5s')");
like($err, qr/ERROR:  42809/, 'etcd_lock on a name with an election candidate: 42809');
is(scalar(keys_under('/el/mix2')), 1, '... and leaves no key');
ok_sql($sb, "SELECT etcd_resign('/el/mix2')");

# ---- 8. leadership lost with the lease (a partition) is reported like a lost lock
{
	my $fp = FaultProxy->start($etcd->{endpoint});
	my $c = etcd_node('el_c', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '3s', 'etcd_lock.request_timeout' => '5s');
	my $h = sess($c);
	my $t = ok_sql($h, "SELECT etcd_campaign('/el/part', 'c')");
	ok($t > 0, 'partition: instance C leads /el/part');
	$fp->hold;
	my $t_hold = time;
	my ($out, $err) = run($sb, "SELECT etcd_campaign('/el/part', 'b', '20 s')", 30);
	ok(defined $out && $out > $t, sprintf('partition: instance B leads %.2f s after the partition began (TTL 3 s), larger token', time - $t_hold))
	  or diag($err);
	$fp->pass;
	($out, $err) = run($h, 'SELECT 1', 10);
	like($err, qr/the etcd lease of this session expired; its locks were lost.*\/el\/part/s,
		'partition: the old leader\'s next statement fails with the lease-loss error naming the election');
	is(ok_sql($h, "SELECT is_mine FROM etcd_leader('/el/part')"), 'f', 'partition: the old leader is not the leader');
	($out, $err) = run($h, "SELECT etcd_proclaim('/el/part', 'stale')");
	like($err, qr/ERROR:  55000/, 'partition: the old leader cannot proclaim');
	is(leader($sb, '/el/part')->{value}, 'b', 'partition: the value is still the new leader\'s');
	ok_sql($sb, "SELECT etcd_resign('/el/part')");
	$h->quit;
	$c->stop;
	$fp->stop;
}

# ---- nothing left behind
is_deeply(etcd_keys($etcd, '/el/'), {}, 'no key left under the test\'s names');
is($nb->safe_psql('postgres', "SELECT count(*) FROM etcd_lock_holders('/el/')"), '0',
	'etcd_lock_holders agrees');
$_->quit for $sa, $sa2, $sb, $sb2;
note sprintf('t/018 ran for %.1f s', time - $t_begin);
done_testing();
