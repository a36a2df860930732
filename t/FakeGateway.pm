# A deliberately misbehaving etcd JSON gateway for TAP tests: an HTTP/1.1
# server on loopback (keep-alive, Content-Length or chunked answers) whose
# behaviour for the lock calls is switched by a mode file. Lease calls
# (grant, keepalive, revoke) and deleterange always answer like etcd, so
# the background worker and the cleanup of abandoned queue places keep
# working whatever the mode. Every request is logged (path, time, key).
#
#   my $gw = FakeGateway->start();       # $gw->{endpoint}, $gw->{port}
#   $gw->set_mode('garbage');            # takes effect at the next request
#   my @reqs = $gw->requests(since => $t, path => '/v3/watch');
#
# The server runs in a forked child with one child per connection; each
# is bounded in time and killed by PID when the test ends.
package FakeGateway;

use strict;
use warnings;
use Carp;
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use Math::BigInt;
use MIME::Base64;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(time usleep);

our $LEASE_ID = '7587';       # every grant answers this lease
our $MY_REV = 100;            # create_revision of the caller's key
our $OTHER_KEY = '/bad/1';    # an older key that holds the lock in wait modes
our $OTHER_REV = 50;
our $MAX_LIFE = 900;          # seconds any fake process lives at most

my @server_pids;

# start(): listens at once (the port is ready when start returns)
sub start
{
	my ($class, %opt) = @_;
	my $dir = PostgreSQL::Test::Utils::tempdir('fakegw');
	my $listen;
	my $port;
	for (1 .. 20)
	{
		$port = PostgreSQL::Test::Cluster::get_free_port();
		$listen = IO::Socket::INET->new(
			LocalAddr => '127.0.0.1',
			LocalPort => $port,
			Listen => 64,
			ReuseAddr => 1,
			Proto => 'tcp');
		last if $listen;
	}
	croak "FakeGateway: cannot listen: $!" unless $listen;
	my $self = bless {
		dir => $dir,
		port => $port,
		endpoint => "http://127.0.0.1:$port",
		log => "$dir/requests.log"
	}, $class;
	$self->set_mode($opt{mode} // 'ok');

	my $pid = fork();
	croak "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		eval { $self->_serve($listen) };
		POSIX::_exit(0);
	}
	close $listen;
	$self->{pid} = $pid;
	push @server_pids, $pid;
	return $self;
}

# set_mode(mode): how the lock calls are answered from the next request on
sub set_mode
{
	my ($self, $mode) = @_;
	open(my $fh, '>', "$self->{dir}/mode.tmp") or croak $!;
	print $fh $mode;
	close $fh;
	rename("$self->{dir}/mode.tmp", "$self->{dir}/mode") or croak $!;
	return;
}

sub mode
{
	my ($self) = @_;
	open(my $fh, '<', "$self->{dir}/mode") or return 'ok';
	my $m = <$fh> // 'ok';
	close $fh;
	return $m;
}

# requests(since => epoch, path => '/v3/...'): logged requests, oldest first;
# each {t, pid, path, key (decoded), kind}
sub requests
{
	my ($self, %f) = @_;
	my @r;
	open(my $fh, '<', $self->{log}) or return ();
	while (my $l = <$fh>)
	{
		my $r = eval { decode_json($l) } or next;
		next if defined $f{since} && $r->{t} < $f{since};
		next if defined $f{path} && $r->{path} ne $f{path};
		push @r, $r;
	}
	close $fh;
	return @r;
}

# stop(): ends the server and its connections
sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	kill 'TERM', $self->{pid};
	waitpid($self->{pid}, 0);
	@server_pids = grep { $_ != $self->{pid} } @server_pids;
	delete $self->{pid};
	return;
}

END
{
	local $?;
	for my $pid (@server_pids)
	{
		kill 'TERM', $pid;
		waitpid($pid, 0);
	}
}

# ---------------------------------------------------------------------
# the server (runs in the forked child)
# ---------------------------------------------------------------------

