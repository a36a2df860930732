# The fault proxy itself (t/fault_proxy.py via FaultProxy.pm) against a
# real etcd, with curl as the client: pass, hold, cut, drop_reply (cut and
# hold), dup, delay, a watch stream next to other requests, keep-alive, the
# control protocol's errors and the fault schedule in its log.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use EtcdLockTest;
use FaultProxy;
use IPC::Run;
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $etcd = start_etcd();
my $fp = FaultProxy->start($etcd->{endpoint});
my $px = $fp->endpoint;
note "proxy $px -> etcd $etcd->{endpoint}";

# b64(text): base64 without newlines, as the gateway wants keys and values
sub b64
{
	return encode_base64($_[0], '');
}

# put_body(key, value): the JSON of a put
sub put_body
{
	my ($k, $v) = @_;
	return encode_json({ key => b64($k), value => b64($v) });
}

# range_body(key): the JSON of a one-key range
sub range_body
{
	return encode_json({ key => b64($_[0]) });
}

# key_re(path, key): a proxy RE for a request to path about key
sub key_re
{
	my ($path, $key) = @_;
	return quotemeta($path) . '.*"key":"' . quotemeta(b64($key)) . '"';
}

# curl_cmd(url, body, secs, opts...): a bounded curl POST
sub curl_cmd
{
	my ($url, $body, $secs, @opts) = @_;
	return [ 'curl', '-sS', '-m', $secs, @opts, '-X', 'POST', $url, '-d', $body ];
}

# curl_start(url, body, secs, opts...): a curl in the background; a hash
# with its harness and output so far
sub curl_start
{
	my $h = { out => '', err => '', t0 => time };
	$h->{run} = IPC::Run::start(curl_cmd(@_), '<', \undef, '>', \$h->{out}, '2>', \$h->{err});
	return $h;
}

# curl_finish(h): waits for a background curl (bounded by its -m); returns
# (exit code, output, seconds since it started, stderr)
sub curl_finish
{
	my ($h) = @_;
	$h->{run}->finish;
	return ($h->{run}->result(0), $h->{out}, time - $h->{t0}, $h->{err});
}

# curl(url, body, secs, opts...): runs a curl; same answer as curl_finish
sub curl
{
	return curl_finish(curl_start(@_));
}

