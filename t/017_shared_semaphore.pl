# Shared locks and semaphores (version 1.1) across two instances on one
# etcd:
#  1. the shared/exclusive matrix, both ways, with try-variants, the
#     timeout argument and lock_timeout (55P03, no key left behind); FIFO
#     with a writer queued between two readers (acquisition order
#     recorded), a queued writer that gives up, one exclusive release
#     admitting every queued reader, and readers and writers looping on
#     both instances checked against a record kept outside both (flock);
#  2. a session's own keys never block each other (shared, then exclusive);
#     two shared holders that both ask exclusive deadlock: exactly one gets
#     40P01 after deadlock_timeout, the other gets the lock (transaction
#     and session scope); a shared holder asking exclusive behind a queued
#     writer is a deadlock too;
#  3. etcd's Go concurrency.Mutex waits for an SQL shared holder, an SQL
#     shared request queued behind the waiting Go mutex waits for it, and
#     an SQL shared request waits while the Go mutex holds;
#  4. a semaphore of 3 permits with 8 sessions on both instances (two of
#     them giving up after 20 ms): never more than 3 inside, and 3 are
#     reached; a 4th waits (etcd_locks, etcd_lock_holders) and gets in when
#     one leaves; a waiter in the middle gives up; transaction scope;
#  5. a semaphore release wakes one waiter at O(1) etcd requests (etcd's
#     own Range/Txn counters), waiters admitted in FIFO order, no key left;
#  6. a different number of permits (22023) and a lock name used as a
#     semaphore or vice versa (42809) fail and leave no key of the failing
#     session;
#  7. a lease lost (partition through the fault proxy, a third instance)
#     while holding a shared lock and a semaphore permit is reported like
#     a lost lock, and another instance then takes both names.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64 qw(encode_base64);
use Time::HiRes qw(time usleep);

my $t_begin = time;
my $etcd = start_etcd();
my $na = etcd_node('ss_a', $etcd);
my $nb = etcd_node('ss_b', $etcd);

# keys_under(prefix): the keys under prefix, sorted (a list)
sub keys_under
{
	my ($pfx) = @_;
	my @k = sort keys %{ etcd_keys($etcd, $pfx) };
	return @k;
}

sub nkeys
{
	my @k = keys_under(@_);
	return scalar @k;
}

# no_keys_left(prefix, label): within 10 s no key is left under prefix
sub no_keys_left
{
	my ($pfx, $label) = @_;
	my $ok = wait_until(sub { nkeys($pfx) == 0 }, 10);
	ok($ok, $label) or diag("keys under $pfx: " . join(', ', keys_under($pfx)));
}

sub lease_of
{
	my ($s, $name) = @_;
	return $s->{node}->safe_psql('postgres',
		"SELECT DISTINCT lease_id FROM etcd_locks WHERE pid = $s->{pid} AND name = '$name'");
}

# try_after_loss(s, sql): the first lock call after a lease loss may fail
# once with the loss; the answer of sql then
sub try_after_loss
{
	my ($s, $sql) = @_;
	my ($out, $err) = run($s, $sql);
	($out, $err) = run($s, $sql) if $err =~ /lease of this session expired/;
	return $err =~ /ERROR/ ? "error: $err" : $out;
}

sub epoch_sql { return "SELECT extract(epoch FROM clock_timestamp())"; }

# A record of who is inside a critical section, kept outside both
# instances: sessions run "COPY (SELECT '<kind> <+1|-1>') TO PROGRAM ..."
# on entry and exit (kind r: shared holder, w: exclusive holder, p:
# semaphore permit holder); the script updates the state under flock and
# counts violations seen at an entry: a reader while a writer is inside, a
# writer while anyone else is, a 4th permit holder.
my $ctr_dir = PostgreSQL::Test::Utils::tempdir('inside');
chmod 0777, $ctr_dir;
{
	open(my $fh, '>', "$ctr_dir/ctr.sh") or die;
	print $fh <<"EOS";
read k d
exec 9>>$ctr_dir/lock
flock 9
read r w p maxr maxp viol er ew ep < $ctr_dir/state
case \$k in
r) r=\$((r + d)); if [ "\$d" -gt 0 ]; then er=\$((er + 1)); [ "\$w" -gt 0 ] && viol=\$((viol + 1)); fi ;;
w) w=\$((w + d)); if [ "\$d" -gt 0 ]; then ew=\$((ew + 1)); [ "\$w" -gt 1 -o "\$r" -gt 0 ] && viol=\$((viol + 1)); fi ;;
p) p=\$((p + d)); if [ "\$d" -gt 0 ]; then ep=\$((ep + 1)); [ "\$p" -gt 3 ] && viol=\$((viol + 1)); fi ;;
esac
[ "\$r" -gt "\$maxr" ] && maxr=\$r
[ "\$p" -gt "\$maxp" ] && maxp=\$p
echo "\$r \$w \$p \$maxr \$maxp \$viol \$er \$ew \$ep" > $ctr_dir/state.tmp
mv -f $ctr_dir/state.tmp $ctr_dir/state
exit 0
EOS
	close $fh;
}

sub ctr_reset
{
	open(my $fh, '>', "$ctr_dir/state") or die;
	print $fh "0 0 0 0 0 0 0 0 0\n";
	close $fh;
	chmod 0666, "$ctr_dir/state";
}

# ctr_state(): the state as a hash
sub ctr_state
{
	open(my $fh, '<', "$ctr_dir/state") or die;
	my %st;
	@st{qw(r w p maxr maxp viol er ew ep)} = split ' ', <$fh>;
	close $fh;
	return \%st;
}

# ctr_sql(kind, delta): the statement that records an entry or exit
sub ctr_sql
{
	my ($k, $d) = @_;
	return "COPY (SELECT '$k $d') TO PROGRAM 'sh $ctr_dir/ctr.sh'";
}

