#!/usr/bin/env bash
# guest/build.sh OUTDIR -- build every edgevm test guest and example program.
#
# Outputs (static x86_64 ELF files but `dynamic`, flat in OUTDIR):
#   tests (guest/tests):
#     hello            glibc   "Hello World from C (glibc)!"
#     hello_musl       musl    "Hello World from C (musl)!"
#     hello_pie        glibc, static-pie (ET_DYN) variant of hello
#     hello_cpp        g++     "Hello World from C++!"
#     hello_rust       rustc   "Hello World from Rust!"
#     bench_hello      = hello (glibc)
#     args_env, syscalls, syscalls_musl, crash_null, crash_gp, crash_ud,
#     crash_div, crash_stack, loop_forever, membomb, wait, bench_getpid
#     serve_state, serve_api   request-handler probes for the serve tests
#     debug            GDB sessions (tests/all/debug.rs), built with -O0
#     live_state       storage counter carried across live updates
#     clients          request counters in shared memory (hostile-client tests)
#     avx_state        AVX register isolation between requests
#     cpu_probe        CPUID feature bits and XCR0 as the guest sees them
#     regex_api        the regex calls (tests/all/regex.rs)
#     slow_init        main() computes for 60 ms (snapshot tests and benchmark)
#     storage_api      storage_call/storage_callv semantics (tests/all/storage.rs)
#     storage_tasks    storage tasks (tests/all/storage_tasks.rs)
#     fetch_api        sys_fetch probes (tests/all/fetch.rs)
#     state_file(_musl) the `state` file from main, storage and request VMs
#     state_file_rust  the `state` file from Rust's std::fs (edgevm run)
#     files(_musl)     allowed_paths, cwd and descriptors from a handler (tests/all/files.rs)
#     mapped_files     file mappings with mmap_backed_files (tests/all/mapped_files.rs)
#     dynamic          a dynamically linked handler (host ld.so, dlopen), the one non-static guest
#     dynamic_musl, bad_interp  interp.c with musl's loader / PT_INTERP /etc/passwd (files.rs)
#     shm_api          shared_memory_area() and the SHM_ALLOC* macros
#     hostile          hostile modes (loops, bombs, privileged instructions, bad calls)
#     secrets          plants a secret everywhere / scans all it can read for it
#     api_fuzz         random hypercalls and system calls with nasty arguments
#     output(_musl,_ref) stdio output line by line, never replayed (run_cmd, serve)
#     api_compat(_ref) the request API via edgevm's header / via reference-style stubs
#     bench_touch      request-cycle benchmark guest (benches/request.rs)
#     hot_pages        reset of pages kept writable (tests/all/reset.rs)
#     wx               page protections: W^X, mprotect, executable_heap (tests/all/wx.rs)
#     wx_low           wx linked at 0x100000, the lowest load address (tests/all/wx.rs)
#     memlayout        blackout_area, relocate_fixed_mmap, stdout, huge pages (tests/all/memlayout.rs)
#     api_multi        two C files including kvm_api.h (link check)
#     api_cpp          kvm_api.h from C++
#     event_loop(_ref,_cpp) wait_for_requests_paused() event loops (tests/all/event_loop.rs)
#     routes           a program behind routes and chains (tests/all/routes.rs)
#     call_semantics(_ref) every header call, fast path vs hypercalls (call_semantics.rs)
#     threads          pthreads: a frozen worker pool, spawns, futexes (tests/all/threads.rs)
#     threads_rust     Rust std::thread, mpsc, Mutex/Condvar (tests/all/threads.rs)
#     signals          signal handlers, masks, sigaltstack, rt_sigreturn (tests/all/threads.rs)
#     readiness        poll/select/epoll/eventfd/timerfd and blocking pipes (tests/all/readiness.rs)
#     stream           begin_streaming_response, honest and hostile (tests/all/stream.rs)
#     sockets          guest sockets under the network policy (tests/all/sockets.rs)
#     stream_post      set_backend_stream_post: bodies segment by segment (tests/all/stream_post.rs)
#     faults           CPU faults to SIGSEGV/SIGFPE/... handlers, timer signals (tests/all/faults.rs)
#     smp              multiprocess* and vcpuid() on extra vCPUs (tests/all/smp.rs)
#     vdso, vdso_pie, vdso_musl, vdso_rust  time through the vDSO, hostile uses of it (tests/all/vdso.rs)
#     remote_request, remote_storage  a remote-call pair: the storage program linked at
#                      0x40200000, called as plain C calls (tests/all/remote.rs)
#   examples (guest/examples):
#     example_hello, example_counter, example_scounter, example_echo,
#     example_headers, example_lua (Lua 5.4), example_python (CPython 3.11),
#     example_quickjs (JavaScript: QuickJS through the rquickjs crate, guest/examples/quickjs),
#     example_datatree (an espeak-like data directory tree)
#     example_fetch, example_storage_fetch, example_fetch_cpp (C++), example_stream
#     example_remote + example_remote_storage (two binaries: remote storage calls)
#     example_linedb (a C client of a Redis-like line service over TCP)
#     example_lineserver (a line-protocol server in the TCP server mode; tests/all/tcp_server.rs)
#     example_wschat (a WebSocket chat in the TCP server mode; tests/all/websocket.rs)
#     example_tokio (Rust, tokio's multi-thread runtime: tasks, a timer, TCP; guest/examples/tokio)
#     example_goserve  Go 1.19 (CGO_ENABLED=0) through the kvm package (guest/go/kvm):
#                      goroutines, channels, a WaitGroup fan-out, time.Sleep (tests/all/golang.rs)
#   Rust guest crate (guest/rust/edgevm-guest):
#     rust_hello_http, rust_event_loop, rust_smp (multiprocess from Rust; tests/all/smp.rs)
#
# Rebuilds only what is older than its sources or kvm_api.h. Fails loudly
# when a compiler is missing. Set EDGEVM_GUEST_SKIP="rust musl cpp" (any
# subset; also "go", "quickjs") to skip toolchains deliberately.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi

GUEST="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
OUT="$(cd "$1" && pwd)"
HEADER="$GUEST/kvm_api.h $GUEST/tests/test_util.h"
SKIP=" ${EDGEVM_GUEST_SKIP:-} "
skipped() { [[ "$SKIP" == *" $1 "* ]]; }

CFLAGS="-std=gnu11 -O2 -g -Wall -Wextra -Werror"  # warning-free (issue 19)
CXXFLAGS="-std=gnu++17 -O2 -g -Wall -Wextra -Werror"
EXFLAGS="-std=gnu11 -O2 -g -Wall -Werror"  # examples are spec text: no -Wextra

need() { # need TOOL DEBIAN_PACKAGE
	if ! command -v "$1" >/dev/null 2>&1; then
		echo "build.sh: ERROR: '$1' not found. Install it with: apt-get install $2" >&2
		exit 1
	fi
}
need gcc gcc
[ -e /usr/lib/x86_64-linux-gnu/liblua5.4.a ] || { echo "build.sh: ERROR: liblua5.4.a not found. Install it with: apt-get install liblua5.4-dev" >&2; exit 1; }
[ -e /usr/lib/python3.11/config-3.11-x86_64-linux-gnu/libpython3.11.a ] || { echo "build.sh: ERROR: libpython3.11.a not found. Install it with: apt-get install libpython3.11-dev" >&2; exit 1; }
skipped cpp || need g++ g++
skipped musl || need musl-gcc musl-tools
if ! skipped rust; then
	need rustc "rustup (https://rustup.rs) or the Debian package rustc"
	need cargo "rustup (https://rustup.rs) or the Debian package cargo"
fi

# up_to_date OUTPUT DEP... : true if OUTPUT exists and is newer than all DEPs.
up_to_date() {
	local out="$1"; shift
	[ -e "$out" ] || return 1
	local dep
	for dep in "$@"; do
		[ "$out" -nt "$dep" ] || return 1
	done
	return 0
}

# Each program built by `build` records its command line in $OUT/.cmd/NAME: a changed command
# (flags, sources, libraries) rebuilds that program only, not every guest when build.sh changes.
mkdir -p "$OUT/.cmd"

PIDS=()
NAMES=()
LOGDIR="$(mktemp -d)"
trap 'rm -rf "$LOGDIR"' EXIT
BUILT=0
FRESH=0

