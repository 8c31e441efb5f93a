# The static lazyvm (make static), included by the top Makefile: one file with
# no shared libraries, for Firecracker's jail (a chroot that holds only the
# handler, its socket and the memory file) and for the hardware-model tier.
#   $(STATIC_B)/obj/...   objects (no sanitizers)
#   $(STATIC_B)/lazyvm    lazyvm linked -static (liburing.a, libjson-c.a, libc)
# Without the NBD source: a static libnbd would drag in gnutls and libxml2;
# the binary says so if asked for nbd://. Without systemd's fd store
# (LAZYVM_NO_SYSTEMD): Debian ships no libsystemd.a, and the jail has no
# systemd to talk to.

STATIC_B      ?= build/static
STATIC_URING_A ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/liburing.a /usr/lib/liburing.a /usr/local/lib/liburing.a))
STATIC_JSONC_A ?= $(firstword $(wildcard /usr/lib/x86_64-linux-gnu/libjson-c.a /usr/lib/libjson-c.a /usr/local/lib/libjson-c.a))

STATIC_CFLAGS = $(filter-out $(SANFLAGS),$(CFLAGS)) -DLAZYVM_NO_NBD -DLAZYVM_NO_SYSTEMD
STATIC_OBJS  := $(LIB_SRCS:%.c=$(STATIC_B)/obj/%.o) $(CLI_SRCS:%.c=$(STATIC_B)/obj/%.o)

$(STATIC_B)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(STATIC_CFLAGS) -c -o $@ $<

$(STATIC_B)/obj/guest_image.o: src/vmm/guest_image.S $(GUEST_BIN)
	@mkdir -p $(@D)
	$(call say,AS,$@)$(CC) -c -DGUEST_BIN_PATH='"$(GUEST_BIN)"' -o $@ $<

$(STATIC_B)/lazyvm: $(STATIC_OBJS) $(STATIC_B)/obj/guest_image.o
	@test -n "$(STATIC_URING_A)" || { echo "static: liburing.a not found (install liburing-dev: make deps)" >&2; exit 1; }
	@test -n "$(STATIC_JSONC_A)" || { echo "static: libjson-c.a not found (install libjson-c-dev: make deps)" >&2; exit 1; }
	$(call say,LINK,$@)$(CC) -static -o $@ $^ $(STATIC_URING_A) $(STATIC_JSONC_A) -lpthread

static: deps-check $(STATIC_B)/lazyvm

.PHONY: static

-include $(shell find $(STATIC_B)/obj -name '*.d' 2>/dev/null)