# --- 1. the shared/exclusive matrix across the two instances
{
	my $ra = sess($na);
	my $rb = sess($nb);
	my $x = sess($nb);
	my ($ta) = run($ra, "SELECT etcd_lock_shared('/rw', '5 s')");
	my ($tb, $eb) = run($rb, "SELECT etcd_lock_shared('/rw', '5 s')");
	ok($ta > 0 && ($tb // 0) > 0, "shared + shared: instance A and instance B both hold /rw ($ta, $tb)")
	  or diag($eb);
	my @k = keys_under('/rw/');
	is(scalar(grep { m{^/rw/[0-9a-f]+\.shared$} } @k), 2, 'shared + shared: two <lease>.shared keys in etcd')
	  or diag("keys: @k");
	is($na->safe_psql('postgres',
		"SELECT count(*), bool_and(mode = 'shared'), max(waiters) FROM etcd_lock_holders('/rw')"),
		'2|t|0', 'etcd_lock_holders: two shared holders, no waiter');
	is($na->safe_psql('postgres',
		"SELECT mode, lock_mode, permits IS NULL OR permits = 0 FROM etcd_locks WHERE pid = $ra->{pid}"),
		'held|shared|t', 'etcd_locks: lock_mode shared, held');
	is(ok_sql($x, "SELECT etcd_try_lock_shared('/rw')"), 't', 'shared + shared: a third session (B) joins with try');
	is(ok_sql($x, "SELECT etcd_unlock_shared('/rw')"), 't', 'etcd_unlock_shared releases it');

	# shared held (by A and B) excludes exclusive
	is(ok_sql($x, "SELECT etcd_try_lock('/rw')"), 'f', 'shared excludes exclusive: etcd_try_lock is false');
	my ($out, $err) = run($x, "SELECT etcd_lock('/rw', '300 ms')");
	like($err, qr/55P03.*could not obtain etcd lock "\/rw" within the timeout/s,
		'shared excludes exclusive: etcd_lock with a timeout fails with 55P03');
	($out, $err) = run($x, "BEGIN; SELECT etcd_try_xact_lock('/rw'); SELECT etcd_xact_lock('/rw', '300 ms');");
	like($out, qr/^f/, 'shared excludes exclusive: etcd_try_xact_lock is false');
	like($err, qr/55P03/, 'shared excludes exclusive: etcd_xact_lock with a timeout fails with 55P03');
	run($x, 'ROLLBACK');
	($out, $err) = run($x, "SET lock_timeout = '300ms'; SELECT etcd_lock('/rw'); RESET lock_timeout;");
	like($err, qr/55P03.*due to lock_timeout/s, 'shared excludes exclusive: lock_timeout ends the wait with 55P03');
	is(join(',', keys_under('/rw/')), join(',', @k), 'the failed exclusive attempts left no key');

	# exclusive held excludes shared
	ok_sql($_, "SELECT etcd_unlock_shared('/rw')") for $ra, $rb;
	ok(ok_sql($x, "SELECT etcd_lock('/rw', '5 s')") > 0, 'both shared holders left: instance B takes /rw exclusive');
	@k = keys_under('/rw/');
	is(ok_sql($ra, "SELECT etcd_try_lock_shared('/rw')"), 'f', 'exclusive excludes shared: etcd_try_lock_shared is false');
	($out, $err) = run($ra, "SELECT etcd_lock_shared('/rw', '300 ms')");
	like($err, qr/55P03.*could not obtain etcd lock "\/rw" within the timeout/s,
		'exclusive excludes shared: etcd_lock_shared with a timeout fails with 55P03');
	($out, $err) = run($ra,
		"BEGIN; SELECT etcd_try_xact_lock_shared('/rw'); SELECT etcd_xact_lock_shared('/rw', '300 ms');");
	like($out, qr/^f/, 'exclusive excludes shared: etcd_try_xact_lock_shared is false');
	like($err, qr/55P03/, 'exclusive excludes shared: etcd_xact_lock_shared with a timeout fails with 55P03');
	run($ra, 'ROLLBACK');
	($out, $err) = run($ra, "SET lock_timeout = '300ms'; SELECT etcd_lock_shared('/rw'); RESET lock_timeout;");
	like($err, qr/55P03.*due to lock_timeout/s, 'exclusive excludes shared: lock_timeout ends the wait with 55P03');
	is(join(',', keys_under('/rw/')), join(',', @k), 'the failed shared attempts left no key');
	is(ok_sql($x, "SELECT etcd_unlock('/rw')"), 't', 'the exclusive holder releases');
	is(ok_sql($ra, "SELECT etcd_try_lock_shared('/rw')"), 't', '... and a shared try succeeds');
	ok_sql($ra, "SELECT etcd_unlock_shared('/rw')");
	no_keys_left('/rw/', 'matrix: no key left under /rw/');

	# FIFO: R1 holds shared, W waits exclusive, R2's shared request waits
	# behind W (it must not jump it), and gets in only after W released
	my $r2 = sess($na);
	my %at;
	my ($t_r1) = ok_sql($ra, "SELECT etcd_lock_shared('/fifo')");
	$at{R1} = ok_sql($ra, epoch_sql());
	my $mw = start_query($x, "SELECT etcd_lock('/fifo', '30 s');\n" . epoch_sql());
	ok(wait_until(sub { sess_waiting($x, '/fifo') }, 10), 'FIFO: W (instance B) waits for exclusive behind R1 (shared)');
	my $mr2 = start_query($r2, "SELECT etcd_lock_shared('/fifo', '30 s');\n" . epoch_sql());
	ok(wait_until(sub { sess_waiting($r2, '/fifo') }, 10), 'FIFO: R2 (instance A) waits for shared behind W');
	usleep(500_000);
	ok(!query_done($r2, $mr2), 'FIFO: R2 still waits while R1 holds shared (it does not jump the queued writer)');
	ok(!query_done($x, $mw), 'FIFO: W still waits while R1 holds shared');
	is($nb->safe_psql('postgres', "SELECT mode, waiters FROM etcd_lock_holders('/fifo')"), 'shared|2',
		'FIFO: etcd_lock_holders shows one shared holder and 2 waiters');
	is(ok_sql($rb, "SELECT etcd_try_lock_shared('/fifo')"), 'f',
		'FIFO: a shared try (instance B) does not jump the queued writer either');
	is(nkeys('/fifo/'), 3, '... and left no key (R1, W, R2)');
	my $rel_r1 = ok_sql($ra, epoch_sql());
	ok_sql($ra, "SELECT etcd_unlock_shared('/fifo')");
	my ($ow) = finish_query($x, $mw, 30);
	my ($t_w, $at_w) = split /\n/, $ow;
	$at{W} = $at_w;
	usleep(500_000);
	ok(!query_done($r2, $mr2), 'FIFO: R2 still waits while W holds exclusive');
	my $rel_w = ok_sql($x, epoch_sql());
	ok_sql($x, "SELECT etcd_unlock('/fifo')");
	my ($or2) = finish_query($r2, $mr2, 30);
	my ($t_r2, $at_r2) = split /\n/, $or2;
	$at{R2} = $at_r2;
	my $order = join(' ', sort { $at{$a} <=> $at{$b} } keys %at);
	is($order, 'R1 W R2', 'FIFO: acquisition order R1, W, R2');
	ok($at{W} > $rel_r1 && $at{R2} > $rel_w, 'FIFO: W got it after R1 released, R2 after W released');
	ok($t_r1 < $t_w && $t_w < $t_r2, "FIFO: fencing tokens increase along the queue ($t_r1 < $t_w < $t_r2)");
	ok_sql($r2, "SELECT etcd_unlock_shared('/fifo')");
	no_keys_left('/fifo/', 'FIFO: no key left');

	# a queued writer that gives up lets the reader queued behind it join
	# the current reader
	ok_sql($ra, "SELECT etcd_lock_shared('/gu')");
	$mw = start_query($x, "SELECT etcd_lock('/gu', '1 s')");
	ok(wait_until(sub { sess_waiting($x, '/gu') }, 10), 'writer queued behind a reader');
	$mr2 = start_query($r2, "SELECT etcd_lock_shared('/gu', '30 s') > 0");
	ok(wait_until(sub { sess_waiting($r2, '/gu') }, 10), 'second reader queued behind the writer');
	my ($o, $e) = finish_query($x, $mw, 30);
	like($e, qr/55P03/, 'the writer gives up (timeout)');
	($o, $e) = finish_query($r2, $mr2, 10);
	is($o, 't', '... and the queued reader joins the first reader, which still holds') or diag($e);
	is($nb->safe_psql('postgres', "SELECT count(*), bool_and(mode = 'shared') FROM etcd_lock_holders('/gu')"),
		'2|t', '... two shared holders');
	ok_sql($_, "SELECT etcd_unlock_shared('/gu')") for $ra, $r2;

	# readers queued behind an exclusive holder all get in at its release
	ok_sql($x, "SELECT etcd_lock('/many')");
	my @rs = ($ra, $rb, $r2);
	my @mr;
	for my $r (@rs)
	{
		push @mr, start_query($r, "SELECT etcd_lock_shared('/many', '30 s') > 0");
		wait_until(sub { sess_waiting($r, '/many') }, 10);
	}
	ok(!(grep { !sess_waiting($_, '/many') } @rs), 'three readers (both instances) wait behind an exclusive holder');
	ok_sql($x, "SELECT etcd_unlock('/many')");
	my @got = map { (finish_query($rs[$_], $mr[$_], 10))[0] } 0 .. 2;
	is(join(',', @got), 't,t,t', 'one exclusive release admits all three readers');
	is($na->safe_psql('postgres', "SELECT count(*), bool_and(mode = 'shared') FROM etcd_lock_holders('/many')"),
		'3|t', '... holding together');
	ok_sql($_, "SELECT etcd_unlock_shared('/many')") for @rs;
	no_keys_left('/gu/', 'no key left under /gu/');
	no_keys_left('/many/', 'no key left under /many/');

	# readers and writers in a loop on both instances: a writer is always
	# alone inside, readers are never inside with a writer
	ctr_reset();
	my @rw = ($ra, $rb, $x, $r2, sess($na), sess($nb));
	my $loops = 6;
	my $t0 = time;
	my @mrw = map {
		start_query($rw[$_], qq{
DO \$\$BEGIN
	PERFORM setseed(@{[ 0.1 * ($_ + 1) ]});
	FOR i IN 1 .. $loops LOOP
		IF random() < 0.3 THEN
			PERFORM etcd_lock('/rwx', '30 s');
			@{[ ctr_sql('w', 1) ]};
			PERFORM pg_sleep(0.01 + random() * 0.03);
			@{[ ctr_sql('w', -1) ]};
			PERFORM etcd_unlock('/rwx');
		ELSE
			PERFORM etcd_lock_shared('/rwx', '30 s');
			@{[ ctr_sql('r', 1) ]};
			PERFORM pg_sleep(0.01 + random() * 0.03);
			@{[ ctr_sql('r', -1) ]};
			PERFORM etcd_unlock_shared('/rwx');
		END IF;
	END LOOP;
END\$\$;})
	} 0 .. $#rw;
	my @erw = map { (finish_query($rw[$_], $mrw[$_], 60))[1] } 0 .. $#rw;
	is(join('', grep { /ERROR/ } @erw), '', 'readers and writers: no errors');
	my $st = ctr_state();
	note sprintf('readers and writers, 6 sessions: %d shared and %d exclusive sections in %.2f s, up to %d readers at once',
		$st->{er}, $st->{ew}, time - $t0, $st->{maxr});
	is($st->{er} + $st->{ew}, @rw * $loops, 'readers and writers: every section ran');
	ok($st->{er} > 0 && $st->{ew} > 0, 'readers and writers: both kinds ran');
	is($st->{viol}, 0, 'readers and writers: no writer inside with anyone else, no reader with a writer');
	no_keys_left('/rwx/', 'readers and writers: no key left');
	$_->quit for @rw;
}

# --- 2. own keys never block each other; shared holders asking exclusive deadlock
{
	my $s = sess($na);
	my $o = sess($nb);
	ok_sql($s, "SELECT etcd_lock_shared('/own')");
	my ($out, $err) = run($s, "SELECT etcd_lock('/own', '5 s') > 0");
	is($out, 't', 'a session holding /own shared takes it exclusive too (its own key does not block)')
	  or diag($err);
	my $hex = lease_of($s, '/own');
	is(join(',', keys_under('/own/')), "/own/$hex,/own/$hex.shared",
		'etcd: its exclusive and its shared key, one lease');
	is($na->safe_psql('postgres',
		"SELECT string_agg(lock_mode || ':' || mode, ',' ORDER BY lock_mode) FROM etcd_locks WHERE pid = $s->{pid}"),
		'exclusive:held,shared:held', 'etcd_locks: held in both modes');
	is(ok_sql($o, "SELECT etcd_try_lock_shared('/own')"), 'f', 'another instance cannot take it shared');
	is(ok_sql($s, "SELECT etcd_unlock('/own')"), 't', 'etcd_unlock releases the exclusive hold');
	is(join(',', keys_under('/own/')), "/own/$hex.shared", '... the shared key stays');
	is(ok_sql($o, "SELECT etcd_try_lock_shared('/own')"), 't', '... and another instance joins in shared mode');
	ok_sql($o, "SELECT etcd_unlock_shared('/own')");
	($out, $err) = run($s, "SELECT etcd_lock('/own', '5 s') > 0, etcd_lock_shared('/own', '5 s') > 0");
	is($out, 't|t', 're-entry: exclusive again, and shared again (re-entrant)');
	ok_sql($s, "SELECT etcd_unlock('/own'), etcd_unlock_shared('/own'), etcd_unlock_shared('/own')");
	no_keys_left('/own/', 'own keys: nothing left once every hold is released');

	# both hold shared (transaction scope), both ask exclusive: a deadlock
	my ($d1, $d2) = ($s, $o);
	ok_sql($_, "SET deadlock_timeout = '200ms'") for $d1, $d2;
	ok_sql($_, "BEGIN; SELECT etcd_xact_lock_shared('/dls')") for $d1, $d2;
	my $t0 = time;
	my $m1 = start_query($d1, "SELECT etcd_xact_lock('/dls', '30 s') > 0");
	ok(wait_until(sub { sess_waiting($d1, '/dls') }, 10), 'deadlock: session 1 (A) waits for exclusive');
	usleep(300_000);
	my $m2 = start_query($d2, "SELECT etcd_xact_lock('/dls', '30 s') > 0");
	my @r = ([ finish_query($d2, $m2, 40) ], [ finish_query($d1, $m1, 40) ]);
	my $el = time - $t0;
	my @dead = grep { $r[$_][1] =~ /40P01/ } 0 .. 1;
	is(scalar(@dead), 1, 'deadlock of two shared holders asking exclusive: exactly one gets 40P01');
	is($dead[0] // -1, 0, '... the younger wait (session 2, instance B)');
	like($r[0][1], qr/deadlock detected.*waits for etcd lock "\/dls" \(exclusive\)/s, '... the detail names the lock');
	is($r[1][0], 't', '... the other session gets the lock once the victim\'s transaction aborted');
	ok($el < 20, sprintf('... resolved in %.1f s (deadlock_timeout 200 ms)', $el));
	run($_, 'ROLLBACK') for $d1, $d2;
	no_keys_left('/dls/', 'deadlock (xact): no key left after both ROLLBACKs');

	# the same with session-level locks: the victim keeps its shared hold
	# (as with advisory locks), so the other waits until it lets go
	ok_sql($_, "SELECT etcd_lock_shared('/dls2')") for $d1, $d2;
	$m1 = start_query($d1, "SELECT etcd_lock('/dls2', '30 s') > 0");
	ok(wait_until(sub { sess_waiting($d1, '/dls2') }, 10), 'deadlock (session): session 1 waits');
	usleep(300_000);
	my ($o2, $e2) = run($d2, "SELECT etcd_lock('/dls2', '30 s') > 0", 40);
	like($e2, qr/40P01/, 'deadlock (session): the younger wait gets 40P01');
	usleep(500_000);
	ok(!query_done($d1, $m1), '... the other still waits: the victim still holds shared');
	is(ok_sql($d2, "SELECT etcd_unlock_shared('/dls2')"), 't', '... the victim releases its shared hold');
	my ($o1, $e1) = finish_query($d1, $m1, 30);
	is($o1, 't', '... and the other session gets the exclusive lock') or diag($e1);
	ok_sql($d1, 'SELECT etcd_unlock_all()');
	no_keys_left('/dls2/', 'deadlock (session): no key left');

	# a shared holder asking exclusive behind another session's queued
	# exclusive request: FIFO makes that a cycle (the queued writer waits
	# for the shared key, the upgrade waits for the queued writer); the
	# upgrade, the younger wait, is the victim
	ok_sql($d1, "SELECT etcd_lock_shared('/upg')");
	my $mq = start_query($d2, "SELECT etcd_lock('/upg', '30 s') > 0");
	ok(wait_until(sub { sess_waiting($d2, '/upg') }, 10), 'upgrade: a writer (B) queues behind a shared holder (A)');
	my ($ou, $eu) = run($d1, "SELECT etcd_lock('/upg', '30 s') > 0", 40);
	like($eu, qr/40P01/, 'upgrade: the shared holder asking exclusive behind the queued writer gets 40P01');
	ok(!query_done($d2, $mq), '... the queued writer still waits for the shared hold');
	ok_sql($d1, "SELECT etcd_unlock_shared('/upg')");
	($ou, $eu) = finish_query($d2, $mq, 30);
	is($ou, 't', '... and gets the lock once it is released') or diag($eu);
	ok_sql($d2, "SELECT etcd_unlock('/upg')");
	no_keys_left('/upg/', 'upgrade: no key left');
	$_->quit for $d1, $d2;
}

# --- 3. interop with etcd's Go concurrency.Mutex on the same name
SKIP:
{
	my $go = $ENV{GO_MUTEX};
	skip 'GO_MUTEX (the built reference Go mutex, etcd\'s concurrency.Mutex) is not set', 10
	  unless $go && -x $go;
	(my $ep = $etcd->{endpoint}) =~ s{^http://}{};
	my $s = sess($na);

	# an SQL shared holder: the Go mutex waits
	ok_sql($s, "SELECT etcd_lock_shared('/goi')");
	my ($gout, $gerr) = ('', '');
	my $h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/goi', '-ep', $ep, '-hold', '0s' ],
		'>', \$gout, '2>', \$gerr);
	ok(wait_until(sub { $h->pump_nb; $gout =~ /Waiting to acquire/ }, 30), 'Go mutex started waiting for /goi');
	sleep_full(1.5);
	$h->pump_nb;
	unlike($gout, qr/Acquired lock/, 'Go mutex waits while an SQL session holds /goi shared');
	# FIFO across clients: a shared request behind the waiting Go mutex waits
	my $r2 = sess($nb);
	is(ok_sql($r2, "SELECT etcd_try_lock_shared('/goi')"), 'f',
		'a shared try (instance B) does not jump the waiting Go mutex');
	my $mr = start_query($r2, "SELECT etcd_lock_shared('/goi', '30 s') > 0");
	ok(wait_until(sub { sess_waiting($r2, '/goi') }, 10), 'a shared request (instance B) queues behind the Go mutex');
	ok_sql($s, "SELECT etcd_unlock_shared('/goi')");
	ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go mutex acquired /goi once SQL released');
	$h->finish;
	my ($o2, $e2) = finish_query($r2, $mr, 30);
	is($o2, 't', '... then the queued shared request gets it') or diag($e2);
	ok_sql($r2, "SELECT etcd_unlock_shared('/goi')");
	$r2->quit;

	# the Go mutex holds: an SQL shared request waits
	($gout, $gerr) = ('', '');
	$h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/goi', '-ep', $ep, '-hold', '3s' ],
		'>', \$gout, '2>', \$gerr);
	ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go mutex holds /goi');
	my $t0 = time;
	is(ok_sql($s, "SELECT etcd_try_lock_shared('/goi')"), 'f', 'SQL shared try fails while Go holds /goi');
	my $m = start_query($s, "SELECT etcd_lock_shared('/goi', '30 s') > 0");
	usleep(700_000);
	my $waited_while_held = !query_done($s, $m);
	my ($out, $err) = finish_query($s, $m, 30);
	my $waited = time - $t0;
	$h->finish;
	ok($waited_while_held && $out eq 't' && $waited >= 2.5,
		sprintf('SQL shared request waited while Go held /goi, got it after %.2f s (Go held 3 s)', $waited))
	  or diag("out <$out> err <$err>");
	ok_sql($s, "SELECT etcd_unlock_shared('/goi')");
	no_keys_left('/goi/', 'Go interop: no key left');
	$s->quit;
}

# --- 4. a semaphore of 3 permits, 8 sessions over both instances
{
	ctr_reset();
	my $loops = 4;
	my @s = map { sess($_ % 2 ? $nb : $na) } 0 .. 7;
	my $t0 = time;
	# sessions 6 and 7 wait only 20 ms each time and give up (55P03) when
	# that is not enough: queue places removed in the middle of the queue
	my @m = map {
		my $tmo = $_ >= 6 ? '0.02 s' : '30 s';
		start_query($s[$_], qq{
DO \$\$DECLARE gave_up int := 0; BEGIN
	FOR i IN 1 .. $loops LOOP
		BEGIN
			PERFORM etcd_semaphore('/sem8', 3, '$tmo');
		EXCEPTION WHEN lock_not_available THEN
			gave_up := gave_up + 1;
			CONTINUE;
		END;
		@{[ ctr_sql('p', 1) ]};
		PERFORM pg_sleep(0.03 + random() * 0.05);
		@{[ ctr_sql('p', -1) ]};
		PERFORM etcd_unlock_semaphore('/sem8');
	END LOOP;
	RAISE NOTICE 'gave up: %', gave_up;
END\$\$;})
	} 0 .. 7;
	my @err = map { (finish_query($s[$_], $m[$_], 60))[1] } 0 .. 7;
	my $el = time - $t0;
	is(join('', grep { /ERROR/ } @err), '', "8 sessions x $loops semaphore sections ran without errors");
	my $gave_up = 0;
	$gave_up += $_ for map { /gave up: (\d+)/ ? $1 : 1000 } @err;
	my $st = ctr_state();
	note sprintf('semaphore of 3, 8 sessions: %d entries and %d give-ups in %.2f s, max inside %d',
		$st->{ep}, $gave_up, $el, $st->{maxp});
	is($st->{ep} + $gave_up, 8 * $loops, 'every section was entered or (sessions 6, 7) given up with 55P03');
	ok($st->{ep} >= 6 * $loops, 'sessions 0-5 entered every time');
	is($st->{viol}, 0, 'never more than 3 sessions inside');
	is($st->{maxp}, 3, 'max inside is 3: the permits were used');
	is($st->{p}, 0, 'nobody inside at the end');
	no_keys_left('/sem8/', 'semaphore of 3: no key left');

	# 3 hold, a 4th waits, one leaves, the 4th gets in
	ok(ok_sql($s[$_], "SELECT etcd_semaphore('/sem4', 3, '5 s')") > 0, "holder $_ of /sem4") for 0 .. 2;
	my $m4 = start_query($s[3], "SELECT etcd_semaphore('/sem4', 3, '30 s') > 0");
	ok(wait_until(sub { sess_waiting($s[3], '/sem4') }, 10), 'a 4th session waits');
	is($nb->safe_psql('postgres',
		"SELECT mode, lock_mode, permits FROM etcd_locks WHERE pid = $s[3]->{pid}"),
		'waiting|semaphore|3', 'etcd_locks: waiting, lock_mode semaphore, permits 3');
	is($na->safe_psql('postgres',
		"SELECT count(*), bool_and(mode = 'semaphore'), min(permits), max(waiters) FROM etcd_lock_holders('/sem4')"),
		'3|t|3|1', 'etcd_lock_holders: 3 semaphore holders of 3 permits, 1 waiter');
	is(ok_sql($s[4], "SELECT etcd_try_semaphore('/sem4', 3)"), 'f', 'a try fails while 3 hold');
	my ($out, $err) = run($s[5], "SELECT etcd_semaphore('/sem4', 3, '300 ms')");
	like($err, qr/55P03.*could not obtain a permit of etcd semaphore "\/sem4" within the timeout/s, 'a semaphore wait with a timeout fails with 55P03');
	($out, $err) = run($s[6], "SET lock_timeout = '300ms'; SELECT etcd_semaphore('/sem4', 3); RESET lock_timeout;");
	like($err, qr/55P03.*due to lock_timeout/s, 'lock_timeout ends a semaphore wait with 55P03');
	is(nkeys('/sem4/'), 4, 'the try and the timed-out waits left no key (3 holders + 1 waiter)');
	usleep(300_000);
	ok(!query_done($s[3], $m4), 'the 4th still waits');
	ok_sql($s[1], "SELECT etcd_unlock_semaphore('/sem4')");
	($out, $err) = finish_query($s[3], $m4, 10);
	is($out, 't', 'one left: the 4th got in') or diag($err);
	is($na->safe_psql('postgres', "SELECT count(*), max(waiters) FROM etcd_lock_holders('/sem4')"), '3|0',
		'3 holders again, no waiter');
	ok_sql($_, 'SELECT etcd_unlock_all()') for @s;
	no_keys_left('/sem4/', 'no key left under /sem4/');

	# a waiter in the middle of the queue gives up: the chain of wake-ups
	# goes on past it
	ok_sql($s[0], "SELECT etcd_semaphore('/semq', 1)");
	my @q = @s[1 .. 3];
	my @qm;
	for my $i (0 .. 2)
	{
		push @qm, start_query($q[$i], "SELECT etcd_semaphore('/semq', 1, '" . ($i == 1 ? '1.5 s' : '30 s') . "') > 0");
		wait_until(sub { sess_waiting($q[$i], '/semq') }, 10);
	}
	($out, $err) = finish_query($q[1], $qm[1], 30);
	like($err, qr/55P03/, 'the middle one of three semaphore waiters gives up');
	ok_sql($s[0], "SELECT etcd_unlock_semaphore('/semq')");
	($out, $err) = finish_query($q[0], $qm[0], 10);
	is($out, 't', 'a release admits the first waiter');
	usleep(300_000);
	ok(!query_done($q[2], $qm[2]), '... not the last one (1 permit)');
	ok_sql($q[0], "SELECT etcd_unlock_semaphore('/semq')");
	($out, $err) = finish_query($q[2], $qm[2], 10);
	is($out, 't', 'the next release admits the last waiter, past the one that gave up');
	ok_sql($q[2], "SELECT etcd_unlock_semaphore('/semq')");
	no_keys_left('/semq/', 'no key left under /semq/');

	# transaction scope: COMMIT and ROLLBACK release a permit
	ok_sql($s[0], "BEGIN; SELECT etcd_xact_semaphore('/xs', 1, '5 s')");
	is(ok_sql($s[1], "SELECT etcd_try_semaphore('/xs', 1)"), 'f', 'xact permit held: another instance cannot take it');
	ok_sql($s[0], 'COMMIT');
	is(ok_sql($s[1], "SELECT etcd_try_semaphore('/xs', 1)"), 't', '... and takes it right after COMMIT');
	ok_sql($s[1], "SELECT etcd_unlock_semaphore('/xs')");
	is(ok_sql($s[0], "BEGIN; SELECT etcd_try_xact_semaphore('/xs', 1)"), 't', 'etcd_try_xact_semaphore takes it');
	ok_sql($s[0], 'ROLLBACK');
	is(ok_sql($s[1], "SELECT etcd_try_semaphore('/xs', 1)"), 't', '... another instance takes it right after ROLLBACK');
	ok_sql($s[1], "SELECT etcd_unlock_semaphore('/xs')");
	no_keys_left('/xs/', 'no key left under /xs/');
	$_->quit for @s;
}

# --- 5. a semaphore release wakes one waiter at O(1) etcd requests
sub kv_requests
{
	my $m = `curl -s -m 5 $etcd->{endpoint}/metrics`;
	my $n = 0;
	while ($m =~ /^grpc_server_handled_total\{[^}]*grpc_method="(?:Range|Txn)"[^}]*\} (\d+)/mg)
	{
		$n += $1;
	}
	return $n;
}
{
	my @h = (sess($na), sess($nb));
	my @w = map { sess($_ % 2 ? $nb : $na) } 0 .. 5;
	ok_sql($_, "SELECT etcd_semaphore('/wake', 2)") for @h;
	my @m;
	for my $i (0 .. 5)
	{
		push @m, start_query($w[$i], "SELECT etcd_semaphore('/wake', 2, '60 s') > 0");
		wait_until(sub { sess_waiting($w[$i], '/wake') }, 10);
	}
	ok(!(grep { !sess_waiting($_, '/wake') } @w), '2 holders, 6 waiters queued over both instances');
	usleep(300_000);
	# for scale: what the 6 waiters cost while nothing happens (each looks
	# again after 1 s without news, a safety net)
	my $i0 = kv_requests();
	sleep_full(1);
	note sprintf('etcd Range+Txn requests in 1 s with 6 idle semaphore waiters: %d', kv_requests() - $i0);
	my @cost;
	my @holder = @h;
	my $fifo = 1;
	for my $i (0 .. 5)
	{
		# release the oldest holder; the next waiter in line must get in
		my $rel = shift @holder;
		my $c0 = kv_requests();
		ok_sql($rel, "SELECT etcd_unlock_semaphore('/wake')");
		my ($out, $err) = finish_query($w[$i], $m[$i], 10);
		usleep(20_000);    # the admitted waiter's touch wakes the next one
		my $c1 = kv_requests();
		push @cost, $c1 - $c0;
		$fifo = 0 unless $out eq 't';
		$fifo = 0 if grep { query_done($w[$_], $m[$_]) } $i + 1 .. 5;
		push @holder, $w[$i];
	}
	ok($fifo, 'each release admitted the next waiter in arrival order, and only it');
	note 'etcd Range+Txn requests per release, until the next waiter was admitted: ' . join(', ', @cost);
	# each waiter re-reading the queue on every release would cost 2 or more
	# requests per waiter (12 with 6 waiters)
	ok($cost[0] <= 8, "a release with 6 waiters costs $cost[0] Range+Txn requests (<= 8, not one per waiter)");
	my @big = grep { $_ > 8 } @cost;
	ok(@big <= 1, 'every release costs <= 8 Range+Txn requests (one outlier allowed for the 1 s safety net): '
		  . join(', ', @cost));
	ok_sql($_, "SELECT etcd_unlock_all()") for @holder;
	no_keys_left('/wake/', 'wake-up: no key left after every permit was released');
	$_->quit for @h, @w;
}

