# Several sessions of one instance against a real etcd: blocking, handoff on
# unlock / ROLLBACK / COMMIT / disconnect, try-lock, timeouts, cancel and
# terminate of a waiter, keepalive past the TTL, lease revoked at exit.
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
my $node = etcd_node('sessions', $etcd, 'etcd_lock.lease_ttl' => '3');

my $s1 = session($node);
my $s2 = session($node);

# waiting($pid): the backend is blocked in our wait (Extension wait event)
sub waiting
{
	my ($pid) = @_;
	return $node->safe_psql('postgres',
		"SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid") eq 'Extension';
}
my $pid2 = $s2->query_safe('SELECT pg_backend_pid()');

# --- unlock hands the lock to the waiter
my $t1 = $s1->query_safe("SELECT etcd_lock('/jobs')");
ok($t1 > 0, 'session 1 holds /jobs');
my $m = start_query($s2, "SELECT etcd_lock('/jobs')");
ok(wait_until(sub { waiting($pid2) }, 10), 'session 2 waits, shown with wait_event_type Extension');
usleep(300_000);
ok(!query_done($s2, $m), 'session 2 still blocked while session 1 holds the lock');
my $keys = etcd_keys($etcd, '/jobs/');
is(scalar(keys %$keys), 2, 'two keys queued under /jobs/ (holder and waiter)');
my ($v) = values %$keys;
like($v, qr/"pid":\d+.*"database":"postgres"/, 'key value says who holds it');
my $t0 = time;
$s1->query_safe("SELECT etcd_unlock('/jobs')");
my ($t2) = finish_query($s2, $m, 30);
my $handoff_ms = (time - $t0) * 1000;
ok($t2 > $t1, "waiter got /jobs with a larger token ($t2 > $t1)");
note sprintf('unlock -> waiter acquired: %.1f ms', $handoff_ms);
ok($handoff_ms < 1000, 'handoff after unlock is prompt (bounded generously)');

# --- try-lock while held: false, and no key left behind
is($s1->query_safe("SELECT etcd_try_lock('/jobs')"), 'f', 'try_lock on a held lock is false');
is(scalar(keys %{ etcd_keys($etcd, '/jobs/') }), 1, 'a failed try_lock leaves no key');

# --- ROLLBACK hands over a lock taken in the transaction
$s2->query_safe("SELECT etcd_unlock('/jobs')");
$s1->query_safe("BEGIN; SELECT etcd_lock('/jobs');");
$m = start_query($s2, "SELECT etcd_lock('/jobs')");
ok(wait_until(sub { waiting($pid2) }, 10), 'session 2 waits for the transaction');
$t0 = time;
$s1->query_safe('ROLLBACK');
finish_query($s2, $m, 30);
note sprintf('ROLLBACK -> waiter acquired: %.1f ms', (time - $t0) * 1000);
pass('ROLLBACK released the lock to the waiter');
$s2->query_safe("SELECT etcd_unlock('/jobs')");

# --- COMMIT ends an xact lock
$s1->query_safe("BEGIN; SELECT etcd_xact_lock('/jobs');");
$m = start_query($s2, "SELECT etcd_lock('/jobs')");
ok(wait_until(sub { waiting($pid2) }, 10), 'session 2 waits for the xact lock');
$s1->query_safe('COMMIT');
finish_query($s2, $m, 30);
pass('COMMIT released the xact lock to the waiter');

