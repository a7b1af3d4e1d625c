# pgcorral build. `make` builds build/pgcorral; `make test` runs the TAP suite against a
# throwaway PostgreSQL; `make run` runs the supervisor against a private dev database.
# Every source file under shm/, runtime/, workers/ and coordinator/ is picked up by
# wildcard, so adding a file needs no edit here.

CC       ?= cc
BUILD    ?= build
SANITIZE ?=
LLHTTP_SRC ?= /usr/share/llhttp
LLHTTP_INC ?= /usr/share/include/llhttp

PKGS     := libpq libuv liburing jansson
WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
            -Wformat=2 -Wvla -Wno-unused-parameter
# CFLAGS, CPPFLAGS, LDFLAGS and LDLIBS are the user's (`make CFLAGS=-O0` keeps everything
# else); what the build itself needs is in the PGC_ variables, always used with them.
CFLAGS   ?= -O2 -g
PGC_CFLAGS   := -std=c11 -D_GNU_SOURCE -fPIC -MMD -MP -pthread
PGC_CPPFLAGS := -I. -Iruntime -I$(LLHTTP_INC) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PGC_LDLIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ldl -lm -pthread
PGC_LDFLAGS  := -rdynamic

ifeq ($(SANITIZE),address)
  PGC_CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  PGC_LDFLAGS += -fsanitize=address,undefined
  BUILD   := build-asan
else ifeq ($(SANITIZE),thread)
  PGC_CFLAGS  += -fsanitize=thread -fno-omit-frame-pointer
  PGC_LDFLAGS += -fsanitize=thread
  BUILD   := build-tsan
else ifeq ($(SANITIZE),fuzzer)
  # libFuzzer targets (make fuzz): clang, coverage instrumentation and ASan+UBSan.
  CC      := clang
  PGC_CFLAGS  += -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
  PGC_LDFLAGS += -fsanitize=address,undefined
  BUILD   := build-fuzz
else ifneq ($(SANITIZE),)
  $(error SANITIZE must be address, thread or fuzzer, not '$(SANITIZE)')
endif