# --- 6. permits mismatch (22023) and kind mixing (42809)
{
	my $sa = sess($na);
	my $sb = sess($nb);
	ok_sql($sa, "SELECT etcd_semaphore('/pm', 3)");
	my $hex = lease_of($sa, '/pm');
	my @before = keys_under('/pm/');
	is(join(',', @before), "/pm/$hex.sem3", 'a semaphore of 3 permits: its key is <lease>.sem3');
	my ($out, $err) = run($sb, "SELECT etcd_semaphore('/pm', 2, '5 s')");
	like($err, qr/22023.*etcd semaphore "\/pm" is in use as a semaphore with 3 permits; this call asks for 2/s,
		'another instance asking for 2 permits of a semaphore of 3: 22023');
	($out, $err) = run($sb, "SELECT etcd_try_semaphore('/pm', 2)");
	like($err, qr/22023/, '... etcd_try_semaphore too');
	($out, $err) = run($sb, "BEGIN; SELECT etcd_xact_semaphore('/pm', 4, '5 s'); ROLLBACK;");
	like($err, qr/22023/, '... etcd_xact_semaphore with 4 too');
	($out, $err) = run($sb, "SELECT etcd_lock('/pm', '5 s')");
	like($err, qr/42809.*etcd lock name "\/pm" is in use as a semaphore/s, 'etcd_lock on a semaphore name: 42809');
	($out, $err) = run($sb, "SELECT etcd_lock_shared('/pm', '5 s')");
	like($err, qr/42809/, 'etcd_lock_shared on a semaphore name: 42809');
	($out, $err) = run($sb, "SELECT etcd_try_lock('/pm')");
	like($err, qr/42809/, 'etcd_try_lock on a semaphore name: 42809');
	($out, $err) = run($sa, "SELECT etcd_semaphore('/pm', 5)");
	like($err, qr/22023.*this session holds etcd semaphore "\/pm" with 3 permits; this call asks for 5/s,
		'the holder itself asking with another N: 22023');

	ok_sql($sa, "SELECT etcd_lock('/km'), etcd_lock_shared('/km2')");
	my @km = (keys_under('/km/'), keys_under('/km2/'));
	($out, $err) = run($sb, "SELECT etcd_semaphore('/km', 2, '5 s')");
	like($err, qr/42809.*etcd semaphore name "\/km" is in use as a lock/s,
		'etcd_semaphore on a name held as an exclusive lock: 42809');
	($out, $err) = run($sb, "SELECT etcd_semaphore('/km2', 2, '5 s')");
	like($err, qr/42809.*in use as a lock/s, 'etcd_semaphore on a name held shared: 42809');
	($out, $err) = run($sb, "SELECT etcd_try_semaphore('/km2', 2)");
	like($err, qr/42809/, 'etcd_try_semaphore on a name held shared: 42809');

	# no key of the failing session is left: every key is the holder's
	my $ok = wait_until(sub {
		join(',', keys_under('/pm/'), keys_under('/km/'), keys_under('/km2/')) eq join(',', @before, @km)
	}, 5);
	ok($ok, 'after the 22023 and 42809 errors only the holder\'s keys are in etcd')
	  or diag('keys: ' . join(', ', keys_under('/pm/'), keys_under('/km/'), keys_under('/km2/')));
	ok(!(grep { !/\/\Q$hex\E(\.|$)/ } keys_under('/pm/'), keys_under('/km/'), keys_under('/km2/')),
		'... all of them under the holder\'s lease');
	is($nb->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE pid = $sb->{pid}"), '0',
		'... and etcd_locks shows nothing for the failing session');
	ok(ok_sql($sb, "SELECT etcd_semaphore('/pm_other', 2, '5 s')") > 0, 'the failing session still works');

	# the name's oldest key decides what it is: a newer key of a client
	# that disagrees (here planted, with a live lease of its own, as a
	# client stuck between its put and its own 22023) must not fail the
	# clients that agree with the holder
	ok_sql($sa, "SELECT etcd_semaphore('/pmw', 1)");
	my $lease = 0x5eed0000 + $$;
	system("curl -s $etcd->{endpoint}/v3/lease/grant -d '{\"ID\":\"$lease\",\"TTL\":\"60\"}' >/dev/null");
	my $bad = sprintf('/pmw/%x.sem2', $lease);
	system("curl -s $etcd->{endpoint}/v3/kv/put -d '{\"key\":\"" . encode_base64($bad, '')
		  . "\",\"value\":\"\",\"lease\":\"$lease\"}' >/dev/null");
	ok((grep { $_ eq $bad } keys_under('/pmw/')), 'a disagreeing permit key (2 permits) sits behind the holder (1 permit)');
	($out, $err) = run($sb, "SELECT etcd_try_semaphore('/pmw', 1)");
	is($out, 'f', 'an agreeing try sees the name taken, not an error') or diag($err);
	($out, $err) = run($sb, "SELECT etcd_semaphore('/pmw', 1, '300 ms')");
	like($err, qr/55P03/, 'an agreeing wait times out (55P03), not 22023');
	($out, $err) = run($sb, "SELECT etcd_semaphore('/pmw', 2, '300 ms')");
	like($err, qr/22023.*with 1 permits; this call asks for 2/s, 'one asking for 2 is told the holder\'s number (1)');
	system("curl -s $etcd->{endpoint}/v3/lease/revoke -d '{\"ID\":\"$lease\"}' >/dev/null");
	ok_sql($_, 'SELECT etcd_unlock_all()') for $sa, $sb;
	no_keys_left('/pm', 'no key left under /pm*');
	no_keys_left('/km', 'no key left under /km*');
	no_keys_left('/pmw', 'no key left under /pmw');
	$_->quit for $sa, $sb;
}

