# Group commit (issue 21): while one backend's acquire or release txn is in
# flight, the others of the instance queue theirs and the first of them
# sends every queued txn as one etcd txn of nested txns. What is checked:
# that it happens (etcd's own request counters: fewer txns than lock
# calls with it on, one per call with it off), that each member gets its
# own answer (tokens, holders, no key left), and that the faults of a batch
# end each member where the fault ends a lone request: the lost reply of a
# batch, a member etcd refuses (its lease revoked behind its back: etcd
# fails the whole batch), a member cancelled while its batch is in flight,
# and the leader cancelled while it sends the batch.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use IPC::Run;

my $etcd = start_etcd();
my $node = etcd_node('gc', $etcd, 'max_connections' => '60');

sub keys_under { return etcd_keys($etcd, $_[0]) }

# etcd's own count of the Txn requests it handled (every gRPC code)
sub etcd_txns
{
	my $m = `curl -s $etcd->{endpoint}/metrics`;
	my $n = 0;
	$n += $1 while $m =~ /^grpc_server_handled_total\{[^}]*grpc_method="Txn"[^}]*\} (\d+(?:\.\d+)?(?:e\+\d+)?)$/mg;
	return $n;
}

# pgbench: clients sessions, each locking and unlocking its own name for
# secs seconds; returns the number of lock+unlock pairs done
sub pairs
{
	my ($n, $clients, $secs, $opts) = @_;
	my $script = "$PostgreSQL::Test::Utils::tmp_check/gc_pair.sql";
	open(my $f, '>', $script) or die;
	print $f "SELECT etcd_lock('/gc/d' || :client_id);\nSELECT etcd_unlock('/gc/d' || :client_id);\n";
	close $f;
	my ($out, $err);
	local $ENV{PGOPTIONS} = $opts // '';
	IPC::Run::run([ 'pgbench', '-n', '-f', $script, '-c', $clients, '-j', 2, '-T', $secs,
		'-h', $n->host, '-p', $n->port, 'postgres' ], '>', \$out, '2>', \$err,
		IPC::Run::timeout($secs + 60)) or die "pgbench failed: $err";
	$out =~ /number of transactions actually processed: (\d+)/ or die "no count in: $out";
	return $1;
}

# --- batching happens, and only with it on
{
	my $t0 = etcd_txns();
	my $on = pairs($node, 16, 4);
	my $t1 = etcd_txns();
	my $off = pairs($node, 16, 4, '-c etcd_lock.group_commit=off');
	my $t2 = etcd_txns();
	my ($r_on, $r_off) = (($t1 - $t0) / (2 * $on), ($t2 - $t1) / (2 * $off));
	note sprintf("16 sessions, distinct names: on %d pairs, %.2f etcd txns a call; off %d pairs, %.2f", $on, $r_on, $off, $r_off);
	cmp_ok($on, '>', 50, '21: lock/unlock pairs were done with group commit on');
	cmp_ok($r_on, '<', 0.7, '21: with it on, etcd handled fewer txns than lock and unlock calls (batches)');
	cmp_ok($r_off, '>', 0.95, '21: with it off, one txn a call (the control: the count sees batches)');
my $st = $node->safe_psql('postgres', 'SELECT batches > 0, max_batch >= 4, batch_members >= 2 * batches FROM etcd_lock_stats');
is($st, 't|t|t', '21: etcd_lock_stats counts batches of several members');
	is(scalar(keys %{ keys_under('/gc/') }), 0, '21: no key is left');
}

# the statistics of node n: column => value
sub stats
{
	my ($n) = @_;
	my $row = $n->safe_psql('postgres',
		q{SELECT row_to_json(s) FROM etcd_lock_stats s});
	return JSON::PP::decode_json($row);
}

# --- the faults of a batch, through a fault proxy; four sessions: the
# first one's txn alone (delayed in the proxy), the three others queued
# behind it and sent as one batch led by the second (one request in flight
# at a time: etcd_lock.group_commit_inflight = 1, so that the batch forms
# the same way every run; with 2, the default, the second would go alone
# beside the first)
my $fp = FaultProxy->start($etcd->{endpoint});
my $nf = etcd_node('gc_fault', { endpoint => $fp->endpoint },
	'etcd_lock.request_timeout' => '3s', 'etcd_lock.lease_ttl' => '30s', 'etcd_lock.group_commit_inflight' => '1');
