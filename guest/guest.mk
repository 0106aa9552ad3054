# guest/guest.mk - build the freestanding guest runtime and programs.
#
#   make -f guest/guest.mk B=build/guest     (from the top of the tree)
#
# guest/rt/*.c and *.S become $(B)/librt.a, guest/net/*.c (the network
# stack, headers on the include path) $(B)/libgnet.a; every other
# directory guest/<prog>/ that holds a main.c becomes $(B)/<prog>.elf,
# linked from all its .c files, libgnet (only programs that use it pull
# anything in), the runtime and libgcc with guest/link.ld.  Always the
# host gcc, whatever $(CC) is: guests use gcc's freestanding headers and
# libgcc (docs/guest-abi.md says why there is no AVX).

B ?= build/guest
GUEST_CC := gcc
GCC_INC := $(shell $(GUEST_CC) -print-file-name=include)

GUEST_CFLAGS := -std=gnu11 -ffreestanding -nostdinc \
	-isystem $(GCC_INC) -Iguest/include -Iguest/net -Ihv/kvm \
	-fno-pie -fno-stack-protector -fno-asynchronous-unwind-tables \
	-mno-red-zone -mno-avx -mno-avx2 -O2 -g \
	-Wall -Wextra -Werror -Wshadow -Wstrict-prototypes \
	-Wmissing-prototypes -Wvla
GUEST_LDFLAGS := -nostdlib -static -no-pie -T guest/link.ld \
	-Wl,-z,max-page-size=4096 -Wl,--build-id=none
# Keep gcc from turning the runtime's own loops into calls to memset et al.
RT_CFLAGS := -fno-tree-loop-distribute-patterns

RT_SRCS := $(wildcard guest/rt/*.c) $(wildcard guest/rt/*.S)
RT_OBJS := $(patsubst guest/%,$(B)/%.o,$(RT_SRCS))
NET_OBJS := $(patsubst guest/%,$(B)/%.o,$(wildcard guest/net/*.c))
PROGS := $(filter-out rt include, \
	$(patsubst guest/%/main.c,%,$(wildcard guest/*/main.c)))
ELFS := $(PROGS:%=$(B)/%.elf)
# Everything is rebuilt when the build rules or the layout change.
REBUILD := guest/guest.mk guest/link.ld

.PHONY: all
all: $(B)/librt.a $(B)/libgnet.a $(ELFS)

$(B)/rt/%.c.o: guest/rt/%.c $(REBUILD)
	@mkdir -p $(dir $@)
	$(GUEST_CC) $(GUEST_CFLAGS) $(RT_CFLAGS) -MMD -MP -c $< -o $@

$(B)/rt/%.S.o: guest/rt/%.S $(REBUILD)
	@mkdir -p $(dir $@)
	$(GUEST_CC) $(GUEST_CFLAGS) -MMD -MP -c $< -o $@

$(B)/librt.a: $(RT_OBJS)
	rm -f $@ && ar rcs $@ $^

$(B)/libgnet.a: $(NET_OBJS)
	rm -f $@ && ar rcs $@ $^

# Program sources; argv[0] comes from a one-line generated object.
$(B)/%.c.o: guest/%.c $(REBUILD)
	@mkdir -p $(dir $@)
	$(GUEST_CC) $(GUEST_CFLAGS) -MMD -MP -c $< -o $@

$(B)/%/progname.o: $(REBUILD)
	@mkdir -p $(dir $@)
	printf 'const char ft_prog_name[] = "%s";\n' '$*' | \
		$(GUEST_CC) $(GUEST_CFLAGS) -Wno-missing-prototypes -x c -c -o $@ -

define prog_rule
$(B)/$(1).elf: $(patsubst guest/%,$(B)/%.o,$(wildcard guest/$(1)/*.c)) \
		$(B)/$(1)/progname.o $(B)/libgnet.a $(B)/librt.a
	$$(GUEST_CC) $$(GUEST_LDFLAGS) -o $$@ $$(filter %.o,$$^) \
		$(B)/libgnet.a $(B)/librt.a -lgcc
endef
$(foreach p,$(PROGS),$(eval $(call prog_rule,$(p))))

-include $(RT_OBJS:.o=.d) $(NET_OBJS:.o=.d) $(patsubst guest/%,$(B)/%.d, \
	$(foreach p,$(PROGS),$(wildcard guest/$(p)/*.c)))
