# bench/fuzz.mk - libFuzzer targets, built with clang into build-fuzz/.
#
#   make fuzz                  (or: make -f bench/fuzz.mk)
#   bench/fuzz.sh [SECONDS] [TARGET]   build, seed and run a fuzzer
#                              (TARGET: stream, the default, or gnet)
#
# Each target compiles the library sources it needs itself, with
# -fsanitize=fuzzer,address,undefined; nothing here is shared with the
# gcc builds.  Not part of `make check`.

FUZZ_CC ?= clang
FB := build-fuzz
FUZZ_CFLAGS := -std=gnu11 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	-D_GNU_SOURCE -DFT_LIBFUZZER -I. -Ilib -Ihv
STREAM_SRCS := lib/channel.c lib/log.c lib/pagecache.c lib/stream.c \
	lib/stream_state.c
# The guest network stack, without its guest-only glue.
GNET_SRCS := $(filter-out guest/net/gnet_ft.c,$(wildcard guest/net/*.c))
# The kvstore guest, without its hypercall glue.
KVSTORE_SRCS := $(filter-out guest/kvstore/main.c,$(wildcard guest/kvstore/*.c))

.PHONY: all
all: $(FB)/fuzz_stream $(FB)/fuzz_gnet $(FB)/fuzz_resp

$(FB)/fuzz_stream: bench/fuzz_stream.c $(STREAM_SRCS) $(wildcard lib/*.h) hv/hv.h
	@mkdir -p $(FB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ bench/fuzz_stream.c $(STREAM_SRCS) \
		-llz4 -lxxhash

# The invariant checker runs after every step: without coverage hooks, so
# that it neither costs most of the time nor steers the fuzzer.
$(FB)/gnet-cov-ignore.txt: bench/fuzz.mk
	@mkdir -p $(FB)
	printf 'fun:%s\n' gnet_check gnet_arp_check gnet_tcp_check \
		tcp_check_conn > $@

$(FB)/fuzz_gnet: bench/fuzz_gnet.c $(GNET_SRCS) $(wildcard guest/net/*.h) \
		$(FB)/gnet-cov-ignore.txt
	$(FUZZ_CC) $(FUZZ_CFLAGS) \
		-fsanitize-coverage-ignorelist=$(FB)/gnet-cov-ignore.txt \
		-o $@ bench/fuzz_gnet.c $(GNET_SRCS)

$(FB)/fuzz_resp: bench/fuzz_resp.c $(KVSTORE_SRCS) $(wildcard guest/kvstore/*.h)
	@mkdir -p $(FB)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ bench/fuzz_resp.c $(KVSTORE_SRCS)