# --- the timeout argument: 55P03 naming the lock, queue key removed
my ($out, $err) = finish_query($s1, start_query($s1, "SELECT etcd_lock('/jobs', '200 ms')"), 30);
like($err, qr/could not obtain etcd lock "\/jobs" within the timeout/, 'timeout argument ends the wait');
like($s1->query("SELECT 1") // '', qr/1/, 'session usable after timeout');
is(scalar(keys %{ etcd_keys($etcd, '/jobs/') }), 1, 'the timed-out waiter removed its queue key');
$s1->query("\\set VERBOSITY verbose");
($out, $err) = finish_query($s1, start_query($s1, "SELECT etcd_lock('/jobs', '100 ms')"), 30);
like($err, qr/55P03/, 'timeout SQLSTATE is 55P03');

# --- lock_timeout and statement_timeout
($out, $err) = finish_query($s1,
	start_query($s1, "SET lock_timeout = '150ms'; SELECT etcd_lock('/jobs'); RESET lock_timeout;"), 30);
like($err, qr/55P03.*due to lock_timeout/s, 'lock_timeout ends the wait with 55P03');
($out, $err) = finish_query($s1,
	start_query($s1, "SET statement_timeout = '150ms'; SELECT etcd_lock('/jobs'); RESET statement_timeout;"), 30);
like($err, qr/57014.*statement timeout/s, 'statement_timeout ends the wait with 57014');
# the queue key of a wait ended by an error goes to the worker, which
# deletes it at once (asynchronously: the statement does not wait for it)
ok(wait_until(sub { scalar(keys %{ etcd_keys($etcd, '/jobs/') }) == 1 }, 10), 'no queue key left after timeouts');

# --- pg_cancel_backend / pg_terminate_backend of a waiter
my $pid1 = $s1->query_safe('SELECT pg_backend_pid()');
$m = start_query($s1, "SELECT etcd_lock('/jobs')");
ok(wait_until(sub { waiting($pid1) }, 10), 'session 1 waits');
$t0 = time;
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid1)");
($out, $err) = finish_query($s1, $m, 30);
like($err, qr/canceling statement due to user request/, 'pg_cancel_backend ends the wait');
note sprintf('cancel -> returned: %.1f ms', (time - $t0) * 1000);
ok(wait_until(sub { scalar(keys %{ etcd_keys($etcd, '/jobs/') }) == 1 }, 5),
	'the cancelled waiter\'s key is removed');

my $s3 = session($node);
my $pid3 = $s3->query_safe('SELECT pg_backend_pid()');
$m = start_query($s3, "SELECT etcd_lock('/jobs')");
ok(wait_until(sub { waiting($pid3) }, 10), 'session 3 waits');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid3)");
ok(wait_until(sub { scalar(keys %{ etcd_keys($etcd, '/jobs/') }) == 1 }, 5),
	'the terminated waiter\'s key is removed (its lease revoked)');
eval { $s3->quit };    # its backend was terminated
# and the next waiter still gets the lock on release
$m = start_query($s1, "SELECT etcd_lock('/jobs')");
ok(wait_until(sub { waiting($pid1) }, 10), 'session 1 waits again');
$s2->query_safe("SELECT etcd_unlock('/jobs')");
finish_query($s1, $m, 30);
pass('after a cancelled and a terminated waiter, the next waiter gets the lock');

# --- the worker keeps the lease alive past its TTL (3 s)
sleep_full(7);
is($s2->query_safe("SELECT etcd_try_lock('/jobs')"), 'f', 'lock still held after 2 x TTL (keepalives work)');
is(scalar(keys %{ etcd_keys($etcd, '/jobs/') }), 1, 'holder key still present after 2 x TTL');

# --- disconnect frees the lock at once (lease revoked by the worker)
$m = start_query($s2, "SELECT etcd_lock('/jobs')");
ok(wait_until(sub { waiting($pid2) }, 10), 'session 2 waits for session 1');
$t0 = time;
$s1->quit;
finish_query($s2, $m, 30);
my $disc_ms = (time - $t0) * 1000;
note sprintf('disconnect -> waiter acquired: %.1f ms', $disc_ms);
ok($disc_ms < 3000, 'disconnect freed the lock before the lease TTL');
$s2->quit;
ok(wait_until(sub { scalar(keys %{ etcd_keys($etcd, '/jobs/') }) == 0 }, 5),
	'no keys left after every session ended');

# --- a second instance on the same etcd is excluded too
my $other = etcd_node('other', $etcd);
my $a = session($node);
$a->query_safe("SELECT etcd_lock('/cross')");
is($other->safe_psql('postgres', "SELECT etcd_try_lock('/cross')"), 'f',
	'another instance cannot take a lock held here');
$a->query_safe("SELECT etcd_unlock('/cross')");
is($other->safe_psql('postgres', "SELECT etcd_try_lock('/cross')"), 't',
	'and takes it once released');
$a->quit;

# --- without shared_preload_libraries: a clear error and a hint
my $plain = PostgreSQL::Test::Cluster->new('plain');
$plain->init;
$plain->start;
$plain->safe_psql('postgres', 'CREATE EXTENSION etcd_lock');
my ($rc, $o, $e) = $plain->psql('postgres', "\\set VERBOSITY verbose\nSELECT etcd_lock('/x')");
like($e, qr/55000.*shared_preload_libraries/s, 'not preloaded: ERROR 55000');
like($e, qr/HINT:.*shared_preload_libraries/, 'not preloaded: the hint says how');

done_testing();
