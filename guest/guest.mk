# The bundled guest kernel, included by the top Makefile.
#   $(B)/guest/guest.elf   freestanding x86-64, linked at GUEST_IMAGE_GPA (guest/linker.ld)
#   $(B)/guest/guest.bin   its flat image, what the VMM loads
# Built with its own flags: never the host's CFLAGS (sanitizers, -D_GNU_SOURCE).

# This file is read before the top Makefile's first rule: keep `all` the
# default goal rather than the first guest target below.
ifeq ($(.DEFAULT_GOAL),)
.DEFAULT_GOAL := all
endif

GUEST_CC      ?= gcc
GUEST_OBJCOPY ?= objcopy

GUEST_CFLAGS := -std=gnu11 -O2 -g -ffreestanding -nostdlib -nostdinc -fno-pic -fno-pie -static \
                -mcmodel=small -mno-red-zone -mno-sse -mno-sse2 -mno-mmx -mno-avx -mno-80387 \
                -fno-stack-protector -fno-asynchronous-unwind-tables \
                -fno-tree-loop-distribute-patterns \
                -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
                -Iinclude -isystem $(shell $(GUEST_CC) -print-file-name=include) -MMD -MP
GUEST_ASFLAGS := -nostdinc -Iinclude -MMD -MP
GUEST_LDFLAGS := -nostdlib -static -no-pie -Wl,--build-id=none -Wl,-z,noexecstack \
                 -Wl,-z,max-page-size=4096 -Wl,--no-warn-rwx-segments

GUEST_SRCS := $(wildcard guest/*.c) $(wildcard guest/*.S)
# main.c -> main.c.o: no clash between foo.c and foo.S, and the top
# Makefile's $(B)/%.o rule (host CFLAGS) can never match a guest object.
GUEST_OBJS := $(GUEST_SRCS:guest/%=$(B)/guest/%.o)
GUEST_ELF  := $(B)/guest/guest.elf
GUEST_BIN  := $(B)/guest/guest.bin

$(B)/guest/%.c.o: guest/%.c guest/guest.mk
	@mkdir -p $(@D)
	$(call say,CC,$<)$(GUEST_CC) $(GUEST_CFLAGS) -c -o $@ $<

$(B)/guest/%.S.o: guest/%.S guest/guest.mk
	@mkdir -p $(@D)
	$(call say,AS,$<)$(GUEST_CC) $(GUEST_ASFLAGS) -c -o $@ $<

# The linker script's ASSERTs fail the build if image + bss pass 5 MiB.
$(GUEST_ELF): $(GUEST_OBJS) guest/linker.ld
	$(call say,LD,$@)$(GUEST_CC) $(GUEST_LDFLAGS) -T guest/linker.ld -o $@ $(GUEST_OBJS)

$(GUEST_BIN): $(GUEST_ELF)
	$(call say,BIN,$@)$(GUEST_OBJCOPY) -O binary $< $@

guest: $(GUEST_BIN)

.PHONY: guest
