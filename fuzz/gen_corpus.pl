#!/usr/bin/perl
# gen_corpus.pl ENDPOINT OUTDIR: plays etcd_lock's requests (the bodies that
# src/lockops.c and src/gateway.c send) against a real etcd and saves each
# raw answer as OUTDIR/<name>.json (the watch stream as watch_*.txt). The
# seeds in fuzz/corpus/ were made from these by fuzz/mkseeds.pl; run this
# again only to refresh them (needs a throwaway etcd: it writes keys).
use strict;
use warnings;
use JSON::PP;
use MIME::Base64;
use HTTP::Tiny;

my ($ep, $out) = @ARGV;
die "usage: $0 http://127.0.0.1:PORT OUTDIR\n" unless $ep && $out;
mkdir $out;
my $http = HTTP::Tiny->new(timeout => 5);

sub b64 { encode_base64($_[0], '') }

sub range_end
{
	my @b = unpack('C*', $_[0]);
	$b[-1]++;
	return b64(pack('C*', @b));
}

# post(name, path, body): saves the answer, returns it decoded (or undef)
sub post
{
	my ($name, $path, $body) = @_;
	my $r = $http->post("$ep$path",
		{ content => $body, headers => { 'Content-Type' => 'application/json' } });
	open(my $fh, '>', "$out/$name.json") or die;
	binmode $fh;
	print $fh $r->{content};
	close $fh;
	printf "%-28s %s %s\n", $name, $r->{status}, substr($r->{content}, 0, 100);
	return eval { decode_json($r->{content}) };
}

sub acquire_body
{
	my ($pfx, $key, $lease, $value, $try) = @_;
	my $cmp = $try ?
	  sprintf('{"key":"%s","range_end":"%s","target":"CREATE","result":"EQUAL","create_revision":"0"}',
		b64($pfx), range_end($pfx)) :
	  sprintf('{"key":"%s","target":"CREATE","result":"EQUAL","create_revision":"0"}', b64($key));
	my $put = sprintf('{"request_put":{"key":"%s","value":"%s","lease":"%s"}}',
		b64($key), b64($value), $lease);
	return sprintf('{"compare":[%s],"success":[%s]}', $cmp, $put) if $try;
	my $oldest = sprintf('{"request_range":{"key":"%s","range_end":"%s","sort_order":"ASCEND",'
		  . '"sort_target":"CREATE","limit":"1","keys_only":true}}', b64($pfx), range_end($pfx));
	return sprintf('{"compare":[%s],"success":[%s,%s],"failure":[{"request_range":{"key":"%s","keys_only":true}},%s]}',
		$cmp, $put, $oldest, b64($key), $oldest);
}

sub pred_body
{
	my ($pfx, $key, $rev) = @_;
	return sprintf('{"success":[{"request_range":{"key":"%s","keys_only":true}},{"request_range":{"key":"%s",'
		  . '"range_end":"%s","sort_order":"DESCEND","sort_target":"CREATE","limit":"1","keys_only":true,'
		  . '"max_create_revision":"%s"}}]}', b64($key), b64($pfx), range_end($pfx), $rev - 1);
}

my $value = '{"pid":4242,"database":"postgres","application_name":"fuzz"}';
my $pfx = "/jobs/";

my $g1 = post('lease_grant', '/v3/lease/grant', '{"TTL":"10"}');
my $g2 = post('lease_grant2', '/v3/lease/grant', '{"TTL":"10"}');
my ($l1, $l2) = ($g1->{ID}, $g2->{ID});
my $k1 = $pfx . sprintf('%x', $l1);
my $k2 = $pfx . sprintf('%x', $l2);
post('keepalive', '/v3/lease/keepalive', qq({"ID":"$l1"}));

my $a1 = post('acquire_held', '/v3/kv/txn', acquire_body($pfx, $k1, $l1, $value, 0));
post('acquire_held_again', '/v3/kv/txn', acquire_body($pfx, $k1, $l1, $value, 0));
my $a2 = post('acquire_waiting', '/v3/kv/txn', acquire_body($pfx, $k2, $l2, $value, 0));
post('acquire_waiting_again', '/v3/kv/txn', acquire_body($pfx, $k2, $l2, $value, 0));
post('trylock_taken', '/v3/kv/txn', acquire_body($pfx, $k2, $l2, $value, 1));
post('trylock_free', '/v3/kv/txn', acquire_body("/free/", "/free/" . sprintf('%x', $l1), $l1, $value, 1));
my $rev1 = $a1->{header}{revision};
my $rev2 = $a2->{header}{revision};
post('pred_some', '/v3/kv/txn', pred_body($pfx, $k2, $rev2));
post('pred_none', '/v3/kv/txn', pred_body($pfx, $k1, $rev1));
post('count_one', '/v3/kv/range', sprintf('{"key":"%s","count_only":true}', b64($k1)));
post('count_zero', '/v3/kv/range', sprintf('{"key":"%s","count_only":true}', b64("/nothing")));
post('verify_ok', '/v3/kv/txn',
	sprintf('{"compare":[{"key":"%s","target":"CREATE","result":"EQUAL","create_revision":"%s"}]}', b64($k1), $rev1));