# build NAME "DEPS..." CMD... : run CMD in the background unless OUT/NAME is
# up to date. CMD must write "$OUT/NAME.tmp"; it is renamed on success.
build() {
	local name="$1" deps="$2"; shift 2
	local cmd="$*"
	# shellcheck disable=SC2086
	if up_to_date "$OUT/$name" $deps && [ "$(cat "$OUT/.cmd/$name" 2>/dev/null)" = "$cmd" ]; then
		FRESH=$((FRESH + 1))
		return 0
	fi
	(
		"$@" >"$LOGDIR/$name.log" 2>&1 && mv -f "$OUT/$name.tmp" "$OUT/$name" &&
			printf '%s' "$cmd" >"$OUT/.cmd/$name"
	) &
	PIDS+=("$!")
	NAMES+=("$name")
	BUILT=$((BUILT + 1))
}

T="$GUEST/tests"
E="$GUEST/examples"

# --- C, glibc -------------------------------------------------------------
for prog in hello args_env syscalls crash_null crash_gp crash_ud crash_div \
	crash_stack loop_forever membomb bench_getpid; do
	build "$prog" "$T/$prog.c" gcc $CFLAGS -static "$T/$prog.c" -o "$OUT/$prog.tmp"
done
build bench_hello "$T/hello.c" gcc $CFLAGS -static "$T/hello.c" -o "$OUT/bench_hello.tmp"
build hello_pie "$T/hello.c" gcc $CFLAGS -static-pie -fPIE "$T/hello.c" -o "$OUT/hello_pie.tmp"
build wait "$T/wait.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/wait.c" -o "$OUT/wait.tmp"
build debug "$T/debug.c $HEADER" gcc ${CFLAGS/-O2/-O0} -static -I"$GUEST" "$T/debug.c" -o "$OUT/debug.tmp"
for prog in serve_state serve_api bench_touch hot_pages cpu_probe regex_api slow_init wx memlayout; do
	build "$prog" "$T/$prog.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/$prog.c" -o "$OUT/$prog.tmp"
done
build vdso "$T/vdso.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/vdso.c" -o "$OUT/vdso.tmp"
build vdso_pie "$T/vdso.c $HEADER" gcc $CFLAGS -static-pie -fPIE -I"$GUEST" "$T/vdso.c" -o "$OUT/vdso_pie.tmp"
build wx_low "$T/wx.c $HEADER" gcc $CFLAGS -static -I"$GUEST" -Wl,-Ttext-segment=0x100000 "$T/wx.c" -o "$OUT/wx_low.tmp"
build avx_state "$T/avx_state.c $HEADER" gcc $CFLAGS -mavx2 -static -I"$GUEST" "$T/avx_state.c" -o "$OUT/avx_state.tmp"
build api_compat "$T/api_compat.c $T/ref_stubs.h $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/api_compat.c" -o "$OUT/api_compat.tmp"
build api_compat_ref "$T/api_compat.c $T/ref_stubs.h $HEADER" gcc $CFLAGS -DREF_ABI -static -I"$GUEST" "$T/api_compat.c" -o "$OUT/api_compat_ref.tmp"
build output "$T/output.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/output.c" -o "$OUT/output.tmp"
build output_ref "$T/output.c $HEADER" gcc $CFLAGS -DREF_ABI -static -I"$GUEST" "$T/output.c" -o "$OUT/output_ref.tmp"
build hostile "$T/hostile.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/hostile.c" -o "$OUT/hostile.tmp" -lpthread
build threads "$T/threads.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/threads.c" -o "$OUT/threads.tmp" -lpthread -lm
build signals "$T/signals.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/signals.c" -o "$OUT/signals.tmp" -lpthread
build readiness "$T/readiness.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/readiness.c" -o "$OUT/readiness.tmp" -lpthread
build sockets "$T/sockets.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/sockets.c" -o "$OUT/sockets.tmp" -Wl,--no-warnings
build faults "$T/faults.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/faults.c" -o "$OUT/faults.tmp" -lpthread
build smp "$T/smp.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/smp.c" -o "$OUT/smp.tmp"
build secrets "$T/secrets.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/secrets.c" -o "$OUT/secrets.tmp"
build api_fuzz "$T/api_fuzz.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/api_fuzz.c" -o "$OUT/api_fuzz.tmp"
build clients "$T/clients.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/clients.c" -o "$OUT/clients.tmp"
build live_state "$T/live_state.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/live_state.c" -o "$OUT/live_state.tmp"
for prog in storage_api state_file shm_api storage_tasks files fetch_api mapped_files; do
	build "$prog" "$T/$prog.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/$prog.c" -o "$OUT/$prog.tmp"
