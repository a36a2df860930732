# etcd's own Go client (concurrency.Mutex, the reference program in
# ../shared/reference/go-mutex) and SQL sessions exclude each other on the
# same lock name with the default empty prefix.
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

my $go = $ENV{GO_MUTEX};
if (!$go || !-x $go)
{
	plan skip_all => 'GO_MUTEX (the built reference Go mutex) is not set';
}

my $etcd = start_etcd();
(my $ep = $etcd->{endpoint}) =~ s{^http://}{};
my $node = etcd_node('interop', $etcd);
my $s = session($node);
my $pid = $s->query_safe('SELECT pg_backend_pid()');

# --- Go holds /jobs for 3 s; SQL waits for it
my ($gout, $gerr) = ('', '');
my $t0 = time;
my $h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/jobs', '-ep', $ep, '-hold', '3s' ],
	'>', \$gout, '2>', \$gerr);
ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go mutex acquired /jobs');
my $m = start_query($s, "SELECT etcd_lock('/jobs')");
usleep(500_000);
ok(!query_done($s, $m), 'SQL etcd_lock waits while the Go client holds /jobs');
finish_query($s, $m, 30);
my $waited = time - $t0;
$h->finish;
like($gout, qr/Done!/, 'Go client released /jobs');
ok($waited >= 2.5, sprintf('SQL got /jobs only after Go released it (%.2f s)', $waited));

# --- SQL holds /jobs; Go waits until SQL unlocks
($gout, $gerr) = ('', '');
$t0 = time;
$h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/jobs', '-ep', $ep, '-hold', '0s' ],
	'>', \$gout, '2>', \$gerr);
ok(wait_until(sub { $h->pump_nb; $gout =~ /Waiting to acquire/ }, 30), 'Go client started waiting');
usleep(1_500_000);
$h->pump_nb;
unlike($gout, qr/Acquired lock/, 'Go client waits while SQL holds /jobs');
$s->query_safe("SELECT etcd_unlock('/jobs')");
ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go client acquired /jobs after SQL unlocked');
$h->finish;
like($gout, qr/Acquired lock after (\S+)/, "Go waited: $1") if $gout =~ /Acquired lock after (\S+)/;

# --- SQL queued behind Go: FIFO order across clients
($gout, $gerr) = ('', '');
$h = IPC::Run::start([ $go, '-mode', 'seed', '-lock', '/jobs', '-ep', $ep, '-hold', '1s' ],
	'>', \$gout, '2>', \$gerr);
ok(wait_until(sub { $h->pump_nb; $gout =~ /Acquired lock/ }, 30), 'Go holds /jobs again');
is($s->query_safe("SELECT etcd_try_lock('/jobs')"), 'f', 'try_lock fails while Go holds /jobs');
my $keys = etcd_keys($etcd, '/jobs/');
is(scalar(keys %$keys), 1, 'only the Go key exists (failed try leaves none)');
is((values %$keys)[0], '', 'the Go client\'s key has an empty value');
$h->finish;
is($s->query_safe("SELECT etcd_try_lock('/jobs')"), 't', 'try_lock succeeds after Go released');
$s->quit;

done_testing();