sub _serve
{
	my ($self, $listen) = @_;
	my %kids;
	my $stop = 0;
	local $SIG{TERM} = sub { $stop = 1 };
	local $SIG{PIPE} = 'IGNORE';
	my $end = time + $MAX_LIFE;
	my $sel = IO::Select->new($listen);
	while (!$stop && time < $end)
	{
		while ((my $k = waitpid(-1, POSIX::WNOHANG())) > 0)
		{
			delete $kids{$k};
		}
		next unless $sel->can_read(0.2);
		my $c = $listen->accept or next;
		my $k = fork();
		if (!defined $k)
		{
			close $c;
			next;
		}
		if ($k == 0)
		{
			$SIG{TERM} = 'DEFAULT';
			close $listen;
			eval { $self->_connection($c, getppid()) };
			POSIX::_exit(0);
		}
		$kids{$k} = 1;
		close $c;
	}
	kill 'KILL', keys %kids;
	waitpid($_, 0) for keys %kids;
	return;
}

# _read_some(sock, \buf, timeout): appends what arrives; false on EOF/timeout
sub _read_some
{
	my ($c, $buf, $timeout) = @_;
	my $sel = IO::Select->new($c);
	return 0 unless $sel->can_read($timeout);
	my $n = sysread($c, $$buf, 65536, length($$buf));
	return defined $n && $n > 0;
}