done
build stream "$T/stream.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/stream.c" -o "$OUT/stream.tmp"
build stream_post "$T/stream_post.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/stream_post.c" -o "$OUT/stream_post.tmp"
build routes "$T/routes.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/routes.c" -o "$OUT/routes.tmp"
build call_semantics "$T/call_semantics.c $T/ref_stubs.h $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/call_semantics.c" -o "$OUT/call_semantics.tmp"
build call_semantics_ref "$T/call_semantics.c $T/ref_stubs.h $HEADER" gcc $CFLAGS -DREF_ABI -static -I"$GUEST" "$T/call_semantics.c" -o "$OUT/call_semantics_ref.tmp"
build event_loop "$T/event_loop.c $HEADER" gcc $CFLAGS -static -I"$GUEST" "$T/event_loop.c" -o "$OUT/event_loop.tmp"
build event_loop_ref "$T/event_loop.c $HEADER" gcc $CFLAGS -DREF_ABI -static -I"$GUEST" "$T/event_loop.c" -o "$OUT/event_loop_ref.tmp"
# pair OUT_REQUEST OUT_STORAGE REQUEST_SRC STORAGE_SRC SYMBOLS FLAGS...: a two-binary program
# with remote storage calls: the storage program linked at 0x40200000, the request program
# linked with --just-symbols of its SYMBOLS (a glob) only (docs/DESIGN.md).
pair() {
	local req=$1 stor=$2 rsrc=$3 ssrc=$4 syms=$5
	shift 5
	gcc "$@" -static -I"$GUEST" -Wl,-Ttext-segment=0x40200000 "$ssrc" -o "$stor.tmp" &&
		objcopy -w --extract-symbol --strip-all --keep-symbol="$syms" "$stor.tmp" "$stor.syms" &&
		gcc "$@" -static -I"$GUEST" "$rsrc" -Wl,--just-symbols="$stor.syms" -o "$req.tmp" &&
		mv -f "$stor.tmp" "$stor" && rm -f "$stor.syms"
}
# shellcheck disable=SC2086
build remote_request "$T/remote_request.c $T/remote_storage.c $HEADER" \
	pair "$OUT/remote_request" "$OUT/remote_storage" "$T/remote_request.c" "$T/remote_storage.c" 'rs_*' $CFLAGS
build api_multi "$T/api/multi_a.c $T/api/multi_b.c $HEADER" \
	gcc $CFLAGS -static -I"$GUEST" "$T/api/multi_a.c" "$T/api/multi_b.c" -o "$OUT/api_multi.tmp"

# --- C, musl --------------------------------------------------------------
if ! skipped musl; then
	build hello_musl "$T/hello.c" musl-gcc $CFLAGS -static -DEDGEVM_MUSL "$T/hello.c" -o "$OUT/hello_musl.tmp"
	build vdso_musl "$T/vdso.c $HEADER" musl-gcc $CFLAGS -static -I"$GUEST" "$T/vdso.c" -o "$OUT/vdso_musl.tmp"
	build syscalls_musl "$T/syscalls.c" musl-gcc $CFLAGS -static -DEDGEVM_MUSL "$T/syscalls.c" -o "$OUT/syscalls_musl.tmp"
	build output_musl "$T/output.c $HEADER" musl-gcc $CFLAGS -static -I"$GUEST" "$T/output.c" -o "$OUT/output_musl.tmp"
	build files_musl "$T/files.c $HEADER" musl-gcc $CFLAGS -static -I"$GUEST" "$T/files.c" -o "$OUT/files_musl.tmp"
	build state_file_musl "$T/state_file.c $HEADER" musl-gcc $CFLAGS -static -I"$GUEST" "$T/state_file.c" -o "$OUT/state_file_musl.tmp"
	build dynamic_musl "$T/interp.c" musl-gcc $CFLAGS "$T/interp.c" -Wl,-dynamic-linker,/lib/ld-musl-x86_64.so.1 -o "$OUT/dynamic_musl.tmp"
fi

# --- C++ ------------------------------------------------------------------
if ! skipped cpp; then
	build hello_cpp "$T/hello.cpp" g++ $CXXFLAGS -static "$T/hello.cpp" -o "$OUT/hello_cpp.tmp"
	build api_cpp "$T/api/api_cpp.cpp $HEADER" g++ $CXXFLAGS -static -I"$GUEST" "$T/api/api_cpp.cpp" -o "$OUT/api_cpp.tmp"
	build event_loop_cpp "$T/event_loop.cpp $HEADER" g++ $CXXFLAGS -static -I"$GUEST" "$T/event_loop.cpp" -o "$OUT/event_loop_cpp.tmp"
