# ftengine - top-level Makefile.
#
#   make            build everything into build/
#   make SAN=1      build with ASan+UBSan into build-san/
#   make check      build both, run the whole test suite on both
#   make demo       build and run the demo (tools/demo.sh)
#   make bench      build the benchmarks (run them from bench/, see docs/performance.md)
#   make fuzz       build the fuzz targets (clang/libFuzzer) into build-fuzz/
#   make format     clang-format every C file in place
#
# Every engine directory's .c files go into libft.a; hv/kvm's into
# libhvkvm.a; hv/xen's into libhvxen.a when ./configure found libxen-dev
# (HAVE_XEN = yes; a program linking it adds $(XEN_LIBS)); each program
# links what it needs.  Guests are built freestanding by guest/guest.mk.

ifeq ($(wildcard config.mk),)
$(error config.mk missing: run ./configure (or ./configure --install-deps) first)
endif
include config.mk

SAN ?= 0
ifeq ($(SAN),1)
B := build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else
B := build
SANFLAGS :=
endif

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wno-unused-parameter -Wpointer-arith -Wvla
CFLAGS ?= -O2 -g
ALL_CFLAGS := -std=gnu11 $(WARN) $(CFLAGS) $(SANFLAGS) -D_GNU_SOURCE -I. -Ilib -Ihv $(DEP_CFLAGS)
LDFLAGS_ALL := $(SANFLAGS) $(LDFLAGS)

ENGINE_DIRS := lib migrate checkpoint netbuf diskrep compare
ENGINE_SRCS := $(foreach d,$(ENGINE_DIRS),$(wildcard $(d)/*.c))
ENGINE_OBJS := $(ENGINE_SRCS:%.c=$(B)/%.o)
HVKVM_SRCS  := $(wildcard hv/kvm/*.c)
HVKVM_OBJS  := $(HVKVM_SRCS:%.c=$(B)/%.o)
ifeq ($(HAVE_XEN),yes)
HVXEN_SRCS  := $(wildcard hv/xen/*.c)
HVXEN_LIB   := $(B)/libhvxen.a
endif
HVXEN_OBJS  := $(HVXEN_SRCS:%.c=$(B)/%.o)
# The guest network stack is portable C: test_gnet and fuzz_gnet also build
# it for the host (all of guest/net but the guest-only glue).
GNET_SRCS   := $(filter-out guest/net/gnet_ft.c,$(wildcard guest/net/*.c))
GNET_OBJS   := $(GNET_SRCS:%.c=$(B)/%.o)
# The kvstore guest's portable modules (all of guest/kvstore but its
# hypercall glue, main.c): test_kvstore and fuzz_resp build them for the host.
KVSTORE_SRCS := $(filter-out guest/kvstore/main.c,$(wildcard guest/kvstore/*.c))
KVSTORE_OBJS := $(KVSTORE_SRCS:%.c=$(B)/%.o)
UNIT_SRCS   := $(wildcard tests/unit/test_*.c)
UNIT_BINS   := $(UNIT_SRCS:%.c=$(B)/%)
BENCH_SRCS  := $(wildcard bench/*.c)
BENCH_BINS  := $(BENCH_SRCS:%.c=$(B)/%)

PROGS := $(B)/ftvm $(B)/ftd $(B)/ftctl
FTD_OBJS := $(patsubst %.c,$(B)/%.o,$(wildcard daemon/ftd*.c))

.PHONY: all guests check demo bench fuzz format clean distclean
all: $(B)/libft.a $(B)/libhvkvm.a $(HVXEN_LIB) $(PROGS) $(UNIT_BINS) guests

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(B)/libft.a: $(ENGINE_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(B)/libhvkvm.a: $(HVKVM_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

ifeq ($(HAVE_XEN),yes)
$(HVXEN_OBJS): ALL_CFLAGS += $(XEN_CFLAGS)

$(B)/libhvxen.a: $(HVXEN_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^
endif

$(B)/ftvm: $(B)/daemon/ftvm.o $(B)/libhvkvm.a $(B)/libft.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(DEP_LIBS)

$(B)/ftd: $(FTD_OBJS) $(B)/libft.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(DEP_LIBS)

$(B)/ftctl: $(B)/daemon/ftctl.o $(B)/libft.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(DEP_LIBS)

$(B)/tests/unit/%: $(B)/tests/unit/%.o $(B)/libhvkvm.a $(B)/libft.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(CMOCKA_LIBS) $(DEP_LIBS)

$(B)/bench/%: $(B)/bench/%.o $(B)/libhvkvm.a $(B)/libft.a
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(DEP_LIBS)

$(B)/tests/unit/test_gnet $(B)/bench/fuzz_gnet: $(GNET_OBJS)
$(B)/tests/unit/test_kvstore $(B)/bench/fuzz_resp: $(KVSTORE_OBJS)

bench: $(BENCH_BINS) guests

# Guests never get sanitizers: they are freestanding.
guests:
	$(MAKE) -f guest/guest.mk B=build/guest

# The whole suite on the normal and on the sanitizer build; one summary.
check:
	$(MAKE) all
	$(MAKE) SAN=1 all
	tests/run build build-san

demo: all
	tools/demo.sh

fuzz:
	$(MAKE) -f bench/fuzz.mk

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-san build-fuzz

distclean: clean
	rm -f config.mk

-include $(ENGINE_OBJS:.o=.d) $(HVKVM_OBJS:.o=.d) $(HVXEN_OBJS:.o=.d) $(GNET_OBJS:.o=.d) $(KVSTORE_OBJS:.o=.d) $(UNIT_BINS:=.d) $(B)/daemon/ftvm.d \
	$(FTD_OBJS:.o=.d) $(B)/daemon/ftctl.d
