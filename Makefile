# lazyvm: plain GNU make, out-of-tree build in build/.
#   make            build build/lazyvm, the tests and the benchmarks
#   make test       build and run every test (tests/run-tests)
#   make demo       run the handler against the built-in Firecracker-playing client
#   make bench      run the benchmarks (results to stdout; see docs/BENCHMARKS.md)
#   make SAN=1      ASan + UBSan build (into build-san/)
#   make deps       install the Debian packages the build needs (idempotent)
#   make fuzz       build and run the handshake fuzzer for FUZZ_SECONDS (clang/libFuzzer)
#   make format-check   clang-format --dry-run over the sources
#   make static     a static build/static/lazyvm (for Firecracker's jail; no NBD)

CC      ?= gcc
SAN     ?= 0
ifeq ($(SAN),1)
B       ?= build-san
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
else
B       ?= build
SANFLAGS =
endif

CFLAGS  ?= -O2 -g
CFLAGS  += -std=gnu11 -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-unused-parameter -D_GNU_SOURCE -Iinclude -MMD -MP $(SANFLAGS)
LDFLAGS += $(SANFLAGS)
LDLIBS  += -luring -lnbd -ljson-c -lsystemd -lpthread

# Quiet by default; `make V=1` prints the full commands.
ifeq ($(V),1)
Q =
say =
else
Q = @
say = @printf '  %-6s %s\n' $(1) $(2);
endif

LIB_SRCS  := $(wildcard src/core/*.c) $(wildcard src/fc/*.c) $(wildcard src/vmm/*.c) \
             $(wildcard src/vmm/x86_64/*.c) $(wildcard src/vmm/dev/*.c)
# The workload parser is the guest's and the host's both (lazyvm run checks the
# string before it boots); its host object is build/guest/workload_parse.o, the
# guest's build/guest/workload_parse.c.o.
LIB_SRCS  += guest/workload_parse.c
CLI_SRCS  := $(wildcard src/cli/*.c)
UNIT_SRCS := $(wildcard tests/unit/*.c)
BENCH_SRCS := $(wildcard bench/*.c)

LIB_OBJS  := $(LIB_SRCS:%.c=$(B)/%.o)
CLI_OBJS  := $(CLI_SRCS:%.c=$(B)/%.o)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(B)/tests/%)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(B)/bench/%)

# The bundled guest kernel (guest/guest.mk defines GUEST_BIN and its rules).
-include guest/guest.mk
# The static lazyvm (make static; static.mk).
include static.mk
# The hardware-model KVM test host under QEMU (make hwtest; tests/hw/hw.mk).
ifneq ($(NO_HW),1)
-include tests/hw/hw.mk
endif

all: $(B)/lazyvm $(UNIT_BINS) $(BENCH_BINS) $(GUEST_BIN)

# The archive is written from scratch, and again whenever the set of objects
# changes ($(B)/.lib-objs), so that a deleted source leaves no object behind.
$(shell mkdir -p $(B) && echo '$(LIB_OBJS)' | cmp -s - $(B)/.lib-objs || echo '$(LIB_OBJS)' >$(B)/.lib-objs)
$(B)/liblazyvm.a: $(LIB_OBJS) $(B)/.lib-objs
	@mkdir -p $(@D)
	$(call say,AR,$@)rm -f $@ && $(AR) rcs $@ $(LIB_OBJS)

$(B)/lazyvm: $(CLI_OBJS) $(B)/guest_image.o $(B)/liblazyvm.a
	$(call say,LINK,$@)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The guest image is embedded in the binary (.incbin), rebuilt when it changes.
$(B)/guest_image.o: src/vmm/guest_image.S $(GUEST_BIN)
	@mkdir -p $(@D)
	$(call say,AS,$<)$(CC) -c -DGUEST_BIN_PATH='"$(GUEST_BIN)"' -o $@ $<

$(B)/tests/%: $(B)/tests/unit/%.o $(B)/tests/test_main.o $(B)/liblazyvm.a
	@mkdir -p $(@D)
	$(call say,LINK,$@)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# fault_bench is main (bench/fault_bench.c) and its parts (bench/fault/*.c).
FAULT_BENCH_OBJS := $(patsubst %.c,$(B)/%.o,bench/fault_bench.c $(wildcard bench/fault/*.c))
$(B)/bench/fault_bench: $(FAULT_BENCH_OBJS) $(B)/liblazyvm.a
	@mkdir -p $(@D)
	$(call say,LINK,$@)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/bench/%: $(B)/bench/%.o $(B)/liblazyvm.a
	@mkdir -p $(@D)
	$(call say,LINK,$@)$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/%.o: %.c
	@mkdir -p $(@D)
	$(call say,CC,$<)$(CC) $(CFLAGS) -c -o $@ $<

$(B)/tests/%.o: CFLAGS += -Itests

# The test run: every unit binary and integration script, each under a timeout.
test: deps-check all
	B=$(B) tests/run-tests

demo: deps-check all
	B=$(B) scripts/demo

bench: deps-check all
	B=$(B) bench/run

deps:
	scripts/deps

# Cheap check so `make test` on a fresh machine installs what is missing first.
deps-check:
	@scripts/deps --check >/dev/null 2>&1 || scripts/deps

FUZZ_SECONDS ?= 30
fuzz: deps-check
	@mkdir -p $(B)/fuzz
	clang -std=gnu11 -g -O1 -D_GNU_SOURCE -Iinclude -fsanitize=fuzzer,address,undefined \
	    -o $(B)/fuzz/fuzz_handshake fuzz/fuzz_handshake.c src/fc/handshake.c src/fc/messages.c \
	    src/core/log.c -ljson-c
	mkdir -p $(B)/fuzz/corpus && cp -n fuzz/corpus/* $(B)/fuzz/corpus/ 2>/dev/null || true
	$(B)/fuzz/fuzz_handshake -max_total_time=$(FUZZ_SECONDS) -max_len=4096 -print_final_stats=1 $(B)/fuzz/corpus

format-check:
	clang-format --dry-run --Werror $(shell git ls-files '*.c' '*.h')

clean:
	rm -rf build build-san

.PHONY: all test demo bench deps deps-check fuzz format-check clean
.SECONDARY:

-include $(shell find $(B)/src $(B)/tests $(B)/bench $(B)/guest -name '*.d' -type f 2>/dev/null)
