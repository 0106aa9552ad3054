#!/usr/bin/env bash
# bench/fuzz.sh [SECONDS] [TARGET] - build the fuzzers (bench/fuzz.mk) and
# run TARGET for SECONDS (default 60).  TARGET is
#
#   stream (default)  the stream reader, bench/fuzz_stream.c.  Seeds: every
#       stream tests/unit/test_stream builds (valid ones and the malformed
#       ones it rejects), under 64 KiB, each three times: with mode byte 0
#       (bytes as they are), 1 (checksums fixed up) and 6 (the bytes as
#       guest pages for a write/read round trip).
#   gnet  the guest network stack, bench/fuzz_gnet.c.  Seeds: the frames
#       and clock steps of every case of tests/unit/test_gnet, in the
#       fuzzer's record format, each also with its frames turned into
#       "fix the checksums" records; and the crafted ones of
#       `build/bench/fuzz_gnet -s DIR` (data and ACKs, fast retransmit,
#       closing, zero window, RSTs, a full pool).
#   resp  the kvstore guest's RESP parser, commands and log,
#       bench/fuzz_resp.c.  Seeds: every request tests/unit/test_kvstore
#       sends, with mode byte 0 and 0x2a (fed whole and in pieces).
#
# The corpus grows in build-fuzz/corpus-TARGET across runs; a crash is
# saved as build-fuzz/crash-* and makes this script fail.  Replay one with
# build-san/bench/fuzz_TARGET FILE (make SAN=1 build-san/bench/fuzz_TARGET).
set -eu
cd "$(dirname "$0")/.."
secs=${1:-60}
target=${2:-stream}
case $secs in ''|*[!0-9]*) echo "usage: $0 [SECONDS] [stream|gnet|resp]" >&2; exit 2 ;; esac
case $target in stream|gnet) ;; resp) unit=kvstore ;; *) echo "usage: $0 [SECONDS] [stream|gnet|resp]" >&2; exit 2 ;; esac

make -s -f bench/fuzz.mk "build-fuzz/fuzz_$target"
make -s "build/tests/unit/test_${unit:-$target}"

seeds=$(mktemp -d /tmp/fuzz-seeds.XXXXXX)
trap 'rm -rf "$seeds"' EXIT
mkdir "$seeds/dump" "$seeds/in"
if [ "$target" = stream ]; then
	FT_STREAM_DUMP_DIR=$seeds/dump build/tests/unit/test_stream >/dev/null 2>&1
	for f in "$seeds"/dump/*.ftst; do
		[ "$(stat -c %s "$f")" -lt 65536 ] || continue
		name=$(basename "$f" .ftst)
		{ printf '\0'; cat "$f"; } > "$seeds/in/raw-$name"
		{ printf '\1'; cat "$f"; } > "$seeds/in/fix-$name"
		{ printf '\6'; cat "$f"; } > "$seeds/in/rt-$name"
	done
elif [ "$target" = resp ]; then
	FT_KVSTORE_DUMP_DIR=$seeds/dump build/tests/unit/test_kvstore >/dev/null 2>&1
	for f in "$seeds"/dump/*; do
		name=$(basename "$f")
		{ printf '\0'; cat "$f"; } > "$seeds/in/whole-$name"
		{ printf '\52'; cat "$f"; } > "$seeds/in/cut-$name"
	done
else
	make -s build/bench/fuzz_gnet
	build/bench/fuzz_gnet -s "$seeds/in"
	FT_GNET_DUMP_DIR=$seeds/dump build/tests/unit/test_gnet >/dev/null 2>&1
	for f in "$seeds"/dump/*; do
		[ "$(stat -c %s "$f")" -lt 65536 ] || continue
		name=$(basename "$f")
		cp "$f" "$seeds/in/raw-$name"
		# Record op 0 (frame as is) -> 1 (checksums fixed).
		python3 - "$f" "$seeds/in/fix-$name" <<'EOF'
import sys
d = bytearray(open(sys.argv[1], 'rb').read())
i = 0
while i + 3 <= len(d):
    n = d[i + 1] | d[i + 2] << 8
    if d[i] == 0:
        d[i] = 1
    i += 3 + n
open(sys.argv[2], 'wb').write(d)
EOF
	done
fi
mkdir -p "build-fuzz/corpus-$target"
"build-fuzz/fuzz_$target" -max_total_time="$secs" -max_len=65536 \
	-rss_limit_mb=2048 -print_final_stats=1 \
	-artifact_prefix=build-fuzz/ "build-fuzz/corpus-$target" "$seeds/in"
