#!/bin/bash
# build.sh [OUTDIR]: builds the libFuzzer target fuzz_parse (clang-14,
# ASan + UBSan + libFuzzer) from the unmodified sources in ../src.
# Output: OUTDIR/fuzz_parse (default: fuzz/build/).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build}
mkdir -p "$out"

CC=${CC:-clang-14}
if ! command -v "$CC" >/dev/null; then
	echo "build.sh: $CC not found (apt-get install clang-14 libclang-rt-14-dev)" >&2
	exit 2
fi
PG_CONFIG=${PG_CONFIG:-pg_config}
server_inc=$("$PG_CONFIG" --includedir-server)
libdir=$("$PG_CONFIG" --libdir)
pkglibdir=$("$PG_CONFIG" --pkglibdir)

# PostgreSQL's own base64 (src/common/base64.c), as the server uses it
pgcommon=""
for d in "$libdir" "$pkglibdir" /usr/lib/postgresql/15/lib; do
	if [ -f "$d/libpgcommon.a" ]; then pgcommon="$d/libpgcommon.a"; break; fi
done
pgport=$(dirname "$pgcommon")/libpgport.a
if [ -z "$pgcommon" ]; then
	echo "build.sh: libpgcommon.a not found (postgresql-server-dev)" >&2
	exit 2
fi
(cd "$out" && ar x "$pgcommon" base64.o)

flags=(-g -O1 -fno-omit-frame-pointer
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
	-I"$server_inc" -I"$here/../src" -I"$here"
	-Wall -Wno-ignored-attributes -Wno-unused-function -Wno-missing-braces -Wno-unused-variable)

"$CC" "${flags[@]}" -c "$here/fuzz_parse.c" -o "$out/fuzz_parse.o"
"$CC" "${flags[@]}" -c "$here/pg_stubs.c" -o "$out/pg_stubs.o"
"$CC" "${flags[@]}" "$out/fuzz_parse.o" "$out/pg_stubs.o" "$out/base64.o" \
	"$pgport" -ljansson -o "$out/fuzz_parse"
echo "built $out/fuzz_parse"