fi

# --- Rust (single file) ---------------------------------------------------
if ! skipped rust; then
	build hello_rust "$T/hello.rs" rustc -O --edition 2021 -C target-feature=+crt-static \
		--target x86_64-unknown-linux-gnu "$T/hello.rs" -o "$OUT/hello_rust.tmp"
	build threads_rust "$T/threads.rs" rustc -O --edition 2021 -C target-feature=+crt-static \
		--target x86_64-unknown-linux-gnu "$T/threads.rs" -o "$OUT/threads_rust.tmp"
	build vdso_rust "$T/vdso_rust.rs" rustc -O --edition 2021 -C target-feature=+crt-static \
		--target x86_64-unknown-linux-gnu "$T/vdso_rust.rs" -o "$OUT/vdso_rust.tmp"
	build state_file_rust "$T/state_file.rs" rustc -O --edition 2021 -C target-feature=+crt-static \
		--target x86_64-unknown-linux-gnu "$T/state_file.rs" -o "$OUT/state_file_rust.tmp"
fi

# --- Examples -------------------------------------------------------------
for ex in hello counter scounter echo headers fetch storage_fetch stream; do
	build "example_$ex" "$E/$ex.c $HEADER" gcc $EXFLAGS -static -I"$GUEST" "$E/$ex.c" -o "$OUT/example_$ex.tmp"
done
# getaddrinfo in a static program: glibc's files and dns modules are built in (the linker's
# warning about shared NSS libraries does not apply to them).
build example_lineserver "$E/lineserver.c $HEADER" gcc $EXFLAGS -static -I"$GUEST" "$E/lineserver.c" \
	-o "$OUT/example_lineserver.tmp"
build example_wschat "$E/wschat.c $HEADER" gcc $EXFLAGS -static -I"$GUEST" "$E/wschat.c" \
	-o "$OUT/example_wschat.tmp"
build example_linedb "$E/linedb.c $HEADER" gcc $EXFLAGS -static -I"$GUEST" "$E/linedb.c" \
	-o "$OUT/example_linedb.tmp" -Wl,--no-warnings
if ! skipped cpp; then
	build example_fetch_cpp "$E/fetch.cpp $HEADER" g++ $CXXFLAGS -static -I"$GUEST" "$E/fetch.cpp" -o "$OUT/example_fetch_cpp.tmp"
fi

build dynamic "$T/dynamic.c $HEADER" gcc $CFLAGS -I"$GUEST" "$T/dynamic.c" -o "$OUT/dynamic.tmp"
build bad_interp "$T/interp.c" gcc $CFLAGS "$T/interp.c" -Wl,--dynamic-linker=/etc/passwd -o "$OUT/bad_interp.tmp"
# shellcheck disable=SC2086
build example_remote "$E/remote.c $E/remote_storage.c $HEADER" \
	pair "$OUT/example_remote" "$OUT/example_remote_storage" "$E/remote.c" "$E/remote_storage.c" 'remote_*' $EXFLAGS
build example_datatree "$E/datatree.c $HEADER" gcc $EXFLAGS -static -I"$GUEST" "$E/datatree.c" -o "$OUT/example_datatree.tmp"
# Real runtimes (Debian's static libraries; the linker's notes about getpwnam & co. in static
# programs are silenced: those calls are not used).
LUA_INC=/usr/include/lua5.4
build example_lua "$E/lua.c $HEADER" gcc $EXFLAGS -static -I"$GUEST" -I"$LUA_INC" "$E/lua.c" \
	-o "$OUT/example_lua.tmp" -Wl,--no-warnings -llua5.4 -lm
PYCFG=/usr/lib/python3.11/config-3.11-x86_64-linux-gnu
build example_python "$E/python.c $HEADER" gcc $EXFLAGS -static -I"$GUEST" -I/usr/include/python3.11 \
	"$E/python.c" -o "$OUT/example_python.tmp" -Wl,--no-warnings "$PYCFG/libpython3.11.a" -lexpat -lz -lm

FAILED=0
for i in "${!PIDS[@]}"; do
	if ! wait "${PIDS[$i]}"; then
		echo "build.sh: FAILED: ${NAMES[$i]}" >&2
		cat "$LOGDIR/${NAMES[$i]}.log" >&2
		FAILED=1
	elif [ -s "$LOGDIR/${NAMES[$i]}.log" ]; then
		echo "--- ${NAMES[$i]} (warnings):" >&2
		cat "$LOGDIR/${NAMES[$i]}.log" >&2
	fi