post('verify_lost', '/v3/kv/txn',
	sprintf('{"compare":[{"key":"%s","target":"CREATE","result":"EQUAL","create_revision":"%s"}]}', b64($k1), $rev1 + 1000));
post('list', '/v3/kv/range', sprintf('{"key":"%s","range_end":"%s"}', b64("/"), range_end("/")));
post('list_all', '/v3/kv/range', sprintf('{"key":"%s","range_end":"%s"}', b64("\0"), b64("\0")));
post('list_empty', '/v3/kv/range', sprintf('{"key":"%s","range_end":"%s"}', b64("/none/"), range_end("/none/")));
post('timetolive', '/v3/lease/timetolive', qq({"ID":"$l1"}));

# the watch stream: watch k1 (no start revision), then release it
my $pid = open(my $w, '-|', 'curl', '-sN', '-m', '3', '-H', 'Content-Type: application/json',
	'-H', 'Grpc-Metadata-hasleader: true', "$ep/v3/watch",
	'-d', sprintf('{"create_request":{"key":"%s"}}', b64($k1))) or die;
select(undef, undef, undef, 0.5);
post('release', '/v3/kv/txn',
	sprintf('{"compare":[{"key":"%s","target":"CREATE","result":"EQUAL","create_revision":"%s"}],'
		  . '"success":[{"request_delete_range":{"key":"%s"}}]}', b64($k1), $rev1, b64($k1)));
post('pred_none_waiter', '/v3/kv/txn', pred_body($pfx, $k2, $rev2));
post('release_gone', '/v3/kv/txn',
	sprintf('{"compare":[{"key":"%s","target":"CREATE","result":"EQUAL","create_revision":"%s"}],'
		  . '"success":[{"request_delete_range":{"key":"%s"}}]}', b64($k1), $rev1, b64($k1)));
{
	local $/;
	my $stream = <$w>;
	close $w;
	open(my $fh, '>', "$out/watch_delete.txt") or die;
	print $fh $stream;
	close $fh;
	print "watch_delete: $stream\n";
}
# a put event on the watched key (type absent), then a delete
$pid = open($w, '-|', 'curl', '-sN', '-m', '3', '-H', 'Content-Type: application/json',
	"$ep/v3/watch", '-d', sprintf('{"create_request":{"key":"%s"}}', b64("/w"))) or die;
select(undef, undef, undef, 0.5);
post('put', '/v3/kv/put', sprintf('{"key":"%s","value":"%s"}', b64("/w"), b64("x")));
post('deleterange', '/v3/kv/deleterange', sprintf('{"key":"%s"}', b64("/w")));
{
	local $/;
	my $stream = <$w>;
	close $w;
	open(my $fh, '>', "$out/watch_put_delete.txt") or die;
	print $fh $stream;
	close $fh;
	print "watch_put_delete: $stream\n";
}
# a watch from a compacted revision: canceled
post('compact', '/v3/kv/compaction', sprintf('{"revision":"%s"}', $rev2));
$pid = open($w, '-|', 'curl', '-sN', '-m', '2', '-H', 'Content-Type: application/json',
	"$ep/v3/watch", '-d', sprintf('{"create_request":{"key":"%s","start_revision":"1"}}', b64("/w"))) or die;
{
	local $/;
	my $stream = <$w>;
	close $w;
	open(my $fh, '>', "$out/watch_compacted.txt") or die;
	print $fh $stream;
	close $fh;
	print "watch_compacted: $stream\n";
}

# errors and lease loss
post('err_bad_base64', '/v3/kv/range', '{"key":"!!!"}');
post('err_bad_json', '/v3/kv/txn', '{"compare":');
post('revoke', '/v3/lease/revoke', qq({"ID":"$l2"}));
post('err_revoke_unknown', '/v3/lease/revoke', qq({"ID":"$l2"}));
post('keepalive_lost', '/v3/lease/keepalive', qq({"ID":"$l2"}));
post('timetolive_lost', '/v3/lease/timetolive', qq({"ID":"$l2"}));
post('err_too_many_ops', '/v3/kv/txn', '{"success":[' . join(',', ('{"request_range":{"key":"eA=="}}') x 129) . ']}');
