# Waiting done right: FIFO order, one wakeup per release, the etcd_locks
# view, etcd_lock_holders from another instance (Go-held locks included),
# and a waiter that gives up removes its key before its ERROR returns.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $node = etcd_node('waiting', $etcd);
my $other = etcd_node('waiting_other', $etcd);
my @s = map { session($node) } 1 .. 3;
my @pid = map { $_->query_safe('SELECT pg_backend_pid()') } @s;

sub waiting
{
	my ($pid) = @_;
	return $node->safe_psql('postgres',
		"SELECT mode FROM etcd_locks WHERE pid = $pid AND name = '/fifo'") eq 'waiting';
}

# --- three sessions queue on one name and acquire in arrival order
my $t0 = $s[0]->query_safe("SELECT etcd_lock('/fifo')");
my $m1 = start_query($s[1], "SELECT etcd_lock('/fifo')");
ok(wait_until(sub { waiting($pid[1]) }, 10), 'session 1 queued');
my $m2 = start_query($s[2], "SELECT etcd_lock('/fifo')");
ok(wait_until(sub { waiting($pid[2]) }, 10), 'session 2 queued behind it');

# the local view, like pg_locks
my $view = $node->safe_psql('postgres',
	"SELECT pid, mode, scope, count, token IS NOT NULL FROM etcd_locks WHERE name = '/fifo' ORDER BY since");
is($view, "$pid[0]|held|session|1|t\n$pid[1]|waiting|session|0|f\n$pid[2]|waiting|session|0|f",
	'etcd_locks shows the holder and both waiters');
is($node->safe_psql('postgres',
	"SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid[2]"), 'Extension',
	'waiter shows wait_event_type Extension');

# the cluster view, from the other instance
my $h = $other->safe_psql('postgres',
	"SELECT token, waiters, holder->>'pid', ttl_seconds > 0 FROM etcd_lock_holders('/fifo')");
is($h, "$t0|2|$pid[0]|t", 'etcd_lock_holders on another instance: holder, 2 waiters, live TTL');

$s[0]->query_safe("SELECT etcd_unlock('/fifo')");
my ($t1) = finish_query($s[1], $m1, 30);
ok($t1 > $t0, 'the first waiter got the lock');
usleep(200_000);
ok(!query_done($s[2], $m2), 'the second waiter still waits (one release wakes one waiter)');
is($other->safe_psql('postgres', "SELECT waiters FROM etcd_lock_holders('/fifo')"), '1',
	'one waiter left');
$s[1]->query_safe("SELECT etcd_unlock('/fifo')");
my ($t2) = finish_query($s[2], $m2, 30);
ok($t2 > $t1, 'then the second waiter, in arrival order');
$s[2]->query_safe("SELECT etcd_unlock('/fifo')");

# --- many rounds: acquisition order always matches arrival order
my $order_ok = 0;
for my $round (1 .. 5)
{
	$s[0]->query_safe("SELECT etcd_lock('/fifo')");
	my @order = $round % 2 ? (1, 2) : (2, 1);
	my %m;
	for my $i (@order)
	{
		$m{$i} = start_query($s[$i],
			"SELECT extract(epoch FROM clock_timestamp()) FROM (SELECT etcd_lock('/fifo')) x;\n"
			  . "SELECT pg_sleep(0.05) \\g /dev/null\nSELECT etcd_unlock('/fifo') \\g /dev/null");
		wait_until(sub { waiting($pid[$i]) }, 10);
	}
	$s[0]->query_safe("SELECT etcd_unlock('/fifo')");
	my %at = map { $_ => (finish_query($s[$_], $m{$_}, 30))[0] } @order;
	$order_ok++ if $at{ $order[0] } < $at{ $order[1] };
}
is($order_ok, 5, 'five rounds in alternating arrival order: always first come, first served');
is($node->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE name = '/fifo'"), '0',
	'nothing left in etcd_locks');

# --- a waiter that gives up: its key is gone when the ERROR returns
$s[0]->query_safe("SELECT etcd_lock('/fifo')");
my ($out, $err) = finish_query($s[1], start_query($s[1], "SELECT etcd_lock('/fifo', '100 ms')"), 30);
like($err, qr/within the timeout/, 'timeout argument');
is(scalar(keys %{ etcd_keys($etcd, '/fifo/') }), 1, 'its key was gone when the error returned (timeout)');
$m1 = start_query($s[1], "SELECT etcd_lock('/fifo')");
ok(wait_until(sub { waiting($pid[1]) }, 10), 'waiting again');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid[1])");
($out, $err) = finish_query($s[1], $m1, 30);
my $nkeys = scalar(keys %{ etcd_keys($etcd, '/fifo/') });
like($err, qr/canceling statement/, 'cancelled');
is($nkeys, 1, 'its key was gone when the cancel error returned');
is($node->safe_psql('postgres', "SELECT count(*) FROM etcd_locks WHERE pid = $pid[1]"), '0',
	'the cancelled waiter is gone from etcd_locks');
$s[0]->query_safe("SELECT etcd_unlock('/fifo')");

# --- a lock held by etcd's Go mutex shows in etcd_lock_holders with NULL details
SKIP:
{
	my $go = $ENV{GO_MUTEX};
	skip 'GO_MUTEX not set', 3 unless $go && -x $go;
	(my $ep = $etcd->{endpoint}) =~ s{^http://}{};
	my ($gout, $gerr) = ('', '');
	my $g = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/golock', '-ep', $ep, '-hold', '3s' ],
		'>', \$gout, '2>', \$gerr);
	ok(wait_until(sub { $g->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go mutex holds /golock');
	my $m = start_query($s[0], "SELECT etcd_lock('/golock')");
	ok(wait_until(sub { waiting_name($pid[0], '/golock') }, 10), 'SQL session queued behind Go');
	is($other->safe_psql('postgres',
		"SELECT holder IS NULL, waiters, ttl_seconds > 0 FROM etcd_lock_holders('/golock')"),
		't|1|t', 'Go holder: NULL details, 1 waiter, live TTL');
	$g->finish;
	finish_query($s[0], $m, 30);
	$s[0]->query_safe("SELECT etcd_unlock('/golock')");
}

sub waiting_name
{
	my ($pid, $name) = @_;
	return $node->safe_psql('postgres',
		"SELECT mode FROM etcd_locks WHERE pid = $pid AND name = '$name'") eq 'waiting';
}

# --- holder details only for pg_read_all_stats
$s[0]->query_safe("SELECT etcd_lock('/fifo')");
$other->safe_psql('postgres', 'CREATE ROLE plain_user LOGIN');
is($other->safe_psql('postgres',
	"SET ROLE plain_user; SELECT holder IS NULL, token > 0 FROM etcd_lock_holders('/fifo')"),
	't|t', 'a role without pg_read_all_stats sees tokens but no holder details');
$other->safe_psql('postgres', 'GRANT pg_read_all_stats TO plain_user');
is($other->safe_psql('postgres',
	"SET ROLE plain_user; SELECT holder->>'pid' FROM etcd_lock_holders('/fifo')"),
	$pid[0], 'with pg_read_all_stats it sees the holder');

$_->quit for @s;
done_testing();
