#!/usr/bin/perl
# mkseeds.pl: writes the seed corpus fuzz/corpus/ from the real etcd answers
# in fuzz/answers/ (see gen_corpus.pl) plus a few hand-made shapes that
# ETCD-GATEWAY.md documents (3.6 errors, stream errors). Target numbers are
# read from the enum FzTarget in fuzz_parse.c, so they stay in step.
use strict;
use warnings;
use FindBin;

my $dir = $FindBin::RealBin;
my $ans = "$dir/answers";
my $out = "$dir/corpus";

open(my $src, '<', "$dir/fuzz_parse.c") or die;
my $c = do { local $/; <$src> };
my ($enum) = $c =~ /typedef enum FzTarget\s*\{(.*?)\}/s or die "enum FzTarget not found";
my %T;
my $i = 0;
$T{$1} = $i++ while $enum =~ /^\s*(T_\w+)/mg;

sub answer
{
	my ($name) = @_;
	open(my $fh, '<', "$ans/$name") or die "$ans/$name: $!";
	binmode $fh;
	local $/;
	return scalar <$fh>;
}

# statuses by index (fz_status[] in fuzz_parse.c)
my %S = (200 => 0, 400 => 6, 401 => 7, 403 => 8, 404 => 9, 500 => 12, 503 => 14);
# resp(status, mode, chunk index, body): one scripted answer
sub resp
{
	my ($status, $mode, $chunk, $body) = @_;
	return chr($S{$status} | ($mode << 4) | ($chunk << 6)) . $body;
}
sub script { return join("\n###\n", @_) }

my %seeds;
sub seed
{
	my ($name, $target, $param, $body) = @_;
	die "no target $target" unless defined $T{$target};
	$seeds{$name} = chr($T{$target}) . chr($param) . $body;
}

my $err36 = '{"code":3,"message":"bad","details":[]}';
my $err34 = '{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}';
my $token = '{"header":{"cluster_id":"1","member_id":"2","revision":"8","raft_term":"2"},"token":"XyZ.42"}';
my $unauth = '{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}';
my $stream_err = qq({"error":{"grpc_code":16,"http_code":401,"message":"etcdserver: invalid auth token","http_status":"Unauthorized"}}\n);

# parse callbacks
seed('grant', 'T_LEASE_GRANT', 0, answer('lease_grant.json'));
seed('keepalive', 'T_KEEPALIVE', 0, answer('keepalive.json'));
seed('keepalive_lost', 'T_KEEPALIVE', 0, answer('keepalive_lost.json'));
seed("acquire_$_", 'T_ACQUIRE', 0, answer("acquire_$_.json"))
  for qw(held held_again waiting waiting_again);
seed("try_$_", 'T_TRY_ACQUIRE', 0, answer("trylock_$_.json")) for qw(taken free);
seed("pred_$_", 'T_PRED', 0, answer("pred_$_.json")) for qw(some none);
seed("list_$_", 'T_LIST', 0, answer("$_.json")) for qw(list list_all list_empty);
seed('list_prefixed', 'T_LIST', 1, answer('list.json'));
seed("succeeded_$_", 'T_SUCCEEDED', 0, answer("$_.json")) for qw(verify_ok verify_lost release);
seed("count_$_", 'T_COUNT', 0, answer("count_$_.json")) for qw(one zero);
seed('ttl', 'T_TTL', 0, answer('timetolive.json'));
seed('ttl_lost', 'T_TTL', 0, answer('timetolive_lost.json'));
seed('error_base64', 'T_ERROR_REPLY', $S{400}, answer('err_bad_base64.json'));
seed('error_notfound', 'T_ERROR_REPLY', $S{404}, answer('err_revoke_unknown.json'));
seed('error_36', 'T_ERROR_REPLY', $S{400}, $err36);
seed('error_34', 'T_ERROR_REPLY', $S{500}, $err34);
seed('b64_key', 'T_B64', 0, 'L2pvYnMvMzkwZGEyMTljMmE1MmEwNQ==');
seed('b64_short', 'T_B64', 0, 'eA==');
seed('b64_bad', 'T_B64', 0, '!!!');
seed("watch_$_", 'T_WATCH_STREAM', 63, answer("watch_$_.txt")) for qw(delete put_delete compacted);
seed('watch_bytewise', 'T_WATCH_STREAM', 0, answer('watch_delete.txt'));
seed('watch_error', 'T_WATCH_STREAM', 63, $stream_err);
seed('endpoints', 'T_ENDPOINTS', 0, 'http://127.0.0.1:2379, https://[::1]:2379/,http://etcd:1');
seed('token', 'T_TOKEN', 0, $token);