my @s = map { sess($nf) } 1 .. 4;
ok_sql($_, "SELECT etcd_lock('/gcw/$_->{pid}'); SELECT etcd_unlock('/gcw/$_->{pid}')") for @s;    # leases
my $names = sub { my $p = shift; map { "/$p/$_" } 0 .. 3 };
my $lock_sqls = sub { map { "SELECT etcd_lock('$_') > 0" } @_ };
my $one_key_each = sub {
	my ($p) = @_;
	my $k = keys_under("/$p/");
	my %per;
	$per{ (m{^/$p/(\d)/})[0] }++ for keys %$k;
	return join(',', map { $per{$_} // 0 } 0 .. 3);
};

# 1: the batch reaches etcd and its reply is lost (the connection cut):
# every member resolves its own outcome, as a lone request's lost reply
# does — sent again alone, its txn finds its own key
{
	$nf->safe_psql('postgres', 'SELECT etcd_lock_stats_reset()');
	$fp->drop_reply('request_txn', 'cut');
	my @m = one_batch($fp, \@s, [ $lock_sqls->($names->('gcl')) ]);
	my @r = map { [ finish_query($s[$_], $m[$_], 60) ] } 0 .. 3;
	$fp->delay(0);
	is($fp->status->{drops_fired}, 1, '21: a batch went through the proxy and lost its reply');
	is(join(',', map { $_->[0] . ($_->[1] =~ /ERROR/ ? ' ERR' : '') } @r), 't,t,t,t',
		'21: lost batch reply: every member holds its lock all the same (no error)');
	my $st = stats($nf);
	ok($st->{batches} >= 1 && $st->{max_batch} >= 3, "21: ... the three queued went as one batch (max_batch $st->{max_batch})");
	# (each member sends again alone; or libcurl, which resends a request
	# whose reused connection died before any answer, already did for all)
	note("resent alone: $st->{resent_alone}; txn requests: $st->{txn_requests}");
	is($one_key_each->('gcl'), '1,1,1,1', '21: ... one key per name: the resend found the batch\'s key');
	ok_sql($_, 'SELECT etcd_unlock_all()') for @s;
	ok(wait_until(sub { !%{ keys_under('/gcl/') } }, 30), '21: ... and every key goes with the unlocks');
}

# 2: a member cancelled while its batch is in flight (the reply held): it
# ends at once with 57014 while the leader still waits; the key the batch
# put for it is removed by the worker (handed on, as a lone acquire cut
# short). The leader's request then times out, as a lone request whose
# reply is held does: the other members' calls end with that error (or
# hold, had they time left to send again alone), and their keys go too.
{
	$fp->drop_reply('request_txn', 'hold');
	my @m = one_batch($fp, \@s, [ $lock_sqls->($names->('gcc')) ]);
	ok(wait_until(sub { $fp->status->{drops_fired} == 2 }, 10), '21: the batch is in flight, its reply held');
	$fp->delay(0);
	$nf->safe_psql('postgres', "SELECT pg_cancel_backend($s[2]->{pid})");
	ok(wait_until(sub { query_done($s[2], $m[2]) }, 10), '21: the cancelled member ends ...');
	ok(!query_done($s[1], $m[1]), '21: ... while its leader still waits for the batch');
	my @r = map { [ finish_query($s[$_], $m[$_], 60) ] } 0 .. 3;
	$fp->pass;
	like($r[2][1], qr/57014/, '21: the cancelled member got 57014');
	is($r[0][0], 't', '21: the first session (alone) holds its lock');
	for my $i (1, 3)
	{
		ok($r[$i][0] eq 't' || $r[$i][1] =~ /ERROR:  58000: .*etcd is unreachable/,
			"21: member $i holds or says its request timed out: $r[$i][0] $r[$i][1]");
	}
	ok_sql($_, 'SELECT etcd_unlock_all()') for @s;
	ok(wait_until(sub { !%{ keys_under('/gcc/') } }, 40),
		'21: every key the batch put is removed (the cancelled and timed-out members\' by the worker)');
	my $o = sess($node);
	is(ok_sql($o, "SELECT etcd_try_lock('/gcc/2') AND etcd_try_lock('/gcc/1') AND etcd_try_lock('/gcc/3')"), 't',
		'21: ... another instance takes those names');
	ok_sql($o, 'SELECT etcd_unlock_all()');
	$o->quit;
}

# 3: the leader cancelled while it sends the batch (the reply held): it
# hands the batch on — its members send again alone and hold, without
# waiting for the leader's request time; its own key is removed
{
	$fp->drop_reply('request_txn', 'hold');
	my @m = one_batch($fp, \@s, [ $lock_sqls->($names->('gcx')) ]);
	ok(wait_until(sub { $fp->status->{drops_fired} == 3 }, 10), '21: a batch in flight, its reply held');
	$fp->delay(0);
	my $t0 = time;
	$nf->safe_psql('postgres', "SELECT pg_cancel_backend($s[1]->{pid})");
	my @r = map { [ finish_query($s[$_], $m[$_], 60) ] } 0 .. 3;
	$fp->pass;
	like($r[1][1], qr/57014/, '21: the cancelled leader got 57014');
	is(join(',', map { $r[$_][0] } 0, 2, 3), 't,t,t', '21: its members hold their locks (sent again alone)');
	ok(wait_until(sub { !grep { m{^/gcx/1/} } keys %{ keys_under('/gcx/') } }, 40),
		'21: the key the batch put for the cancelled leader is removed');
	ok_sql($_, 'SELECT etcd_unlock_all()') for @s;
	ok(wait_until(sub { !%{ keys_under('/gcx/') } }, 30), '21: no key is left');
}

# 4: releases in a batch: four etcd_unlock at once, the first delayed
{
	ok_sql($s[$_], "SELECT etcd_lock('/gcu/$_')") for 0 .. 3;
	$nf->safe_psql('postgres', 'SELECT etcd_lock_stats_reset()');
	my @m = one_batch($fp, \@s, [ map { "SELECT etcd_unlock('/gcu/$_')" } 0 .. 3 ]);
	my @r = map { [ finish_query($s[$_], $m[$_], 60) ] } 0 .. 3;
	$fp->delay(0);
	is(join(',', map { $_->[0] } @r), 't,t,t,t', '21: four unlocks, three of them in one batch');
	my $st = stats($nf);
	ok($st->{release_txns} == 4 && $st->{batches} >= 1, "21: ... counted: 4 release txns, $st->{txn_requests} requests");
	is(scalar(keys %{ keys_under('/gcu/') }), 0, '21: ... every key is gone when the calls return');
}
# 5: never two txns of one name in a batch (a txn gives all its puts one
# create_revision, and a name's holder is its oldest key): a try-lock of
# /gcm/a queued ahead of a multi-lock of /gcm/a and /gcm/b. The try goes in
# the batch, the multi-lock alone beside it (it may not share the txn).
# Whichever etcd applies first holds /gcm/a: the try, and the multi-lock
# waits behind it; or the multi-lock, and the try answers "taken". In one
# batch both keys would have one revision and the multi-lock could hold
# /gcm/a beside the try's holder.
{
	$nf->safe_psql('postgres', 'SELECT etcd_lock_stats_reset()');
	my @m = one_batch($fp, \@s, [ "SELECT etcd_lock('/gcm/z') > 0", "SELECT etcd_try_lock('/gcm/a')",
		"SELECT etcd_lock_many(ARRAY['/gcm/a', '/gcm/b'])", "SELECT etcd_lock('/gcm/c') > 0" ]);
	my @r = map { [ finish_query($s[$_], $m[$_], 60) ] } 0, 1, 3;
	$fp->delay(0);
	is(join(',', $r[0][0], $r[2][0]), 't,t', '21: the locks of other names in and beside the batch hold');
	my ($out, $err);
	if ($r[1][0] eq 't')
	{
		ok(wait_until(sub { sess_waiting($s[2], '/gcm/a') }, 10),
			'21: the try holds /gcm/a; the multi-lock of the same name waits behind it');
		my $try_tok = ok_sql($s[1], "SELECT etcd_lock_token('/gcm/a')");
		ok_sql($s[1], "SELECT etcd_unlock('/gcm/a')");
		($out, $err) = finish_query($s[2], $m[2], 30);
		my ($ta) = $out =~ /^\{(\d+),/;
		ok(defined $ta && $ta > $try_tok, "21: ... it holds once the try's holder unlocks, token above the try's ($out$err)");
	}
	else
	{
		is($r[1][0], 'f', '21: the multi-lock was applied first; the try answers "taken"');
		($out, $err) = finish_query($s[2], $m[2], 30);
		ok($out =~ /^\{\d+,\d+\}$/, "21: ... and the multi-lock holds ($out$err)");
	}
	my ($ta, $tb) = $out =~ /(\d+),(\d+)/;
	ok(defined $ta && $ta == $tb, '21: the multi-lock holds both names with one token');
	ok(stats($nf)->{batches} >= 1, '21: (a batch was sent)');
	ok_sql($_, 'SELECT etcd_unlock_all()') for @s;
	ok(wait_until(sub { !%{ keys_under('/gcm/') } }, 30), '21: no key is left');
}
$_->quit for @s;
$nf->stop;
$fp->stop;

# --- the lost reply of a batch, and its late attempt: two endpoints (two
# proxies to one etcd); the first delivers the batch 3 s late and loses its
# reply, the leader's gateway sends it again through the second, as it does
# a lone request (t/023). Every member gets its answer, counted as resent
# late (each member's own count, as the leader's); when the first attempt
# lands after the unlocks it puts the keys again under the live leases,
# and each member's settle read removes them.
{
	my @fp = (FaultProxy->start($etcd->{endpoint}), FaultProxy->start($etcd->{endpoint}));
	my $n2 = etcd_node('gc_late', { endpoint => join(',', map { $_->endpoint } @fp) },
		'etcd_lock.request_timeout' => '3s', 'etcd_lock.lease_ttl' => '30s', 'etcd_lock.group_commit_inflight' => '1');
	my @t = map { sess($n2) } 1 .. 4;
	ok_sql($_, "SELECT etcd_lock('/gcw/$_->{pid}'); SELECT etcd_unlock('/gcw/$_->{pid}')") for @t;
	$fp[0]->drop_reply('request_txn', 'late=3000');
	my @m = one_batch($fp[0], \@t, [ $lock_sqls->($names->('gct')) ]);
	my @r = map { [ finish_query($t[$_], $m[$_], 60) ] } 0 .. 3;
	$fp[0]->delay(0);
	is(join(',', map { $_->[0] } @r), 't,t,t,t', '21: the batch answered through the second endpoint: every member holds');
	is($one_key_each->('gct'), '1,1,1,1', '21: ... one key per name');
	ok_sql($_, 'SELECT etcd_unlock_all()') for @t;
	my $lates = sub { my $n = () = $fp[0]->log_text =~ /late request forwarded/g; $n };
	ok(wait_until(sub { $lates->() == 1 }, 15), '21: the batch\'s first attempt reaches etcd late');
	ok(wait_until(sub { %{ keys_under('/gct/') } }, 5), '21: ... and puts the keys again under the live leases');
	ok(wait_until(sub { !%{ keys_under('/gct/') } }, 40), '21: ... which the members\' settle reads remove');
	$_->quit for @t;
	$n2->stop;
	$_->stop for @fp;
}

# --- etcd's --max-txn-ops below what a batch needs: the refused batch is
# sent again member by member (no call fails) and the limit is lowered
{
	my $e3 = start_etcd(args => [ '--max-txn-ops', '3' ]);
	my $n3 = etcd_node('gc_ops3', $e3);
	my $done = pairs($n3, 8, 2);
	my $st = stats($n3);
	cmp_ok($done, '>', 10, "21: --max-txn-ops 3: $done lock/unlock pairs, none failed");
	cmp_ok($st->{max_txn_ops}, '<', 128, "21: ... the batch limit came down to $st->{max_txn_ops}");
	cmp_ok($st->{resent_alone}, '>', 0, '21: ... the members of the refused batches went alone');
	is(scalar(keys %{ etcd_keys($e3, '/gc/') }), 0, '21: ... no key is left');
	$n3->stop;
}

done_testing();
