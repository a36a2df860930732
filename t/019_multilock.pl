# Multi-locks (version 1.1): etcd_[try_][xact_]lock_many take several names
# all or none, across two instances on one etcd:
#  1. two sessions on different instances loop over the same two names in
#     opposite orders (etcd_xact_lock_many): no deadlock (40P01), no
#     timeout, and their critical sections (logged under flock in a file
#     outside both instances) never overlap;
#  2. a multi-lock that times out (55P03) while one name is held elsewhere:
#     while it waited its keys shared one create revision; afterwards no
#     key of it is left in etcd, etcd_locks shows nothing of it, and
#     another instance takes the other name at once;
#  3. etcd_try_lock_many with one name held elsewhere: false, no key left,
#     the free name is free for others;
#  4. modes: a shared name joins a shared holder and an exclusive one is
#     taken; an exclusive request of the shared name fails; each name is
#     then an ordinary hold (etcd_unlock_shared / etcd_unlock);
#  5. tokens: one call's new names share one token (the keys' create
#     revision), a name already held keeps its token, a later multi-lock on
#     the same names returns strictly larger tokens;
#  6. a multi-lock cancelled while it waits (57014) leaves no key;
#  7. a lease lost (partition through the fault proxy) while holding a
#     multi-lock is reported like a lost lock, and the other instance takes
#     both names.
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

my $t_begin = time;
my $etcd = start_etcd();
my $na = etcd_node('ml_a', $etcd);
my $nb = etcd_node('ml_b', $etcd);

# locks_of(s): the session's rows in its instance's etcd_locks
sub locks_of
{
	my ($s) = @_;
	return $s->{node}->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE pid = $s->{pid}");
}

# lease_hex(s): the lease (hex, as in its keys) of the session's current
# etcd_locks rows
sub lease_hex
{
	my ($s) = @_;
	return $s->{node}->safe_psql('postgres',
		"SELECT string_agg(DISTINCT lease_id, ',') FROM etcd_locks WHERE pid = $s->{pid}");
}

