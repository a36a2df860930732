# Security: TLS with client certificates, etcd user/password auth with
# token expiry, a role confined to the lock prefix, bad credentials giving
# clear errors without leaking secrets, and an SQL user unable to release
# another session's lock.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

# --- certificates, made here with openssl
my $pki = PostgreSQL::Test::Utils::tempdir('pki');
chmod 0755, $pki;
sub sh
{
	my ($cmd) = @_;
	system("$cmd >>$pki/openssl.log 2>&1") == 0 or die "failed: $cmd";
}
for my $ca ('ca', 'wrongca')
{
	sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=etcd_lock test $ca' "
		  . "-keyout $pki/$ca.key -out $pki/$ca.crt");
}
open(my $ext, '>', "$pki/server.ext") or die;
print $ext "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n";
close $ext;
open($ext, '>', "$pki/client.ext") or die;
print $ext "extendedKeyUsage=clientAuth\n";
close $ext;
sub cert
{
	my ($name, $subj, $ca, $extfile) = @_;
	sh("openssl req -newkey rsa:2048 -nodes -subj '$subj' -keyout $pki/$name.key -out $pki/$name.csr");
	sh("openssl x509 -req -in $pki/$name.csr -CA $pki/$ca.crt -CAkey $pki/$ca.key -CAcreateserial "
		  . "-days 2 -extfile $pki/$extfile -out $pki/$name.crt");
}
cert('server', '/CN=127.0.0.1', 'ca', 'server.ext');
# a client certificate without CN: with auth enabled, etcd would take a CN
# as the user name (see ETCD-GATEWAY.md)
cert('client', '/O=etcd_lock test client', 'ca', 'client.ext');
cert('badclient', '/O=etcd_lock bad client', 'wrongca', 'client.ext');
chmod 0644, glob("$pki/*");

my $tls_curl = "--cacert $pki/ca.crt --cert $pki/client.crt --key $pki/client.key";
my $etcd = start_etcd(
	scheme => 'https',
	args => [
		'--cert-file', "$pki/server.crt", '--key-file', "$pki/server.key",
		'--client-cert-auth', '--trusted-ca-file', "$pki/ca.crt",
		'--auth-token-ttl', '2'
	],
	curl_opts => $tls_curl);
my $ep = $etcd->{endpoint};
ok(system("curl -sf -m 2 $tls_curl $ep/version >/dev/null") == 0, 'etcd answers over TLS with a client certificate');
ok(system("curl -sf -m 2 --cacert $pki/ca.crt $ep/version >/dev/null 2>&1") != 0,
	'etcd refuses a client without a certificate');

my $tls_conf = {
	'etcd_lock.tls_ca_file' => "$pki/ca.crt",
	'etcd_lock.tls_cert_file' => "$pki/client.crt",
	'etcd_lock.tls_key_file' => "$pki/client.key",
	'etcd_lock.lease_ttl' => '3s',
	'etcd_lock.request_timeout' => '2s',
};

# --- locks, waits, keepalives, release and views over TLS
my $node = etcd_node('tls', $etcd, %$tls_conf);
my $s1 = session($node);
my $s2 = session($node);
my $t1 = $s1->query_safe("SELECT etcd_lock('/app/tls')");
ok($t1 > 0, 'TLS: lock');
my $m = start_query($s2, "SELECT etcd_lock('/app/tls')");
usleep(300_000);
ok(!query_done($s2, $m), 'TLS: a second session waits (watch over TLS)');
sleep_full(4);
is($node->safe_psql('postgres', "SELECT etcd_try_lock('/app/tls')"), 'f', 'TLS: keepalives keep the lock past the TTL');
is($node->safe_psql('postgres', "SELECT waiters FROM etcd_lock_holders('/app/tls')"), '1', 'TLS: etcd_lock_holders');
$s1->query_safe("SELECT etcd_unlock('/app/tls')");
my ($t2) = finish_query($s2, $m, 20);
ok($t2 > $t1, 'TLS: release hands over');
$s2->query_safe("SELECT etcd_unlock('/app/tls')");

# --- connections (and TLS sessions) are reused: no handshake per lock
{
	(my $port = $ep) =~ s/.*://;
	my $pid = $s1->query_safe('SELECT pg_backend_pid()');
	my $conns = sub {
		my @l = grep { /pid=$pid,/ } split /\n/, `ss -tnpH state established '( dport = :$port )' 2>/dev/null`;
		return join(' ', sort map { (split /\s+/)[2] } @l);
	};
	$s1->query_safe("SELECT etcd_lock('/app/reuse'); SELECT etcd_unlock('/app/reuse');");
	my $before = $conns->();
	$s1->query_safe("SELECT etcd_lock('/app/reuse'), etcd_unlock('/app/reuse') FROM generate_series(1, 50)");
	my $after = $conns->();
	ok($before ne '', "the backend has a TLS connection to etcd ($before)");
	is($after, $before, '50 more lock/unlock pairs used the same connection (no new handshake)');
}