done
[ "$FAILED" -eq 0 ] || exit 1

# --- Rust guest crate (cargo does its own up-to-date checks) ---------------
if ! skipped rust; then
	CRATE="$GUEST/rust/edgevm-guest"
	RT="$OUT/.cargo-target"
	BIN="$RT/x86_64-unknown-linux-gnu/release/hello_http"
	ABI="$GUEST/../crates/edgevm-guest-abi"
	if ! up_to_date "$OUT/rust_hello_http" "$GUEST/build.sh" $(find "$CRATE/src" "$CRATE/Cargo.toml" "$ABI/src" "$ABI/Cargo.toml" -type f) \
		|| ! up_to_date "$OUT/rust_event_loop" "$GUEST/build.sh" $(find "$CRATE/src" "$CRATE/Cargo.toml" "$ABI/src" "$ABI/Cargo.toml" -type f) \
		|| ! up_to_date "$OUT/rust_smp" "$GUEST/build.sh" $(find "$CRATE/src" "$CRATE/Cargo.toml" "$ABI/src" "$ABI/Cargo.toml" -type f); then
		( cd "$CRATE" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$RT" \
			cargo build --quiet --offline --release --target x86_64-unknown-linux-gnu --bin hello_http --bin event_loop --bin smp ) || {
			echo "build.sh: FAILED: rust_hello_http (cargo build)" >&2
			exit 1
		}
		cp -f "$BIN" "$OUT/rust_hello_http"
		cp -f "$RT/x86_64-unknown-linux-gnu/release/event_loop" "$OUT/rust_event_loop"
		cp -f "$RT/x86_64-unknown-linux-gnu/release/smp" "$OUT/rust_smp"
		BUILT=$((BUILT + 1))
	else
		FRESH=$((FRESH + 1))
	fi
fi

# --- Rust examples with crates from crates.io (their own Cargo.lock; cargo caches under $OUT) ---
# cargo_example NAME DIR WHAT: build guest/examples/DIR's binary NAME into $OUT/NAME.
cargo_example() {
	local name=$1 dir="$GUEST/examples/$2" what=$3 tdir="$OUT/.cargo-$2"
	if ! up_to_date "$OUT/$name" "$GUEST/build.sh" $(find "$dir/src" "$dir/Cargo.toml" "$dir/Cargo.lock" \
		"$GUEST/rust/edgevm-guest/src" "$GUEST/rust/edgevm-guest/Cargo.toml" -type f); then
		( cd "$dir" && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$tdir" \
			cargo build --quiet --locked --release --target x86_64-unknown-linux-gnu ) || {
			echo "build.sh: FAILED: $name (cargo build; the first build downloads $what from crates.io)" >&2
			exit 1
		}
		cp -f "$tdir/x86_64-unknown-linux-gnu/release/$name" "$OUT/$name"
		BUILT=$((BUILT + 1))
	else
		FRESH=$((FRESH + 1))
	fi
}
if ! skipped rust && ! skipped quickjs; then
	cargo_example example_quickjs quickjs rquickjs
fi
if ! skipped rust; then
	cargo_example example_tokio tokio tokio
fi

# --- Go (Debian's golang-go; the build cache and module cache live under $OUT) ---
if ! skipped go; then
	need go golang-go
	GOSRC="$GUEST/examples/go"
	if ! up_to_date "$OUT/example_goserve" "$GUEST/build.sh" $(find "$GOSRC" "$GUEST/go" -type f); then
		( cd "$GOSRC" && CGO_ENABLED=0 GOCACHE="$OUT/.go-cache" GOPATH="$OUT/.go-path" \
			GOPROXY=off GOFLAGS=-mod=mod go build -trimpath -o "$OUT/example_goserve.tmp" . ) \
			>"$LOGDIR/example_goserve.log" 2>&1 || {
			cat "$LOGDIR/example_goserve.log" >&2
			echo "build.sh: FAILED: example_goserve (go build)" >&2
			exit 1
		}
		mv -f "$OUT/example_goserve.tmp" "$OUT/example_goserve"
		BUILT=$((BUILT + 1))
	else
		FRESH=$((FRESH + 1))
	fi
fi

echo "build.sh: $BUILT built, $FRESH up to date -> $OUT"
