#!/bin/bash
# coverage.sh [CORPUS_DIR...]: line coverage of src/gateway.c (and the transport, streams, keys) and
# src/lockops.c reached by the corpus (default: fuzz/corpus and
# fuzz/work/corpus), with clang source-based coverage. Report only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$here/build/cov
mkdir -p "$out"
server_inc=$(${PG_CONFIG:-pg_config} --includedir-server)
libdir=$(${PG_CONFIG:-pg_config} --libdir)
pgcommon=$libdir/libpgcommon.a
[ -f "$pgcommon" ] || pgcommon=/usr/lib/postgresql/15/lib/libpgcommon.a
(cd "$out" && ar x "$pgcommon" base64.o)
flags=(-g -O0 -fsanitize=fuzzer -fprofile-instr-generate -fcoverage-mapping
	-I"$server_inc" -I"$here/../src" -I"$here" -w)
clang-14 "${flags[@]}" "$here/fuzz_parse.c" "$here/pg_stubs.c" "$out/base64.o" \
	"$(dirname "$pgcommon")/libpgport.a" -ljansson -o "$out/fuzz_parse_cov"
dirs=("$@")
[ ${#dirs[@]} -gt 0 ] || dirs=("$here/corpus" "$here/work/corpus")
files=()
for d in "${dirs[@]}"; do [ -d "$d" ] && files+=("$d"/*); done
LLVM_PROFILE_FILE="$out/cov.profraw" "$out/fuzz_parse_cov" "${files[@]}" >/dev/null 2>&1 || true
llvm-profdata-14 merge -sparse "$out/cov.profraw" -o "$out/cov.profdata"
llvm-cov-14 report "$out/fuzz_parse_cov" -instr-profile="$out/cov.profdata" \
	"$here/../src/transport.c" "$here/../src/gateway.c" "$here/../src/streams.c" \
	"$here/../src/keys.c" "$here/../src/lockops.c" "$here/../src/guc.c"
echo "per-function: llvm-cov-14 report $out/fuzz_parse_cov -instr-profile=$out/cov.profdata -show-functions $here/../src/gateway.c"