# --- an SQL user cannot release another session's lock
$s1->query_safe("SELECT etcd_lock('/app/mine')");
my ($out, $err) = finish_query($s2, start_query($s2, "SELECT etcd_unlock('/app/mine')"), 10);
is($out, 'f', 'unlocking a lock held by another session returns false');
like($err, qr/WARNING:  you don't own an etcd lock named "\/app\/mine"/, '... with a WARNING');
is($node->safe_psql('postgres', "SELECT etcd_try_lock('/app/mine')"), 'f', 'and the lock is still held');
$s1->query_safe("SELECT etcd_unlock('/app/mine')");
$s1->quit;
$s2->quit;

# --- wrong CA, wrong client certificate: clear errors, no hang
sub try_node
{
	my ($name, %conf) = @_;
	my $n = etcd_node($name, $etcd, %$tls_conf, %conf);
	my $t0 = time;
	my ($rc, $o, $e) = $n->psql('postgres', "\\set VERBOSITY verbose\nSELECT etcd_lock('/app/x')");
	return ($n, $e, time - $t0);
}
my ($n2, $e2, $el2) = try_node('wrongca', 'etcd_lock.tls_ca_file' => "$pki/wrongca.crt");
like($e2, qr/58000.*etcd is unreachable.*\Q$ep\E: SSL peer certificate/s,
	'wrong CA: a clear error naming the endpoint and the certificate check');
ok($el2 < 10, sprintf('wrong CA: no hang (%.2f s)', $el2));
unlike($e2, qr/\Q$pki\E/, 'wrong CA: no file path in the client\'s message');
$n2->stop;
my ($n3, $e3, $el3) = try_node('badclient',
	'etcd_lock.tls_cert_file' => "$pki/badclient.crt",
	'etcd_lock.tls_key_file' => "$pki/badclient.key");
like($e3, qr/58000.*etcd is unreachable.*\Q$ep\E/s, 'wrong client certificate: a clear error');
ok($el3 < 10, sprintf('wrong client certificate: no hang (%.2f s)', $el3));
$n3->stop;

# --- etcd auth: root, and a role limited to the /app/ prefix
my $ctl = "ETCDCTL_API=3 etcdctl --endpoints $ep --cacert $pki/ca.crt --cert $pki/client.crt --key $pki/client.key";
my $password = 'S3cret-pw-' . int(rand(1e9));
sh("$ctl user add root --new-user-password=rootpw");
sh("$ctl role add lockrole");
sh("$ctl role grant-permission lockrole --prefix=true readwrite /app/");
sh("$ctl user add locker --new-user-password='$password'");
sh("$ctl user grant-role locker lockrole");
sh("$ctl auth enable");
my $root = "$ctl --user root:rootpw";

my $pwfile = "$pki/locker.pw";
open(my $pf, '>', $pwfile) or die;
print $pf "$password\n";
close $pf;
chmod 0600, $pwfile;

$node->append_conf('postgresql.conf', "etcd_lock.username = 'locker'\netcd_lock.password_file = '$pwfile'\n");
$node->restart;

# --- one authentication per instance: the worker authenticates at start
# and shares its token; backends take it instead of authenticating
{
	my $auths = sub { $node->safe_psql('postgres', 'SELECT authentications FROM etcd_lock_status') };
	ok(wait_until(sub { $auths->() >= 1 }, 10), 'auth: the worker authenticated at start');
	my $a0 = $auths->();
	my @five = map { session($node) } 1 .. 5;
	$five[$_]->query_safe("SELECT etcd_lock('/app/one$_')") for 0 .. 4;
	my $a1 = $auths->();
	# tokens live 2 s here: one re-authentication may fall in the window
	ok($a1 - $a0 <= 1, "auth: five sessions locked with the shared token ($a0 -> $a1 authentications)");
	$_->query_safe("SELECT etcd_unlock_all()") for @five;
	$_->quit for @five;
}

$s1 = session($node);
$s2 = session($node);
$t1 = $s1->query_safe("SELECT etcd_lock('/app/auth')");
ok($t1 > 0, 'auth: lock as a user limited to /app/');
$m = start_query($s2, "SELECT etcd_lock('/app/auth')");
usleep(300_000);
ok(!query_done($s2, $m), 'auth: a second session waits');
# tokens live 2 s: wait past expiry; keepalives and the waiter's watch must re-authenticate
sleep_full(5);
is($node->safe_psql('postgres', "SELECT etcd_try_lock('/app/auth')"), 'f',
	'auth: the lock survived token expiry (keepalives re-authenticated)');
is($node->safe_psql('postgres', "SELECT waiters FROM etcd_lock_holders('/app/')"), '1',
	'auth: etcd_lock_holders within the prefix');
($out, $err) = finish_query($s1, start_query($s1, "SELECT etcd_unlock('/app/auth')"), 10);
is($out, 't', 'auth: unlock after token expiry');
is($err, '', 'auth: no user-visible error on token expiry');
($t2) = finish_query($s2, $m, 20);
ok($t2 > $t1, 'auth: the waiter got the lock after token expiry');
$s2->query_safe("SELECT etcd_unlock('/app/auth')");

# --- credentials reload (issue 18): a reload that changes the password
# file authenticates with it at once. A password etcd refuses is logged
# once and shown in etcd_lock_status.auth_error (before: nothing until the
# token in use expired, then every lock call failed); the right one again
# authenticates at once and clears it.
{
	my $auth_error = sub {
		$node->safe_psql('postgres', "SELECT coalesce(auth_error, '') FROM etcd_lock_status");
	};
	my $write_pw = sub {
		open(my $f, '>', $pwfile) or die;
		print $f "$_[0]\n";
		close $f;
		chmod 0600, $pwfile;
	};
	is($auth_error->(), '', 'credentials reload: no authentication error to begin with');
	my $off = -s $node->logfile;
	$write_pw->("wrong-$password");
	$node->reload;
	ok(wait_until(sub { $auth_error->() =~ /authentication as etcd user "locker" failed/ }, 10),
		'credentials reload: a wrong new password shows in etcd_lock_status.auth_error at once');
	ok(wait_until(sub { slurp_file($node->logfile, $off) =~ /etcd refused the changed credentials/ }, 10),
		'credentials reload: the worker logs it');
	my $n = () = slurp_file($node->logfile, $off) =~ /etcd refused the changed credentials/g;
	is($n, 1, 'credentials reload: logged once');
	$off = -s $node->logfile;
	$write_pw->($password);
	$node->reload;
	ok(wait_until(sub { $auth_error->() eq '' }, 10), 'credentials reload: the right password again clears the error');
	like(slurp_file($node->logfile, $off), qr/authenticated to etcd with the changed credentials/,
		'credentials reload: ... having authenticated at once');
	is($node->safe_psql('postgres', "SELECT etcd_try_lock('/app/cred')"), 't', 'credentials reload: locks work');
	unlike(slurp_file($node->logfile), qr/wrong-\Q$password\E/, 'credentials reload: the password is never logged');
}

# --- outside the prefix: etcd refuses; a name cannot escape the prefix
($out, $err) = finish_query($s1, start_query($s1, "SELECT etcd_lock('/outside')"), 10);
like($err, qr/ERROR:.*permission denied/s, 'auth: a lock outside the granted prefix is refused by etcd');
$node->append_conf('postgresql.conf', "etcd_lock.prefix = '/app/'\n");
$node->reload;
usleep(300_000);
$s1->quit;
$s1 = session($node);
ok($s1->query_safe("SELECT etcd_lock('../../escape')") > 0, 'prefix: a ".." name is just a name under the prefix');
ok($s1->query_safe("SELECT etcd_lock('/x/../../../etc')") > 0, 'prefix: so is a path-like one');
my @all = split /\n/, `$root get '' --prefix --keys-only 2>/dev/null`;
@all = grep { length } @all;
my @outside = grep { !m{^/app/} } @all;
ok(scalar(@all) >= 2, 'root sees the lock keys');
is(scalar(@outside), 0, 'prefix: no key exists outside /app/ (' . join(',', @all) . ')');
$s1->query_safe("SELECT etcd_unlock_all()");

# --- deadlock detection with a role confined to the prefix: it reads only
# keys under the prefix (no lease key listings, which need more rights)
{
	my $d1 = session($node);
	my $d2 = session($node);
	$d1->query_safe("BEGIN; SELECT etcd_xact_lock('/dla')");
	$d2->query_safe("BEGIN; SELECT etcd_xact_lock('/dlb')");
	my $m1 = start_query($d1, "SELECT etcd_xact_lock('/dlb', '30 s') > 0");
	usleep(300_000);
	my $m2 = start_query($d2, "\\set VERBOSITY verbose\nSELECT etcd_xact_lock('/dla', '30 s') > 0");
	my ($o2, $e2) = finish_query($d2, $m2, 60);
	like($e2, qr/40P01.*deadlock detected/s, 'confined role: the deadlock is detected (40P01)');
	$d2->query('ROLLBACK');
	my ($o1, $e1) = finish_query($d1, $m1, 60);
	is($o1, 't', 'confined role: the other side proceeds');
	$d1->query('ROLLBACK');
	$_->quit for $d1, $d2;
}

# --- bad passwords: clear errors, the password never in a message or the log
$pf = undef;
open($pf, '>', $pwfile) or die;
print $pf "wrong-$password\n";
close $pf;
$s1->quit;
$s2->quit;
$node->restart;
my $s3 = session($node);
($out, $err) = finish_query($s3, start_query($s3, "SELECT etcd_lock('/app/bad')"), 20);
like($err, qr/authentication as etcd user "locker" failed/, 'wrong password: a clear error');
unlike($err, qr/\Q$password\E/, 'wrong password: the password is not in the message');
chmod 0644, $pwfile;
($out, $err) = finish_query($s3, start_query($s3, "SELECT etcd_lock('/app/bad')"), 20);
like($err, qr/password file must be a plain file readable only by the server's user/,
	'a group/world-readable password file is refused');
unlike($err, qr/\Q$pwfile\E/, 'its path is not shown to the client');
$s3->quit;
my $log = slurp_file($node->logfile);
unlike($log, qr/\Q$password\E/, 'the password never appears in the server log');
unlike($log, qr/rootpw/, 'nor does any other password');

done_testing();
