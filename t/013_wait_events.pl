# Wait events: on PostgreSQL 17 and later a session waiting for an etcd
# lock shows a named wait event in pg_stat_activity (EtcdLockPredecessor);
# on 15 and 16 it shows "Extension".
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $node = etcd_node('we', $etcd);
my $version = $node->safe_psql('postgres', 'SHOW server_version_num');
my $named = $version >= 170000;
note "server_version_num $version: " . ($named ? 'named wait events' : 'Extension only');

my $holder = session($node);
my $waiter = session($node);
$holder->query_safe("SELECT etcd_lock('/we')");
my $wpid = $waiter->query_safe('SELECT pg_backend_pid()');
my $m = start_query($waiter, "SELECT etcd_lock('/we', '30 s')");
my $ev = '';
wait_until(sub {
	$ev = $node->safe_psql('postgres',
		"SELECT wait_event_type || '/' || wait_event FROM pg_stat_activity WHERE pid = $wpid");
	return $ev eq ($named ? 'Extension/EtcdLockPredecessor' : 'Extension/Extension');
}, 10);
is($ev, $named ? 'Extension/EtcdLockPredecessor' : 'Extension/Extension',
	'a session queued behind another holder shows ' . ($named ? 'EtcdLockPredecessor' : 'Extension'));
$holder->query_safe("SELECT etcd_unlock('/we')");
my ($out) = finish_query($waiter, $m, 30);
ok($out > 0, 'the waiter got the lock');

$waiter->query_safe("SELECT etcd_unlock_all()");
$_->quit for $holder, $waiter;
done_testing();
