# bench/fuzz.mk - libFuzzer targets, built with clang into build-fuzz/.
#
#   make fuzz                  (or: make -f bench/fuzz.mk)
#   bench/fuzz.sh [SECONDS]    build, seed and run the stream fuzzer
#
# Each target compiles the library sources it needs itself, with
# -fsanitize=fuzzer,address,undefined; nothing here is shared with the
# gcc builds.  Not part of `make check`.

FUZZ_CC ?= clang
FB := build-fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -DFT_LIBFUZZER -I. -Ilib -Ihv
STREAM_SRCS := lib/channel.c lib/log.c lib/stream.c lib/stream_state.c

.PHONY: all
all: $(FB)/fuzz_stream

$(FB)/fuzz_stream: bench/fuzz_stream.c $(STREAM_SRCS) $(wildcard lib/*.h) hv/hv.h
	@mkdir -p $(FB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ bench/fuzz_stream.c $(STREAM_SRCS) \
		-llz4 -lxxhash