# --- 7. a lease lost while holding a shared lock and a semaphore permit
{
	my $fp = FaultProxy->start($etcd->{endpoint});
	my $c = etcd_node('ss_c', { endpoint => $fp->endpoint },
		'etcd_lock.lease_ttl' => '3s', 'etcd_lock.request_timeout' => '5s');
	my $h1 = sess($c);    # running when the lease is lost
	my $h2 = sess($c);    # idle when the lease is lost
	ok_sql($h1, "SELECT etcd_lock_shared('/lost/sh'), etcd_semaphore('/lost/sem', 1)");
	ok_sql($h2, "SELECT etcd_lock_shared('/lost/sh2'), etcd_semaphore('/lost/sem2', 1)");
	my $hm = start_query($h1, 'SELECT pg_sleep(60)');
	usleep(100_000);
	$fp->hold;
	my $t_hold = time;
	my @w = map { sess($nb) } 0 .. 3;
	my @wm = (
		start_query($w[0], "SELECT etcd_lock('/lost/sh', '30 s') > 0"),
		start_query($w[1], "SELECT etcd_semaphore('/lost/sem', 1, '30 s') > 0"),
		start_query($w[2], "SELECT etcd_lock('/lost/sh2', '30 s') > 0"),
		start_query($w[3], "SELECT etcd_semaphore('/lost/sem2', 1, '30 s') > 0"));
	my ($told, %taken);
	wait_until(sub {
		$told //= time if query_done($h1, $hm);
		for my $i (0 .. 3)
		{
			$taken{$i} //= time if query_done($w[$i], $wm[$i]);
		}
		return defined $told && keys(%taken) == 4;
	}, 30);
	$fp->pass;
	my $first_taken = (sort { $a <=> $b } values %taken)[0];
	ok(defined $told && keys(%taken) == 4 && $told < $first_taken,
		defined $told && defined $first_taken
		? sprintf('the running holder was told %.2f s after the partition began, %.2f s before instance B took a name',
			$told - $t_hold, $first_taken - $told)
		: 'the running holder was told, then instance B took the names');
	my ($out, $err) = eval { finish_query($h1, $hm, 10) };
	like($err // '', qr/the etcd lease of this session expired; its locks were lost/,
		'running holder: the lease-loss error');
	like($err // '', qr{Lost locks: .*"/lost/sh"}s, '... naming the shared lock');
	like($err // '', qr{Lost locks: .*"/lost/sem"}s, '... and the semaphore');
	($out, $err) = run($h2, 'SELECT 1', 10);
	like($err, qr/canceling statement: the etcd lease of this session expired; its locks were lost/,
		'idle holder: its next statement fails with the lease-loss error');
	like($err, qr{Lost locks: .*"/lost/sh2".*"/lost/sem2"|Lost locks: .*"/lost/sem2".*"/lost/sh2"}s,
		'... naming its shared lock and its semaphore');
	for my $i (0 .. 3)
	{
		($out, $err) = eval { finish_query($w[$i], $wm[$i], 10) };
		is($out // '', 't', "instance B took " . ('/lost/sh', '/lost/sem', '/lost/sh2', '/lost/sem2')[$i])
		  or diag($err // $@);
	}
	is(try_after_loss($h1, "SELECT etcd_try_lock_shared('/lost/sh')"), 'f',
		'after the loss the old holder does not re-enter the shared lock: instance B holds it exclusive');
	is(try_after_loss($h2, "SELECT etcd_try_semaphore('/lost/sem2', 1)"), 'f',
		'... nor the semaphore permit');
	ok_sql($_, 'SELECT etcd_unlock_all()') for @w;
	$_->quit for $h1, $h2, @w;
	no_keys_left('/lost/', 'lease loss: no key left');
	$c->stop;
	$fp->stop;
}

no_keys_left('/', 'at the end no key is left in etcd');
ok(!$na->log_contains('terminated by signal') && !$nb->log_contains('terminated by signal'), 'no backend crashed');
note sprintf('t/017 ran %.1f s', time - $t_begin);
done_testing();