# One archive per layer (DESIGN "Layers": shm <- runtime <- workers <- coordinator). A layer's
# tests link only the archives at or below it, so a reference to a higher layer fails to
# link.
LAYERS    := shm runtime workers coordinator
LIB_SRC   := $(filter-out coordinator/main.c,$(sort $(foreach l,$(LAYERS),$(wildcard $(l)/*.c))))
LLHTTP_OBJ := $(BUILD)/llhttp/llhttp.o $(BUILD)/llhttp/api.o $(BUILD)/llhttp/http.o
layer_obj  = $(patsubst %.c,$(BUILD)/%.o,$(filter-out coordinator/main.c,$(wildcard $(1)/*.c)))
LIB_SHM     := $(BUILD)/libpgc_shm.a
LIB_RUNTIME := $(BUILD)/libpgc_runtime.a
LIB_WORKERS := $(BUILD)/libpgc_workers.a
LIB_COORD   := $(BUILD)/libpgc_coordinator.a
# Link order: each archive before the ones it uses.
LIBS_SHM     := $(LIB_SHM)
LIBS_RUNTIME := $(LIB_RUNTIME) $(LIBS_SHM)
LIBS_WORKERS := $(LIB_WORKERS) $(LIBS_RUNTIME)
LIBS_ALL     := $(LIB_COORD) $(LIBS_WORKERS)
BIN       := $(BUILD)/pgcorral

TEST_SRC  := $(sort $(wildcard tests/t[0-9][0-9][0-9]_*.c))
TEST_BIN  := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# Shared test code, as an archive: a test pulls in only the helpers it calls, so a 1xx test
# never drags in a helper of the web or job tests (and their layers).
TEST_LIB_SRC := $(sort $(wildcard tests/lib/*.c))
TEST_LIB     := $(BUILD)/libpgctest.a

EXAMPLE_SRC := $(sort $(wildcard examples/*.c))
EXAMPLE_SO  := $(EXAMPLE_SRC:examples/%.c=$(BUILD)/examples/%.so)

FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)
FUZZ_SECONDS ?= 60

.PHONY: all layers deps check-deps test run bench bench-deps bench-pool bench-http bench-jobs bench-cluster chaos clean format format-check fuzz fuzz-run install uninstall
.DEFAULT_GOAL := all
# Keep object files that make would see as intermediate (tests, fuzz targets).
.SECONDARY:

all: check-deps layers $(BIN) $(TEST_BIN) $(EXAMPLE_SO)

# DESIGN "Layers": shm <- runtime <- workers <- coordinator, and coordinator reaches workers
# only through workers/workers.h. An include against that fails the build and prints the
# offending lines, before any object is compiled (the archives catch only what links).
layers:
	@scripts/check-layers.sh

# Plain `make` only builds: when a build library is missing it prints the one apt-get line
# that fixes it and stops. `make deps` (and test, run, the benchmarks, fuzz) install what
# they need first, then build in a second make: GNU make caches what a directory held when
# it first looked, so a build in the same make as the install would not see llhttp's
# sources appear.
check-deps:
	@scripts/install-deps.sh --check

deps:
	@scripts/install-deps.sh build run test

# The recipe line of a target that needs the packages of group $(1): install them, then
# build in a second make (see above).
deps_then_build = @scripts/install-deps.sh $(1) && $(MAKE) --no-print-directory -j$$(nproc) all

$(BUILD)/%.o: %.c | check-deps layers
	@mkdir -p $(@D)
	$(CC) $(PGC_CPPFLAGS) $(CPPFLAGS) $(PGC_CFLAGS) $(CFLAGS) $(WARN) -c $< -o $@

# llhttp is compiled from Debian's node-llhttp sources, with its own (laxer) warnings.
$(BUILD)/llhttp/%.o: $(LLHTTP_SRC)/%.c | check-deps
	@mkdir -p $(@D)
	$(CC) -I$(LLHTTP_INC) $(PGC_CFLAGS) $(filter-out -Werror,$(CFLAGS)) -w -c $< -o $@

# The commit `pgcorral --version` names. Only runtime/version.o is compiled with it; the
# stamp file is rewritten only when the commit changes, so a new HEAD rebuilds that one
# object (and relinks), and nothing else.
GIT_SHA := $(or $(shell git rev-parse --short HEAD 2>/dev/null | tr -cd '0-9a-f'),unknown)

$(BUILD)/git-sha: FORCE
	@mkdir -p $(@D)
	@echo '$(GIT_SHA)' | cmp -s - $@ || echo '$(GIT_SHA)' > $@

$(BUILD)/runtime/version.o: $(BUILD)/git-sha
$(BUILD)/runtime/version.o: PGC_CPPFLAGS += -DPGCORRAL_GIT_SHA='"$(GIT_SHA)"'

# Phony, not a plain empty rule: .SECONDARY below would let make skip a missing FORCE.
.PHONY: FORCE
FORCE:

$(LIB_SHM): $(call layer_obj,shm)
$(LIB_RUNTIME): $(call layer_obj,runtime)
$(LIB_WORKERS): $(call layer_obj,workers) $(LLHTTP_OBJ)
$(LIB_COORD): $(call layer_obj,coordinator)
$(TEST_LIB): $(TEST_LIB_SRC:%.c=$(BUILD)/%.o)
$(BUILD)/lib%.a:
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(BUILD)/coordinator/main.o $(LIBS_ALL)
	$(CC) $(PGC_LDFLAGS) $(LDFLAGS) -o $@ $^ $(PGC_LDLIBS) $(LDLIBS)

# tNNN: the first digit is the layer under test: 1 shm, 2 runtime, 3 workers, 4 and 9 the
# whole program.
test_libs = $(if $(filter t1%,$(1)),$(LIBS_SHM),$(if $(filter t2%,$(1)),$(LIBS_RUNTIME),$(LIBS_ALL)))
.SECONDEXPANSION:
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_LIB) $$(call test_libs,$$*)
	$(CC) $(PGC_LDFLAGS) $(LDFLAGS) -o $@ $^ $(PGC_LDLIBS) $(LDLIBS)

# Plugins resolve pgc_* from the host binary (built with -rdynamic).
$(BUILD)/examples/%.so: examples/%.c runtime/pgcorral.h | check-deps
	@mkdir -p $(@D)
	$(CC) $(PGC_CPPFLAGS) $(CPPFLAGS) $(PGC_CFLAGS) $(CFLAGS) $(WARN) -shared -o $@ $<

# `make install PREFIX=/usr/local DESTDIR=`: the binary, the plugin header and its
# pkg-config file (a plugin builds with `cc -shared -fPIC $(pkg-config --cflags pgcorral)`;
# it links nothing, see above), the man page, and under share/doc/pgcorral the systemd
# units and a logrotate file (sources in dist/). `make uninstall` with the same PREFIX and
# DESTDIR removes exactly those files.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
INCLUDEDIR ?= $(PREFIX)/include
LIBDIR     ?= $(PREFIX)/lib
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
MANDIR     ?= $(PREFIX)/share/man
DOCDIR     ?= $(PREFIX)/share/doc/pgcorral
VERSION    := $(shell sed -n 's/^\#define PGCORRAL_VERSION "\(.*\)"/\1/p' runtime/rt_version.h)
DIST_DOCS  := pgcorral.service pgcorral.socket pgcorral.logrotate

install: $(BIN)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR) \
	    $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(DOCDIR)
	install -m 755 $(BIN) $(DESTDIR)$(BINDIR)/pgcorral
	install -m 644 runtime/pgcorral.h $(DESTDIR)$(INCLUDEDIR)/pgcorral.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@INCLUDEDIR@|$(patsubst $(PREFIX)/%,$${prefix}/%,$(INCLUDEDIR))|' \
	    -e 's|@VERSION@|$(VERSION)|' dist/pgcorral.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/pgcorral.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/pgcorral.pc
	sed -e '/^\.TH/s|"pgcorral [^"]*"|"pgcorral $(VERSION)"|' dist/pgcorral.1 \
	    > $(DESTDIR)$(MANDIR)/man1/pgcorral.1
	chmod 644 $(DESTDIR)$(MANDIR)/man1/pgcorral.1
	for f in $(DIST_DOCS); do \
	    sed -e 's|/usr/local/bin/pgcorral|$(BINDIR)/pgcorral|g' dist/$$f > $(DESTDIR)$(DOCDIR)/$$f && \
	    chmod 644 $(DESTDIR)$(DOCDIR)/$$f || exit 1; \
	done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/pgcorral $(DESTDIR)$(INCLUDEDIR)/pgcorral.h \
	    $(DESTDIR)$(PKGCONFIGDIR)/pgcorral.pc $(DESTDIR)$(MANDIR)/man1/pgcorral.1 \
	    $(addprefix $(DESTDIR)$(DOCDIR)/,$(DIST_DOCS))
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null

# Each fuzz target runs for FUZZ_SECONDS on a copy of its seed corpus (tests/fuzz/NAME/);
# a crash or sanitizer report fails the target and leaves the input in build-fuzz/.
fuzz:
	@scripts/install-deps.sh fuzz
	$(MAKE) SANITIZE=fuzzer fuzz-run

$(BUILD)/fuzz/%: tests/fuzz/%.c $(LIBS_ALL)
	@mkdir -p $(@D)
	$(CC) $(PGC_CPPFLAGS) $(CPPFLAGS) $(PGC_CFLAGS) $(CFLAGS) $(WARN) -fsanitize=fuzzer -o $@ $< $(LIBS_ALL) \
	    $(PGC_LDFLAGS) $(LDFLAGS) $(PGC_LDLIBS) $(LDLIBS)

fuzz-run: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do \
	    name=$$(basename $$f); corpus=$(BUILD)/fuzz/corpus-$$name; \
	    rm -rf $$corpus; mkdir -p $$corpus; cp tests/fuzz/$${name#fuzz_}/* $$corpus/ 2>/dev/null; \
	    echo "fuzz: $$name for $(FUZZ_SECONDS) s"; \
	    (cd $(BUILD)/fuzz && ./$$name -max_total_time=$(FUZZ_SECONDS) -max_len=8192 \
	        -print_final_stats=1 corpus-$$name) > $(BUILD)/fuzz/$$name.log 2>&1 || \
	        { tail -n 40 $(BUILD)/fuzz/$$name.log; echo "fuzz: $$name FAILED"; exit 1; }; \
	    grep -E "stat::number_of_executed_units|Done" $(BUILD)/fuzz/$$name.log | tail -n 2; \
	done

# The whole TAP suite, against a throwaway PostgreSQL started (and always stopped) by the
# wrapper script.
test:
	$(call deps_then_build,test)
	@rm -f $(BUILD)/tsan-report.*
	BUILD=$(BUILD) $(TEST_ENV) scripts/with-test-pg.sh prove --exec '' --timer -v $(TEST_BIN)
	$(TEST_AFTER)

# Under ThreadSanitizer (make test SANITIZE=thread) a race in a worker process or a
# supervisor that a test started would only reach that process's stderr, which the test may
# not read: every report goes to a file instead, and any file fails the run. A deliberate
# crash (t311's t.crash) must stay a SIGSEGV, not TSan's report of one (handle_segv=0).
# t305 counts allocations by interposing malloc, which TSan's allocator does not allow; it
# skips itself under a sanitizer and runs in the plain suite.
ifeq ($(SANITIZE),thread)
TEST_ENV   := TSAN_OPTIONS="handle_segv=0 second_deadlock_stack=1 log_path=$(abspath $(BUILD))/tsan-report"
TEST_AFTER := @if ls $(BUILD)/tsan-report.* >/dev/null 2>&1; then \
	    cat $(BUILD)/tsan-report.*; echo "ThreadSanitizer reported the above"; exit 1; fi
endif

# A private PostgreSQL (see scripts/run-dev.sh) and the supervisor in the foreground.
run:
	$(call deps_then_build,run)
	BUILD=$(BUILD) scripts/run-dev.sh

# Benchmarks: install their peers' packages, build, run.
bench-deps:
	$(call deps_then_build,bench)

bench-pool: bench-deps
	BUILD=$(BUILD) bench/pool/run.sh

bench-http: bench-deps
	BUILD=$(BUILD) bench/http/run.sh

bench-jobs: bench-deps
	BUILD=$(BUILD) bench/jobs/run.sh

bench-cluster: bench-deps
	BUILD=$(BUILD) bench/cluster/run.sh

# The long chaos run; `make test` runs the same program for 10 s.
chaos:
	$(call deps_then_build,test)
	PGC_CHAOS_SECONDS=$${PGC_CHAOS_SECONDS:-60} BUILD=$(BUILD) scripts/with-test-pg.sh $(BUILD)/tests/t950_chaos

bench: bench-deps
	@for b in bench/*/run.sh; do [ -x $$b ] && BUILD=$(BUILD) $$b; done

format:
	@scripts/install-deps.sh format
	clang-format -i $(LIB_SRC) coordinator/main.c $(wildcard */*.h tests/*.c tests/lib/*.[ch] examples/*.c)

format-check:
	@scripts/install-deps.sh format
	clang-format --dry-run --Werror $(LIB_SRC) coordinator/main.c $(wildcard */*.h tests/*.c tests/lib/*.[ch] examples/*.c)

clean:
	rm -rf build build-asan build-tsan build-fuzz

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