# _read_request(sock, \buf, server_pid): one request, or undef when the
# client went away (or stayed silent 60 s, or the server is gone)
sub _read_request
{
	my ($c, $buf, $server) = @_;
	my $deadline = time + 60;
	while (index($$buf, "\r\n\r\n") < 0)
	{
		return undef if time > $deadline || getppid() != $server;
		my $ok = _read_some($c, $buf, 1);
		return undef if !$ok && (time > $deadline || _eof($c));
	}
	my $hend = index($$buf, "\r\n\r\n");
	my $head = substr($$buf, 0, $hend);
	substr($$buf, 0, $hend + 4) = '';
	my ($line, @h) = split(/\r\n/, $head);
	my ($method, $path) = split(/ /, $line // '');
	my %h;
	for (@h)
	{
		$h{ lc $1 } = $2 if /^([^:]+):\s*(.*)$/;
	}
	if (lc($h{'transfer-encoding'} // '') eq 'chunked')
	{
		# a streamed upload (the worker's keepalive stream): say "go on",
		# read its first message only; the answer ends the connection
		_write($c, "HTTP/1.1 100 Continue\r\n\r\n") if lc($h{expect} // '') eq '100-continue';
		# (the size is taken inside the loop: a capture made in a loop's
		# condition is gone once the loop ends)
		my $size;
		while (!defined $size)
		{
			if ($$buf =~ s/^([0-9a-fA-F]+)\r\n//)
			{
				$size = hex($1);
				last;
			}
			return undef if time > $deadline;
			return undef if !_read_some($c, $buf, 1) && _eof($c);
		}
		while (length($$buf) < $size)
		{
			return undef if time > $deadline;
			return undef if !_read_some($c, $buf, 1) && _eof($c);
		}
		return { method => $method, path => $path, headers => \%h,
			body => substr($$buf, 0, $size), stream => 1 };
	}
	my $len = $h{'content-length'} // 0;
	while (length($$buf) < $len)
	{
		return undef if time > $deadline;
		return undef if !_read_some($c, $buf, 1) && _eof($c);
	}
	my $body = substr($$buf, 0, $len);
	substr($$buf, 0, $len) = '';
	return { method => $method, path => $path, headers => \%h, body => $body };
}

# _eof(sock): has the peer closed?
sub _eof
{
	my ($c) = @_;
	my $sel = IO::Select->new($c);
	return 0 unless $sel->can_read(0);
	my $b;
	my $n = recv($c, $b, 1, POSIX::MSG_PEEK());
	return !defined $n || $b eq '';
}

sub _write
{
	my ($c, $data) = @_;
	my $off = 0;
	while ($off < length($data))
	{
		my $n = syswrite($c, $data, 65536, $off);
		return 0 unless defined $n && $n > 0;
		$off += $n;
	}
	return 1;
}

my %reason = (200 => 'OK', 400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden',
	404 => 'Not Found', 500 => 'Internal Server Error', 503 => 'Service Unavailable');

# _send(sock, status, body, chunked): one complete answer
sub _send
{
	my ($c, $status, $body, $chunked) = @_;
	my $head = "HTTP/1.1 $status " . ($reason{$status} // 'X') . "\r\nContent-Type: application/json\r\n";
	if ($chunked)
	{
		return _write($c, $head . "Transfer-Encoding: chunked\r\n\r\n")
		  && (length($body) == 0 || _write($c, sprintf("%x\r\n%s\r\n", length($body), $body)))
		  && _write($c, "0\r\n\r\n");
	}
	return _write($c, $head . "Content-Length: " . length($body) . "\r\n\r\n" . $body);
}

sub _chunk
{
	my ($c, $data) = @_;
	return _write($c, sprintf("%x\r\n%s\r\n", length($data), $data));
}

sub b64 { return encode_base64($_[0], '') }

sub _hdr
{
	my ($rev) = @_;
	return { cluster_id => '1', member_id => '2', revision => "$rev", raft_term => '2' };
}

# set_omit_lease(bool): from the next request on, list keys without their
# `lease` field, as etcd 3.7.0-3.7.3 answer keys-only ranges (etcd issue
# #22209); here every listing omits it, the harder case
sub set_omit_lease
{
	my ($self, $on) = @_;
	my $f = "$self->{dir}/omit_lease";
	if ($on) { open(my $fh, '>', $f) or croak $!; close $fh }
	else { unlink $f }
	return;
}

our $OMIT_LEASE = 0;    # set per request from the flag file

# _kv(key_b64, rev): a key as etcd lists it. A lock key is named by the
# hex of its own lease (the rule the extension checks), so the lease is
# taken from the key's last segment when that is hex.
sub _kv
{
	my ($key_b64, $rev) = @_;
	my $key = eval { decode_base64($key_b64) } // '';
	my ($seg) = $key =~ m{/([0-9a-f]{1,16})$};
	my $lease = defined $seg ? Math::BigInt->from_hex($seg)->bstr : $LEASE_ID;
	my $kv = { key => $key_b64, create_revision => "$rev", mod_revision => "$rev", version => '1' };
	$kv->{lease} = $lease unless $OMIT_LEASE;
	return $kv;
}

# _kind(req): which lock call a txn is (see src/lockops.c)
sub _kind
{
	my ($path, $r) = @_;
	return 'watch' if $path eq '/v3/watch';
	return 'range' if $path eq '/v3/kv/range';
	return 'other' unless $path eq '/v3/kv/txn' && ref $r eq 'HASH';
	my @succ = @{ $r->{success} // [] };
	return 'release' if grep { $_->{request_delete_range} || $_->{request_txn} } @succ;
	if (grep { $_->{request_put} } @succ)
	{
		return ($r->{compare}[0]{range_end}) ? 'try' : 'acquire';
	}
	return 'pred' if !$r->{compare} && (@succ >= 2 && @succ <= 4);
	return 'verify';
}

# the answers of a well-behaved etcd (mode ok) or of the queue that makes
# the caller wait (wait modes)
sub _good_answer
{
	my ($kind, $r, $waiting) = @_;
	my $mykey = eval { (grep { $_->{request_put} } @{ $r->{success} })[0]{request_put}{key} };
	if ($kind eq 'acquire' || $kind eq 'try')
	{
		return { header => _hdr($MY_REV), succeeded => JSON::PP::true,
			responses => [ { response_put => { header => _hdr($MY_REV) } } ] }
		  if $kind eq 'try';
		my $oldest = $waiting ? _kv(b64($OTHER_KEY), $OTHER_REV) : _kv($mykey, $MY_REV);
		return { header => _hdr($MY_REV), succeeded => JSON::PP::true,
			responses => [
				{ response_put => { header => _hdr($MY_REV) } },
				{ response_range => { header => _hdr($MY_REV), kvs => [$oldest], count => '2' } } ] };
	}
	if ($kind eq 'pred')
	{
		my $mine = $r->{success}[0]{request_range}{key};
		my $pred = { header => _hdr($MY_REV), count => '0' };
		$pred = { header => _hdr($MY_REV), kvs => [ _kv(b64($OTHER_KEY), $OTHER_REV) ], count => '2' }
		  if $waiting;
		# our key; the newest key below ours; (3 ops) the oldest below ours;
		# (4 ops, a wait's first read) the oldest key with its value
		return { header => _hdr($MY_REV), succeeded => JSON::PP::true,
			responses => [
				{ response_range => { header => _hdr($MY_REV), kvs => [ _kv($mine, $MY_REV) ], count => '1' } },
				{ response_range => $pred },
				(@{ $r->{success} } >= 3 ? ({ response_range => $pred }) : ()),
				(@{ $r->{success} } == 4 ? ({ response_range => $pred }) : ()) ] };
	}
	# the predecessor check: the predecessor still exists, same revision
	return { header => _hdr($MY_REV), kvs => [ _kv(b64($OTHER_KEY), $OTHER_REV) ], count => '1' }
	  if $kind eq 'range' && $waiting;
	return { header => _hdr($MY_REV), count => '0' } if $kind eq 'range';
	return { header => _hdr($MY_REV + 1), succeeded => JSON::PP::true,
		responses => [ { response_delete_range => { header => _hdr($MY_REV + 1), deleted => '1' } } ] }
	  if $kind eq 'release';
	return { header => _hdr($MY_REV), succeeded => JSON::PP::true };
}

# _connection: serves one kept-alive connection until the client leaves
sub _connection
{
	my ($self, $c, $server) = @_;
	binmode $c;
	my $buf = '';
	my $end = time + $MAX_LIFE;
	while (time < $end && getppid() == $server)
	{
		my $req = _read_request($c, \$buf, $server) or return;
		my $r = eval { decode_json($req->{body}) };
		my $kind = _kind($req->{path}, $r);
		my $mode = $self->mode;
		local $OMIT_LEASE = -e "$self->{dir}/omit_lease" ? 1 : 0;
		my $key;
		$key = eval { decode_base64($r->{key}) }
		  if $req->{path} eq '/v3/kv/deleterange' || $req->{path} eq '/v3/kv/range';
		$key = eval { decode_base64($r->{create_request}{key}) } if $kind eq 'watch';
		$key = eval { decode_base64($r->{compare}[0]{key}) } if $kind eq 'release';
		if (open(my $lf, '>>', $self->{log}))
		{
			syswrite($lf, encode_json({ t => time, pid => $$, path => $req->{path},
				kind => $kind, mode => $mode, key => $key }) . "\n");
			close $lf;
		}
		return unless $self->_answer($c, $req, $r, $kind, $mode);
	}
	return;
}

# _answer: writes the answer for mode; false when the connection is done
sub _answer
{
	my ($self, $c, $req, $r, $kind, $mode) = @_;
	my $p = $req->{path};

	# a hung member: nothing is ever answered
	return _stall($c) if $mode eq 'stall_all';

	# lease calls and the worker's cleanup always work
	# like etcd, a grant with a client-chosen ID grants that ID
	return _send($c, 200, encode_json({ header => _hdr(1), ID => ($r->{ID} // $LEASE_ID), TTL => '10' }))
	  if $p eq '/v3/lease/grant';
	if ($p eq '/v3/lease/keepalive')
	{
		# a stream's first chunk may carry several renewals, one JSON
		# message per line (the worker's sends pile up between curl's
		# reads): each is answered, in order, as etcd does
		my @ids = $req->{stream}
		  ? map { (eval { decode_json($_) } // {})->{ID} // $LEASE_ID } grep { /\S/ } split /\n/, $req->{body}
		  : ($r->{ID} // $LEASE_ID);
		_send($c, 200, join('', map { encode_json({ result => { header => _hdr(1), ID => $_, TTL => '10' } }) . "\n" } @ids), 1);
		return !$req->{stream};    # a stream's rest is not read: close
	}
	return _send($c, 200, encode_json({ header => _hdr(1) })) if $p eq '/v3/lease/revoke';
	return _send($c, 200, encode_json({ header => _hdr($MY_REV + 1), deleted => '1' }))
	  if $p eq '/v3/kv/deleterange';
	# the worker reads an abandoned queue key before deleting it by revision
	# (a one-key range, no range_end): gone
	return _send($c, 200, encode_json({ header => _hdr($MY_REV + 1), count => '0' }))
	  if $p eq '/v3/kv/range' && ref $r eq 'HASH' && !defined $r->{range_end}
	  && ($r->{key} // '') ne b64($OTHER_KEY) && $mode !~ /^watch_/;

	if ($mode eq 'ok' || $mode =~ /^watch_/)
	{
		my $waiting = $mode =~ /^watch_/;
		return _send($c, 200, encode_json(_good_answer($kind, $r, $waiting))) unless $kind eq 'watch';
		return $self->_watch($c, $mode);
	}
	if ($mode eq 'garbage')
	{
		return _send($c, 200, "\x00\xff\xfeGARBAGE <html>not json</html>\x01\x02");
	}
	if ($mode eq 'truncated')
	{
		return _send($c, 200, '{"header":{"cluster_id":"1","revision":"100"},"succeeded":true,"responses":[{"response_put');
	}
	if ($mode eq 'huge' || $mode eq 'huge_chunked')
	{
		my $total = 20 * 1024 * 1024;
		my $head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
		  . ($mode eq 'huge' ? "Content-Length: $total\r\n\r\n" : "Transfer-Encoding: chunked\r\n\r\n");
		return 0 unless _write($c, $head);
		my $piece = '{"header":{"revision":"100"},"pad":"' . ('x' x (1024 * 1024 - 40));
		my $sent = 0;
		while ($sent < $total)
		{
			my $d = substr($piece, 0, $total - $sent);
			$piece = 'x' x length($piece) if $sent == 0;
			my $ok = $mode eq 'huge' ? _write($c, $d) : _chunk($c, $d);
			return 0 unless $ok;
			$sent += length($d);
		}
		_write($c, "0\r\n\r\n") if $mode eq 'huge_chunked';
		return 1;
	}
	if ($mode =~ /^type_(\w+)$/)
	{
		my $what = $1;
		my $a = _good_answer($kind eq 'other' ? 'acquire' : $kind, $r, 0);
		if ($what eq 'revision') { $a->{header}{revision} = JSON::PP::true }
		elsif ($what eq 'responses') { $a->{responses} = 'x' }
		elsif ($what eq 'kvs') { $a->{responses}[1]{response_range}{kvs} = { key => 'eA==' } }
		elsif ($what eq 'kvs_list') { $a->{kvs} = { key => 'eA==' } }
		elsif ($what eq 'bignum') { $a->{header}{revision} = '99999999999999999999999' }
		elsif ($what eq 'negative')
		{
			$a->{header}{revision} = '-5';
			$a->{responses}[1]{response_range}{kvs}[0]{create_revision} = '-5'
			  if ref $a->{responses} eq 'ARRAY' && $a->{responses}[1];
		}
		elsif ($what eq 'float') { $a->{header}{revision} = 100.5 }
		elsif ($what eq 'nullkvs') { $a->{responses}[1]{response_range}{kvs} = [ undef, 1 ] }
		return _send($c, 200, encode_json($a));
	}
	if ($mode eq 'array')
	{
		return _send($c, 200, '[{"header":{"revision":"100"},"succeeded":true}]');
	}
	if ($mode eq 'http500')
	{
		return _send($c, 500,
			'{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}');
	}
	if ($mode eq 'http400')
	{
		return _send($c, 400, '{"code":3,"message":"bad","details":[]}');
	}
	if ($mode eq 'http401')
	{
		return _send($c, 401,
			'{"error":"etcdserver: user name is empty","message":"etcdserver: user name is empty","code":16}');
	}
	if ($mode eq 'http403')
	{
		return _send($c, 403,
			'{"error":"etcdserver: permission denied","message":"etcdserver: permission denied","code":7}');
	}
	if ($mode eq 'http404_plain')
	{
		# not etcd's gateway: a wrong path, or the peer port
		return _send($c, 404, "404 page not found\n");
	}
	if ($mode eq 'http403_36')
	{
		# etcd 3.6 (grpc-gateway v2): no "error" field, details[]
		return _send($c, 403, '{"code":7,"message":"etcdserver: permission denied","details":[]}');
	}
	if ($mode eq 'empty200')
	{
		return _send($c, 200, '');
	}
	return _stall($c) if $mode eq 'stall';
	if ($mode eq 'close_mid')
	{
		_write($c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
			  . '{"header":{"revision":"100"},"succ');
		return 0;
	}
	if ($mode eq 'close_at_once')
	{
		return 0;
	}
	if ($mode eq 'badb64')
	{
		# the caller is told to wait behind a key that is not base64
		my $a = _good_answer($kind, $r, 1);
		if ($kind eq 'acquire')
		{
			$a->{responses}[1]{response_range}{kvs}[0]{key} = '!!!not*base64!!!';
		}
		elsif ($kind eq 'pred')
		{
			$a->{responses}[1]{response_range}{kvs}[0]{key} = '%%%bad%%%';
		}
		return _send($c, 200, encode_json($a));
	}
	if ($mode eq 'utf8_cut')
	{
		# not JSON; a 2-byte character spans bytes 100-101
		return _send($c, 200, ('a' x 99) . "\xc3\xa9" . ('b' x 20));
	}
	return _send($c, 404, '{"error":"unknown mode","message":"unknown mode","code":5}');
}

# _stall: the request was read; never answer, leave when the client does
sub _stall
{
	my ($c) = @_;
	my $end = time + 60;
	while (time < $end)
	{
		return 0 if _eof($c);
		usleep(50_000);
	}
	return 0;
}

# _watch: the /v3/watch stream for the wait modes
sub _watch
{
	my ($self, $c, $mode) = @_;
	my $created = encode_json({ result => { header => _hdr($MY_REV), created => JSON::PP::true } }) . "\n";
	return 0 unless _write($c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
	if ($mode eq 'watch_garbage')
	{
		# created and a line that is not JSON at once, then more every 100 ms
		return 0 unless _chunk($c, $created . "\x01garbage{{{ not json\n");
		for (1 .. 600)
		{
			return 0 unless _chunk($c, "\x01garbage{{{ not json\n");
			usleep(100_000);
		}
		return 0;
	}
	if ($mode eq 'watch_garbage_first')
	{
		# garbage before the created line: the watch is never created
		_chunk($c, "<<garbage>>\n");
		return 0;
	}
	if ($mode eq 'watch_end')
	{
		# created, then the stream ends cleanly (keep-alive stays usable)
		return _chunk($c, $created) && _write($c, "0\r\n\r\n");
	}
	if ($mode eq 'watch_abrupt')
	{
		# created, half a line, then the connection drops
		_chunk($c, $created . '{"result":{"events":[{"ty');
		return 0;
	}
	if ($mode eq 'watch_hang')
	{
		# created, then silence (like a healthy watch with no event)
		return 0 unless _chunk($c, $created);
		my $end = time + 60;
		while (time < $end)
		{
			return 0 if _eof($c);
			usleep(50_000);
		}
		return 0;
	}
	return 0;
}

1;