# request paths (scripts of answers)
seed('req_grant', 'T_REQ_GRANT', 0, script(resp(200, 0, 0, answer('lease_grant.json'))));
seed('req_grant_failover', 'T_REQ_GRANT', 0,
	script(resp(503, 0, 0, $err34), resp(200, 0, 2, answer('lease_grant.json'))));
seed('req_grant_auth', 'T_REQ_GRANT', 0x80,
	script(resp(200, 0, 0, $token), resp(200, 0, 0, answer('lease_grant.json'))));
seed('req_grant_reauth', 'T_REQ_GRANT', 0x80,
	script(resp(200, 0, 0, $token), resp(401, 0, 0, $unauth), resp(200, 2, 0, $token),
		resp(200, 2, 0, answer('lease_grant.json'))));
seed('req_keepalive', 'T_REQ_KEEPALIVE', 7, script(resp(200, 0, 1, answer('keepalive.json'))));
seed('req_keepalive_lost', 'T_REQ_KEEPALIVE', 7, script(resp(200, 0, 0, answer('keepalive_lost.json'))));
seed('req_revoke', 'T_REQ_REVOKE', 0, script(resp(200, 0, 0, answer('revoke.json'))));
seed('req_revoke_unknown', 'T_REQ_REVOKE', 0, script(resp(404, 0, 0, answer('err_revoke_unknown.json'))));
seed('req_acquire', 'T_REQ_ACQUIRE', 0, script(resp(200, 0, 0, answer('acquire_held.json'))));
seed('req_acquire_waiting', 'T_REQ_ACQUIRE', 0, script(resp(200, 0, 3, answer('acquire_waiting.json'))));
seed('req_try_acquire', 'T_REQ_ACQUIRE', 1, script(resp(200, 0, 0, answer('trylock_free.json'))));
seed('req_acquire_timeout', 'T_REQ_ACQUIRE', 0,
	script(resp(200, 3, 0, ''), resp(200, 0, 0, answer('acquire_held.json'))));
seed('req_acquire_partial', 'T_REQ_ACQUIRE', 0,
	script(resp(200, 1, 2, substr(answer('acquire_held.json'), 0, 50)), resp(200, 0, 0, answer('acquire_held.json'))));
seed('req_acquire_garbage', 'T_REQ_ACQUIRE', 0, script(resp(200, 0, 0, "<html>\xff\xfe</html>")));
seed('req_acquire_36', 'T_REQ_ACQUIRE', 0, script(resp(400, 0, 0, $err36)));
seed('req_wait', 'T_REQ_WAIT', 3,
	script(resp(200, 0, 0, answer('pred_some.json')), resp(200, 3, 2, answer('watch_delete.txt')),
		resp(200, 0, 0, answer('count_one.json')), resp(200, 0, 0, answer('pred_none_waiter.json'))));
seed('req_wait_broken', 'T_REQ_WAIT', 1,
	script(resp(200, 0, 0, answer('pred_some.json')), resp(200, 0, 0, "garbage\n"),
		resp(200, 0, 0, answer('pred_some.json')), resp(200, 3, 0, answer('watch_compacted.txt')),
		resp(200, 0, 0, answer('count_one.json')), resp(200, 0, 0, answer('pred_none_waiter.json'))));
seed('req_release', 'T_REQ_RELEASE', 0, script(resp(200, 0, 0, answer('release.json'))));
seed('req_holders', 'T_REQ_HOLDERS', 0,
	script(resp(200, 0, 0, answer('list.json')), resp(200, 0, 0, answer('timetolive.json')),
		resp(200, 0, 0, answer('timetolive_lost.json'))));
seed('req_verify', 'T_REQ_VERIFY', 1, script(resp(200, 0, 0, answer('verify_ok.json'))));
seed('req_verify_lost', 'T_REQ_VERIFY', 0, script(resp(200, 0, 0, answer('verify_lost.json'))));
seed('req_watch', 'T_REQ_WATCH', 0, script(resp(200, 3, 2, answer('watch_put_delete.txt'))));
seed('req_watch_compacted', 'T_REQ_WATCH', 0, script(resp(200, 3, 0, answer('watch_compacted.txt'))));
seed('req_watch_unauth', 'T_REQ_WATCH', 0x80, script(resp(200, 0, 0, $stream_err)));

mkdir $out;
unlink glob("$out/*");
for my $n (sort keys %seeds)
{
	open(my $fh, '>', "$out/$n") or die;
	binmode $fh;
	print $fh $seeds{$n};
	close $fh;
}
printf "%d seeds in %s\n", scalar(keys %seeds), $out;