# kvs(prefix): the keys under prefix, read from etcd directly (keys only),
# each with its create revision
sub kvs
{
	my ($pfx) = @_;
	my $k = encode_base64($pfx, '');
	my @b = unpack('C*', $pfx);
	$b[-1]++;
	my $end = encode_base64(pack('C*', @b), '');
	my $json = `curl -s -m 5 $etcd->{endpoint}/v3/kv/range -d '{"key":"$k","range_end":"$end","keys_only":true}'`;
	my $r = eval { JSON::PP::decode_json($json) } // die "bad answer from etcd: $json";
	return { map { decode_base64($_->{key}) => $_->{create_revision} } @{ $r->{kvs} // [] } };
}

sub keys_under
{
	my ($pfx) = @_;
	return sort keys %{ kvs($pfx) };
}

# only_keys(prefix, expected (array ref), label): within 10 s the keys
# under prefix are exactly the expected ones
sub only_keys
{
	my ($pfx, $want, $label) = @_;
	my $w = join(',', sort @$want);
	my $ok = wait_until(sub { join(',', keys_under($pfx)) eq $w }, 10);
	ok($ok, $label) or diag("keys under $pfx: " . join(', ', keys_under($pfx)) . "; expected: $w");
	return $ok;
}

# --- 1. two sessions, two instances, the same two names in opposite orders
{
	my $dir = PostgreSQL::Test::Utils::tempdir('cs');
	chmod 0777, $dir;
	# cs.sh appends "<who> <E|X> <tokens>" to the log under flock, and keeps
	# "inside-now entries overlaps" in state
	open(my $fh, '>', "$dir/state") or die;
	print $fh "0 0 0\n";
	close $fh;
	open($fh, '>', "$dir/log") or die;
	close $fh;
	open($fh, '>', "$dir/cs.sh") or die;
	print $fh <<"EOS";
read who what toks
exec 9>>$dir/lock
flock 9
read n c v < $dir/state
if [ "\$what" = E ]; then
	n=\$((n + 1)); c=\$((c + 1))
	if [ "\$n" -gt 1 ]; then v=\$((v + 1)); fi
else
	n=\$((n - 1))
fi
echo "\$who \$what \$toks" >> $dir/log
echo "\$n \$c \$v" > $dir/state.tmp
mv -f $dir/state.tmp $dir/state
exit 0
EOS
	close $fh;
	chmod 0666, "$dir/state", "$dir/log";

	my $loops = 40;
	my @s = (sess($na), sess($nb));
	my @order = ("ARRAY['/mx/a', '/mx/b']", "ARRAY['/mx/b', '/mx/a']");
	# generous limits: a real deadlock shows as an error (40P01 from the
	# detector, 55P03 from the timeouts), never as a hang
	ok_sql($_, "SET deadlock_timeout = '200ms'; SET lock_timeout = '40s'; SET statement_timeout = '50s'") for @s;
	my $t0 = time;
	my @m = map {
		my $who = $_ ? 'B' : 'A';
		start_query($s[$_], qq{
DO \$\$
DECLARE t bigint[]; n int := 0; stop timestamptz := clock_timestamp() + interval '25 s';
BEGIN
	FOR i IN 1 .. $loops LOOP
		EXIT WHEN clock_timestamp() > stop;
		t := etcd_xact_lock_many($order[$_], '30 s');
		EXECUTE format('COPY (SELECT %L) TO PROGRAM %L', '$who E ' || array_to_string(t, ','), 'sh $dir/cs.sh');
		PERFORM pg_sleep(0.003);
		EXECUTE format('COPY (SELECT %L) TO PROGRAM %L', '$who X', 'sh $dir/cs.sh');
		COMMIT;
		n := n + 1;
	END LOOP;
	RAISE NOTICE 'iterations: %', n;
END\$\$;})
	} 0 .. 1;
	my @r = map { [ finish_query($s[$_], $m[$_], 60) ] } 0 .. 1;
	my $el = time - $t0;
	for my $i (0 .. 1)
	{
		my $who = $i ? 'B (instance B, b then a)' : 'A (instance A, a then b)';
		unlike($r[$i][1], qr/40P01|deadlock/, "opposite orders: session $who got no deadlock error");
		unlike($r[$i][1], qr/55P03|57014/, "opposite orders: session $who never timed out");
		like($r[$i][1], qr/iterations: $loops\b/, "opposite orders: session $who ran all $loops iterations")
		  or diag($r[$i][1]);
	}
	open($fh, '<', "$dir/state") or die;
	my ($inside, $entries, $overlaps) = split ' ', <$fh>;
	close $fh;
	is($entries, 2 * $loops, 'opposite orders: every critical section was entered');
	is($overlaps, 0, 'opposite orders: no entry while another session was inside (state under flock)');
	is($inside, 0, 'opposite orders: nobody inside at the end');

	# the log: strictly enter/exit pairs of one session at a time
	my @log = split /\n/, slurp_file("$dir/log");
	my ($pairs_ok, $switches, $prev, $tok_ok, $equal_ok) = (1, 0, '', 1, 1);
	my %last = (a => 0, b => 0);
	for (my $j = 0; $j < @log; $j += 2)
	{
		my ($w1, $e, $toks) = split ' ', $log[$j];
		my ($w2, $x) = split ' ', ($log[ $j + 1 ] // '');
		$pairs_ok = 0 unless $e eq 'E' && defined $x && $x eq 'X' && $w1 eq $w2;
		$switches++ if $prev ne '' && $w1 ne $prev;
		$prev = $w1;
		# the tokens in the session's order of names; per name they never
		# decrease from one section to the next
		my @t = split /,/, ($toks // '');
		my %tok = $w1 eq 'A' ? (a => $t[0], b => $t[1]) : (b => $t[0], a => $t[1]);
		for my $nm ('a', 'b')
		{
			$tok_ok = 0 unless defined $tok{$nm} && $tok{$nm} >= $last{$nm};
			$last{$nm} = $tok{$nm} // 0;
		}
		$equal_ok = 0 unless defined $t[1] && $t[0] == $t[1];
	}
	is(scalar(@log), 4 * $loops, 'opposite orders: the log has an enter and an exit line per section');
	ok($pairs_ok, 'opposite orders: the log is strict enter/exit pairs of one session at a time: no overlap')
	  or diag(join("\n", @log));
	ok($switches >= 2, "opposite orders: the sessions contended ($switches changes of holder)");
	ok($tok_ok, 'opposite orders: per name, fencing tokens never decrease from section to section');
	ok($equal_ok, 'opposite orders: each call returned equal tokens for its two names (one txn)');
	note sprintf('opposite orders: %d sections in %.2f s, %d changes of holder', $entries, $el, $switches);
	only_keys('/mx/', [], 'opposite orders: no key left under /mx/');
	$_->quit for @s;
}

# --- 2. a multi-lock that times out leaves nothing behind
my $ha = sess($nb);    # holds /mt/b (instance B)
my $sb = sess($na);    # the multi-locker (instance A)
my $sc = sess($nb);    # another session (instance B)
{
	ok(ok_sql($ha, "SELECT etcd_lock('/mt/b')") > 0, 'timeout: a session of instance B holds /mt/b');
	my $hexa = lease_hex($ha);
	my $m = start_query($sb, "SELECT etcd_lock_many(ARRAY['/mt/a', '/mt/b'], '1 s')");
	ok(wait_until(sub { sess_waiting($sb, '/mt/b') }, 10), 'timeout: the multi-lock (instance A) waits for /mt/b');
	my $hexb = lease_hex($sb);
	my $kv = kvs('/mt/');
	my @mine = grep { m{/\Q$hexb\E$} } sort keys %$kv;
	is(join(',', @mine), "/mt/a/$hexb,/mt/b/$hexb", 'timeout: while it waits, its keys for both names are in etcd');
	ok(@mine == 2 && $kv->{ $mine[0] } == $kv->{ $mine[1] },
		'timeout: ... with one create revision (one txn)');
	my ($out, $err) = finish_query($sb, $m, 30);
	like($err, qr/55P03.*could not obtain etcd lock/s, 'timeout: etcd_lock_many with a 1 s timeout fails with 55P03');
	is(locks_of($sb), '0', 'timeout: etcd_locks shows nothing of the session when the error returns');
	only_keys('/mt/', ["/mt/b/$hexa"], "timeout: no key of its lease ($hexb) is left in etcd, only the holder's");
	is(ok_sql($sc, "SELECT etcd_try_lock('/mt/a')"), 't',
		'timeout: another session (instance B) takes /mt/a at once');
	ok_sql($sc, "SELECT etcd_unlock('/mt/a')");

	# with lock_timeout instead of the argument: the same
	($out, $err) = run($sb, "SET lock_timeout = '500ms'; SELECT etcd_lock_many(ARRAY['/mt/a', '/mt/b']); RESET lock_timeout;");
	like($err, qr/55P03.*lock_timeout/s, 'lock_timeout: etcd_lock_many fails with 55P03');
	is(locks_of($sb), '0', 'lock_timeout: etcd_locks shows nothing of the session');
	only_keys('/mt/', ["/mt/b/$hexa"], 'lock_timeout: no key of it is left in etcd');

	# --- 3. try: one name held elsewhere; false and nothing left
	is(ok_sql($sb, "SELECT etcd_try_lock_many(ARRAY['/mt/a', '/mt/b'])"), 'f',
		'try: etcd_try_lock_many with /mt/b held elsewhere is false');
	is(locks_of($sb), '0', 'try: etcd_locks shows nothing of the session');
	only_keys('/mt/', ["/mt/b/$hexa"], 'try: no key of the session is left in etcd');
	is(ok_sql($sc, "SELECT etcd_try_lock('/mt/a')"), 't', 'try: /mt/a is free for another instance');
	is(ok_sql($sb, "BEGIN; SELECT etcd_try_xact_lock_many(ARRAY['/mt/c', '/mt/a']); COMMIT;"), 'f',
		'try: etcd_try_xact_lock_many with /mt/a now held elsewhere is false');
	only_keys('/mt/c/', [], 'try: ... and /mt/c, the free name, keeps no key of it');
	ok_sql($sc, "SELECT etcd_unlock('/mt/a')");
	ok_sql($ha, "SELECT etcd_unlock('/mt/b')");
	is(ok_sql($sb, "SELECT etcd_try_lock_many(ARRAY['/mt/a', '/mt/b'])"), 't',
		'try: with both names free etcd_try_lock_many is true');
	is(ok_sql($sb, "SELECT etcd_unlock('/mt/a'), etcd_unlock('/mt/b')"), 't|t',
		'try: each name is an ordinary hold, released by etcd_unlock');
	only_keys('/mt/', [], 'try: no key left under /mt/');
}

# --- 4. modes: shared and exclusive in one call
{
	ok(ok_sql($ha, "SELECT etcd_lock_shared('/ms/x')") > 0, 'modes: A (instance B) holds /ms/x shared');
	is(ok_sql($sb, "SELECT etcd_try_lock_many(ARRAY['/ms/x', '/ms/y'], ARRAY['shared', 'exclusive'])"), 't',
		'modes: B (instance A) takes /ms/x shared and /ms/y exclusive in one try');
	my $hb = lease_hex($sb);
	my $hh = lease_hex($ha);
	is(join(',', keys_under('/ms/')), join(',', sort("/ms/x/$hh.shared", "/ms/x/$hb.shared", "/ms/y/$hb")),
		'modes: etcd has both shared keys of /ms/x and B\'s exclusive key of /ms/y');
	is($na->safe_psql('postgres',
		"SELECT string_agg(name || ':' || lock_mode || ':' || mode, ',' ORDER BY name) FROM etcd_locks WHERE pid = $sb->{pid}"),
		'/ms/x:shared:held,/ms/y:exclusive:held', 'modes: etcd_locks shows /ms/x shared and /ms/y exclusive, held');
	my @before = keys_under('/ms/');
	is(ok_sql($sc, "SELECT etcd_try_lock_many(ARRAY['/ms/x'], ARRAY['exclusive'])"), 'f',
		'modes: C\'s exclusive try of /ms/x is false while two sessions hold it shared');
	my ($out, $err) = run($sc, "SELECT etcd_lock_many(ARRAY['/ms/x'], '300 ms', ARRAY['exclusive'])");
	like($err, qr/55P03/, 'modes: ... and an exclusive etcd_lock_many with a timeout fails with 55P03');
	is(ok_sql($sc, "SELECT etcd_try_lock_many(ARRAY['/ms/z', '/ms/y'], ARRAY['shared', 'shared'])"), 'f',
		'modes: a shared try of /ms/y (held exclusive) is false too');
	only_keys('/ms/', \@before, 'modes: the failed calls left no key');
	is(ok_sql($sb, "SELECT etcd_unlock_shared('/ms/x'), etcd_unlock('/ms/y')"), 't|t',
		'modes: etcd_unlock_shared and etcd_unlock release the two holds');
	ok_sql($ha, "SELECT etcd_unlock_shared('/ms/x')");
	is(ok_sql($sc, "SELECT etcd_try_lock_many(ARRAY['/ms/x'], ARRAY['exclusive'])"), 't',
		'modes: once both shared holders left, C\'s exclusive try succeeds');
	ok_sql($sc, 'SELECT etcd_unlock_all()');
	only_keys('/ms/', [], 'modes: no key left under /ms/');
}

# --- 5. tokens
{
	my $t = ok_sql($sb, "SELECT etcd_lock_many(ARRAY['/mk/a', '/mk/b', '/mk/c'], '5 s')");
	my @t1 = $t =~ /^\{(\d+),(\d+),(\d+)\}$/;
	ok(@t1 == 3 && $t1[0] == $t1[1] && $t1[1] == $t1[2], "tokens: one call's three names share one token ($t)");
	my $kv = kvs('/mk/');
	my $hb = lease_hex($sb);
	is(join(',', map { $kv->{"/mk/$_/$hb"} // 'none' } qw(a b c)), join(',', @t1),
		'tokens: the token is the create revision of each key in etcd');
	ok_sql($sb, 'SELECT etcd_unlock_all()');
	only_keys('/mk/', [], 'tokens: released');

	$t = ok_sql($sc, "SELECT etcd_lock_many(ARRAY['/mk/c', '/mk/a', '/mk/b'], '5 s')");
	my @t2 = $t =~ /^\{(\d+),(\d+),(\d+)\}$/;
	ok(@t2 == 3 && $t2[0] == $t2[1] && $t2[1] == $t2[2] && $t2[0] > $t1[0],
		"tokens: a later multi-lock on the same names (other instance) returns larger tokens ($t > $t1[0])");
	ok_sql($sc, 'SELECT etcd_unlock_all()');

	# a name the session already holds keeps its token; the new ones share one
	my $t0 = ok_sql($sb, "SELECT etcd_lock('/mk/b')");
	$t = ok_sql($sb, "SELECT etcd_lock_many(ARRAY['/mk/a', '/mk/b', '/mk/c'], '5 s')");
	my @t3 = $t =~ /^\{(\d+),(\d+),(\d+)\}$/;
	ok(@t3 == 3 && $t3[1] == $t0 && $t3[0] == $t3[2] && $t3[0] > $t0 && $t3[0] > $t2[0],
		"tokens: with /mk/b already held ($t0) it keeps its token, the two new names share a larger one ($t)");
	is(ok_sql($sb, "SELECT etcd_unlock('/mk/b')"), 't', 'tokens: re-entered /mk/b: one etcd_unlock ...');
	is(ok_sql($sc, "SELECT etcd_try_lock('/mk/b')"), 'f', '... leaves it held (count 2 -> 1)');
	is(ok_sql($sb, "SELECT etcd_unlock('/mk/b')"), 't', '... the second releases it');
	ok(wait_until(sub { ok_sql($sc, "SELECT etcd_try_lock('/mk/b')") eq 't' }, 10), '... and another instance takes it');
	ok_sql($_, 'SELECT etcd_unlock_all()') for $sb, $sc;
	only_keys('/mk/', [], 'tokens: no key left under /mk/');
}

# --- 6. cancelled while it waits
{
	ok_sql($ha, "SELECT etcd_lock('/mc/b')");
	my $hexa = lease_hex($ha);
	my $m = start_query($sb, "SELECT etcd_lock_many(ARRAY['/mc/a', '/mc/b'], '30 s')");
	ok(wait_until(sub { sess_waiting($sb, '/mc/b') }, 10), 'cancel: the multi-lock waits for /mc/b');
	my $hexb = lease_hex($sb);
	is(join(',', grep { m{/\Q$hexb\E$} } keys_under('/mc/')), "/mc/a/$hexb,/mc/b/$hexb",
		'cancel: its keys for both names are in etcd');
	$na->safe_psql('postgres', "SELECT pg_cancel_backend($sb->{pid})");
	my ($out, $err) = finish_query($sb, $m, 30);
	like($err, qr/57014.*canceling statement due to user request/s, 'cancel: etcd_lock_many ends with 57014');
	is(locks_of($sb), '0', 'cancel: etcd_locks shows nothing of the session');
	only_keys('/mc/', ["/mc/b/$hexa"], 'cancel: no key of it is left in etcd, only the holder\'s');
	is(ok_sql($sc, "SELECT etcd_try_lock('/mc/a')"), 't', 'cancel: another session takes /mc/a at once');
	ok_sql($_, 'SELECT etcd_unlock_all()') for $sc, $ha;
	only_keys('/mc/', [], 'cancel: no key left under /mc/');
}
$_->quit for $ha, $sb, $sc;

# --- 7. the lease lost while holding a multi-lock
{
	my $fp = FaultProxy->start($etcd->{endpoint});
	my $c = etcd_node('ml_c', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '3s', 'etcd_lock.request_timeout' => '5s');
	my $h = sess($c);
	my $t = ok_sql($h, "SELECT etcd_lock_many(ARRAY['/ml/a', '/ml/b'], '5 s')");
	like($t, qr/^\{(\d+),\1\}$/, "lease loss: instance C holds /ml/a and /ml/b ($t)");
	$fp->hold;
	my $t_hold = time;
	my $w = sess($nb);
	my ($out, $err) = run($w, "SELECT etcd_lock_many(ARRAY['/ml/b', '/ml/a'], '20 s')", 30);
	my $el = time - $t_hold;
	my @tw = ($out // '') =~ /^\{(\d+),(\d+)\}$/;
	ok(@tw == 2 && $tw[0] == $tw[1],
		sprintf('lease loss: instance B took both names %.2f s after the partition began (TTL 3 s)', $el))
	  or diag($err);
	$fp->pass;
	($out, $err) = run($h, 'SELECT 1', 10);
	like($err, qr/the etcd lease of this session expired; its locks were lost/,
		'lease loss: the holder\'s next statement fails with the lease-loss error');
	like($err, qr{Lost locks: .*"/ml/a"}s, '... naming /ml/a');
	like($err, qr{Lost locks: .*"/ml/b"}s, '... and /ml/b');
	is(ok_sql($h, "SELECT etcd_lock_token('/ml/a') IS NULL AND etcd_lock_token('/ml/b') IS NULL"), 't',
		'lease loss: the old holder reports neither name as held');
	ok_sql($w, 'SELECT etcd_unlock_all()');
	$_->quit for $h, $w;
	only_keys('/ml/', [], 'lease loss: no key left under /ml/');
	$c->stop;
	$fp->stop;
}

only_keys('/', [], 'at the end no key is left in etcd');
ok(!$na->log_contains('terminated by signal') && !$nb->log_contains('terminated by signal'), 'no backend crashed');
note sprintf('t/019 ran %.1f s', time - $t_begin);
done_testing();