# etcd_kv(key): the key as etcd has it, read directly (not through the
# proxy): a hash with value (decoded), version, mod_revision; undef if absent
sub etcd_kv
{
	my ($key) = @_;
	my $out = '';
	IPC::Run::run(curl_cmd("$etcd->{endpoint}/v3/kv/range", range_body($key), 5), '<', \undef, '>', \$out,
		'2>', \my $err);
	my $r = eval { decode_json($out) } or return undef;
	my $kv = ($r->{kvs} // [])->[0] or return undef;
	$kv->{value} = decode_base64($kv->{value} // '');
	return $kv;
}

# proxy_value(output): the value of a range answer that came through the proxy
sub proxy_value
{
	my ($out) = @_;
	my $r = eval { decode_json($out) } or return undef;
	my $kv = ($r->{kvs} // [])->[0] or return undef;
	return decode_base64($kv->{value} // '');
}

# --- (a) pass: a put and a range go through; keep-alive on one connection
{
	my ($rc, $out) = curl("$px/v3/kv/put", put_body('/fp/a', 'one'), 5);
	is($rc, 0, 'pass: a put through the proxy succeeds');
	like($out, qr/"header":\{.*"revision":"\d+"/, 'pass: the put got etcd\'s answer');
	($rc, $out) = curl("$px/v3/kv/range", range_body('/fp/a'), 5);
	is(proxy_value($out), 'one', 'pass: a range through the proxy reads the value');
	my $kv = etcd_kv('/fp/a');
	is($kv && $kv->{version}, 1, 'pass: etcd has the key once (version 1)');

	my $before = $fp->status->{accepted};
	($rc, $out) = curl("$px/v3/kv/range", range_body('/fp/a'), 5, '--next', '-sS', '-m', 5,
		'-X', 'POST', "$px/v3/kv/put", '-d', put_body('/fp/a2', 'two'));
	is($rc, 0, 'keep-alive: two requests in one curl succeed');
	is(scalar(() = $out =~ /"header"/g), 2, 'keep-alive: both got an answer');
	is($fp->status->{accepted} - $before, 1, 'keep-alive: both went over one proxied connection');
	is(etcd_kv('/fp/a2') && etcd_kv('/fp/a2')->{value}, 'two', 'keep-alive: the second request reached etcd');
}

# --- (b) hold: nothing goes through until pass, then the held bytes do
{
	$fp->hold;
	is($fp->status->{mode}, 'hold', 'hold: status says hold');
	my ($rc, $out, $secs) = curl("$px/v3/kv/range", range_body('/fp/a'), 1);
	is($rc, 28, 'hold: a request times out (curl -m 1: exit 28)');
	is($out, '', 'hold: and got no answer');

	my $h = curl_start("$px/v3/kv/put", put_body('/fp/held', 'late'), 10);
	ok(wait_until(sub { $fp->status->{queued_bytes} > 0 }, 5), 'hold: the proxy buffers the held request');
	usleep(300_000);
	ok(!defined etcd_kv('/fp/held'), 'hold: the held put has not reached etcd');
	$h->{run}->pump_nb;
	is($h->{out}, '', 'hold: the held put has no answer yet');
	$fp->pass;
	($rc, $out, $secs) = curl_finish($h);
	is($rc, 0, 'pass after hold: the held put completes');
	like($out, qr/"header"/, 'pass after hold: it got etcd\'s answer');
	ok($secs < 9, sprintf('pass after hold: it came at once, not at its timeout (%.1f s)', $secs));
	is(etcd_kv('/fp/held') && etcd_kv('/fp/held')->{value}, 'late', 'pass after hold: the put reached etcd');
}

# --- (c) drop_reply: the request is applied, the reply lost
{
	is($fp->drop_reply(key_re('/v3/kv/put', '/fp/drop')), 'ok armed', 'drop_reply: armed');
	my ($rc, $out) = curl("$px/v3/kv/put", put_body('/fp/drop-not', 'x'), 5);
	is($rc, 0, 'drop_reply: a put of another key is not dropped');
	is($fp->status->{drops_fired}, 0, 'drop_reply: nothing fired yet');

	my $secs;
	($rc, $out, $secs) = curl("$px/v3/kv/put", put_body('/fp/drop', 'applied'), 5);
	ok($rc != 0 && $rc != 28, "drop_reply cut: the put fails with a connection error (curl exit $rc)");
	unlike($out, qr/header|\{/, 'drop_reply cut: no JSON answer');
	ok($secs < 2, sprintf('drop_reply cut: the client was reset, not timed out (%.2f s)', $secs));
	ok(wait_until(sub { my $kv = etcd_kv('/fp/drop'); $kv && $kv->{value} eq 'applied' }, 5),
		'drop_reply cut: yet etcd applied the put (read directly)');
	is($fp->status->{drops_fired}, 1, 'drop_reply cut: status counts one fired drop');

	($rc, $out) = curl("$px/v3/kv/put", put_body('/fp/drop', 'again'), 5);
	is($rc, 0, 'drop_reply: it fires once; the next put of the key goes through');

	$fp->drop_reply(key_re('/v3/kv/put', '/fp/drop-hold'), 'hold');
	($rc, $out, $secs) = curl("$px/v3/kv/put", put_body('/fp/drop-hold', 'applied'), 1);
	is($rc, 28, 'drop_reply hold: the client hears nothing and times out');
	is($out, '', 'drop_reply hold: no answer');
	ok(wait_until(sub { defined etcd_kv('/fp/drop-hold') }, 5), 'drop_reply hold: yet etcd applied the put');
	is($fp->status->{drops_fired}, 2, 'drop_reply hold: status counts two fired drops');
}

# --- (d) cut: a held request in flight ends with an error at once
{
	$fp->hold;
	my $h = curl_start("$px/v3/kv/put", put_body('/fp/cut', 'never'), 10);
	ok(wait_until(sub { $fp->status->{queued_bytes} > 0 }, 5), 'cut: a put is held in the proxy');
	my $cut0 = $fp->status->{cut};
	my $n = $fp->cut;
	ok($n >= 1, "cut: it closed the held connection ($n)");
	my ($rc, $out, $secs) = curl_finish($h);
	ok($rc != 0 && $rc != 28, "cut: the held put fails with a connection error (curl exit $rc)");
	is($out, '', 'cut: no answer');
	ok($secs < 5, sprintf('cut: it failed at once, not at its timeout (%.1f s)', $secs));
	is($fp->status->{cut} - $cut0, $n, 'cut: status counts the cut connections');
	is($fp->status->{open}, 0, 'cut: no connection is left open');
	$fp->pass;
	usleep(300_000);
	ok(!defined etcd_kv('/fp/cut'), 'cut: the held bytes were dropped, never sent to etcd');
	my ($rc2) = curl("$px/v3/kv/range", range_body('/fp/a'), 5);
	is($rc2, 0, 'cut: new connections work after pass');
}

# --- (e) dup: one put through the proxy, two puts in etcd
{
	$fp->dup(key_re('/v3/kv/put', '/fp/dup'));
	my ($rc, $out) = curl("$px/v3/kv/put", put_body('/fp/dup', 'twice'), 5);
	is($rc, 0, 'dup: the put succeeds');
	like($out, qr/"header"/, 'dup: with one normal answer');
	ok(wait_until(sub { my $kv = etcd_kv('/fp/dup'); $kv && $kv->{version} == 2 }, 5),
		'dup: etcd applied it twice (version 2, read directly)');
	is($fp->status->{dups_fired}, 1, 'dup: status counts one fired dup');
	($rc) = curl("$px/v3/kv/put", put_body('/fp/dup', 'once'), 5);
	ok($rc == 0 && etcd_kv('/fp/dup')->{version} == 3, 'dup: it fires once; the next put is single');
}

# --- delay: both directions late by MS
{
	$fp->delay(300);
	my ($rc, $out, $secs) = curl("$px/v3/kv/range", range_body('/fp/a'), 5);
	is(proxy_value($out), 'one', 'delay: the range still answers');
	ok($secs >= 0.6, sprintf('delay 300: request and answer are each 300 ms late (%.2f s)', $secs));
	$fp->delay(0);
	($rc, $out, $secs) = curl("$px/v3/kv/range", range_body('/fp/a'), 5);
	ok($secs < 0.3, sprintf('delay 0: no delay (%.2f s)', $secs));
}

# --- a watch stream next to other requests; held and released
{
	my $h = curl_start("$px/v3/watch", encode_json({ create_request => { key => b64('/fp/w') } }), 8, '-N');
	ok(wait_until(sub { $h->{run}->pump_nb; $h->{out} =~ /"created":true/ }, 5), 'watch: created through the proxy');
	my ($rc) = curl("$px/v3/kv/put", put_body('/fp/w', 'w1'), 5);
	is($rc, 0, 'watch: a put on another connection is not blocked by the stream');
	my $v1 = b64('w1');
	ok(wait_until(sub { $h->{run}->pump_nb; $h->{out} =~ /\Q$v1\E/ }, 5), 'watch: the event streams through');
	$fp->hold;
	etcd_put($etcd, '/fp/w', 'w2');
	my $v2 = b64('w2');
	ok(!wait_until(sub { $h->{run}->pump_nb; $h->{out} =~ /\Q$v2\E/ }, 0.5), 'watch: held, the next event does not arrive');
	$fp->pass;
	ok(wait_until(sub { $h->{run}->pump_nb; $h->{out} =~ /\Q$v2\E/ }, 5), 'watch: after pass the held event arrives');
	$h->{run}->kill_kill;
}

# --- the control protocol refuses what it does not know
{
	eval { $fp->cmd('bogus') };
	like($@, qr/'bogus': err unknown command/, 'control: an unknown command is an error');
	eval { $fp->drop_reply('(') };
	like($@, qr/err bad regular expression/, 'control: a bad RE is an error');
	eval { $fp->delay('soon') };
	like($@, qr/err delay wants milliseconds/, 'control: delay wants a number');
	is($fp->status->{drops_pending}, 0, 'control: nothing was armed by them');
}

# --- (f) the log is the fault schedule
{
	my $log = $fp->log_text;
	for my $c ('hold', 'pass', 'cut', 'delay 300', 'dup ')
	{
		like($log, qr/^\d+\.\d{3} cmd \Q$c\E/m, "log: the command '$c' with its time");
	}
	like($log, qr/^\d+\.\d{3} cmd drop_reply \S+ hold$/m, 'log: drop_reply ... hold');
	like($log, qr/^\d+\.\d{3} fired drop_reply cut conn=\d+ POST \/v3\/kv\/put HTTP\/1\.1$/m,
		'log: the fired cut drop with its request line');
	like($log, qr/^\d+\.\d{3} fired drop_reply hold conn=\d+ POST \/v3\/kv\/put /m,
		'log: the fired hold drop with its request line');
	like($log, qr/^\d+\.\d{3} fired dup conn=\d+ POST \/v3\/kv\/put /m, 'log: the fired dup with its request line');
	note $log;
}

my $pid = $fp->{pid};
$fp->stop;
ok(!kill(0, $pid), 'stop: the proxy process is gone');

done_testing();
