#!/usr/bin/env bash
# bench/fuzz.sh [SECONDS] - build the stream fuzzer (bench/fuzz.mk) and
# run it for SECONDS (default 60).
#
# Seeds: every stream tests/unit/test_stream builds (valid ones and the
# malformed ones it rejects), under 64 KiB, each three times: with mode
# byte 0 (bytes as they are), 1 (checksums fixed up) and 6 (the bytes as
# guest pages for a write/read round trip); see bench/fuzz_stream.c.
# The corpus grows in build-fuzz/corpus-stream across runs; a crash is
# saved as build-fuzz/crash-* and makes this script fail.  Replay one
# with build-san/bench/fuzz_stream FILE (make SAN=1 build-san/bench/fuzz_stream).
set -eu
cd "$(dirname "$0")/.."
secs=${1:-60}
case $secs in ''|*[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;; esac

make -s -f bench/fuzz.mk
make -s build/tests/unit/test_stream

seeds=$(mktemp -d /tmp/fuzz-seeds.XXXXXX)
trap 'rm -rf "$seeds"' EXIT
mkdir "$seeds/dump" "$seeds/in"
FT_STREAM_DUMP_DIR=$seeds/dump build/tests/unit/test_stream >/dev/null 2>&1
for f in "$seeds"/dump/*.ftst; do
	[ "$(stat -c %s "$f")" -lt 65536 ] || continue
	name=$(basename "$f" .ftst)
	{ printf '\0'; cat "$f"; } > "$seeds/in/raw-$name"
	{ printf '\1'; cat "$f"; } > "$seeds/in/fix-$name"
	{ printf '\6'; cat "$f"; } > "$seeds/in/rt-$name"
done
mkdir -p build-fuzz/corpus-stream
build-fuzz/fuzz_stream -max_total_time="$secs" -max_len=65536 \
	-rss_limit_mb=2048 -print_final_stats=1 \
	-artifact_prefix=build-fuzz/ build-fuzz/corpus-stream "$seeds/in"
