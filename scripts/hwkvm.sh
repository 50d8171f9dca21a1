#!/usr/bin/env bash
# scripts/hwkvm.sh [--cpu MODEL]... [--timeout SECONDS] [TEST_FILTER...]
#
# Runs edgevm's integration tests on real KVM code with hardware (SVM) semantics on a machine
# whose own /dev/kvm is not hardware KVM: QEMU in software emulation (TCG) with an emulated AMD
# CPU that has SVM boots Debian's kernel, loads kvm_amd (nested paging), and runs the test
# binary inside, one VM per CPU model. There SYSCALL enters CPL0 and KVM_SET_XCRS /
# KVM_SET_CPUID2 take effect: the paths kvm_pvm never exercises. Timings mean nothing there
# (one request takes milliseconds); exits and behaviour do.
#
# Default models: EPYC (Zen 1: AVX2, no protection keys) and EPYC-Milan (Zen 3: protection
# keys). Default tests: the list below (the checks that matter on any KVM). Results: each
# test's libtest line, then one "test result:" line per model; exit status 1 if any model
# failed or did not finish. Downloads (Debian packages only) and builds are cached in
# target/hwkvm. docs/DESIGN.md ("Verified on hardware KVM") says what this covers.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/target/hwkvm
models=()
filters=()
timeout_s=900
while [ $# -gt 0 ]; do
	case "$1" in
	--cpu) models+=("$2"); shift 2 ;;
	--timeout) timeout_s=$2; shift 2 ;;
	-h|--help) sed -n '2,16p' "$0"; exit 0 ;;
	*) filters+=("$1"); shift ;;
	esac
done
[ ${#models[@]} -gt 0 ] || models=(EPYC EPYC-Milan)
if [ ${#filters[@]} -eq 0 ]; then
	filters=(
		cpu::                                      # SYSCALL at CPL0, XCR0, CPUID as seen
		run_cmd::hello_world_from_every_toolchain  # C, musl, C++, Rust
		run_cmd::syscalls_glibc_all_ok run_cmd::syscalls_musl_all_ok
		run_cmd::wait_guest_reports_ready_and_init_time
		run_limits::crash_                         # crash reports
		serve::vector_registers_do_not_leak_between_requests  # FPU/AVX isolation
		serve::nothing_a_hostile_request_does_reaches_the_next_one  # FS/GS, registers
		serve::every_request_sees_the_frozen_state
		serve::failing_requests_give_500_and_the_vm_recovers  # timeouts, CPL0 stubs
		serve::exits_per_request_of_hello
		serve::storage_counter_and_shared_memory_counter_count
		serve::on_error_handler_answers_after_a_crash
		event_loop::ephemeral_event_loops_restart_from_the_paused_point  # resume trampoline
		storage::storage_calls_copy_buffers_and_results_as_the_reference
		remote::remote_calls_take_scalar_arguments_and_keep_storage_state  # remote storage calls: the fault into the range, back to user mode
		remote::remote_call_failures_fail_the_request_and_storage_keeps_serving
		storage::shared_memory_is_at_the_top_and_shared_by_every_request_vm
		inline::a_looping_request_does_not_hold_the_http_worker  # preemption
		stream::hostile_and_stalling_streams_are_cut_short_and_the_next_request_is_served  # streaming callbacks entered directly, crashing in them
		threads::signal_handlers_run_with_masks_alternate_stacks_and_sigreturn  # thread switches and signal frames from the CPL0 stub
		faults::cpu_faults_run_the_programs_handlers_with_siginfo_and_ucontext  # exception stub to a handler in user mode
		# Not faults::timers_deliver_their_signals_bounded_and_not_across_requests: its 1-2 ms
		# periods are shorter than one signal round trip under TCG, so handlers starve the
		# program there; alarm() delivery passed, the entry paths are the faults test's.
		# Not golang::a_go_program_serves_requests_with_goroutines_channels_and_timers: on
		# EPYC-Milan its /nilptr request failed 4 of 12 runs (SIGSEGV at runtime.usleep, with
		# and without the vDSO; the fault seems delivered on the sleeping sysmon thread under
		# TCG): an open bug, run it by name.
		# Not threads::a_pthreads_worker_pool_frozen_with_the_program_serves_every_request: it
		# passed 4 of 5 runs under TCG (one failure, reason not captured); run it by name.
		hostile::a_request_finds_no_secret_of_the_previous_one
		snapshot::snapshot_dir_serves_every_program_and_skips_storage  # CPU state from a file
		# Not hostile::hostile_programs_are_contained_next_to_a_loaded_program: its catalog of
		# privileged instructions meets QEMU TCG's own quirks (reserved MXCSR bits load without
		# #GP, ICEBP is #UD), which real CPUs and KVM do not share.
		wx::                                       # W^X: the page-table routine from CPL0 and CPL3
		snapshot::a_snapshot_start_keeps_the_page_protections  # W^X from a snapshot file
		smp::workers_run_on_extra_vcpus_over_the_same_memory  # extra vCPUs: entry stub, CPL0 sched_yield, clone
		mapped_files::read_only_file_mappings_share  # mmap_backed_files: memfd pages under the memory slot, copy-on-write by KVM write faults
		vdso::                                     # guest TSC = host TSC (offset 0), the ROM slot, time without exits
		bench::exits_per_request_do_not_rise_above_the_record
	)
fi

need=()
for p in qemu-system-x86 busybox-static cpio; do
	dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "hwkvm: installing ${need[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Debian's current kernel with kvm_amd, once.
KDIR=$CACHE/kernel
if [ ! -e "$KDIR/vmlinuz" ]; then
	pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
	[ -n "$pkg" ] || { apt-get update -qq; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'); }
	echo "hwkvm: downloading $pkg" >&2
	rm -rf "$CACHE/dl" && mkdir -p "$CACHE/dl" "$KDIR"
	(cd "$CACHE/dl" && apt-get download -q "$pkg" >/dev/null 2>&1 && dpkg-deb -x ./*.deb x)
	mkdir -p "$KDIR/modules"
	for m in virt/lib/irqbypass arch/x86/kvm/kvm drivers/crypto/ccp/ccp arch/x86/kvm/kvm-amd; do
		f=$(find "$CACHE/dl/x/lib/modules" -path "*/kernel/$m.ko*" | head -1)
		[ -n "$f" ] || { echo "hwkvm: module $m not in $pkg" >&2; exit 1; }
		case "$f" in
		*.xz) xz -dc "$f" >"$KDIR/modules/$(basename "$m").ko" ;;
		*.zst) zstd -qdc "$f" >"$KDIR/modules/$(basename "$m").ko" ;;
		*) cp "$f" "$KDIR/modules/$(basename "$m").ko" ;;
		esac
	done
	cp "$CACHE"/dl/x/boot/vmlinuz-* "$KDIR/vmlinuz.tmp" && mv "$KDIR/vmlinuz.tmp" "$KDIR/vmlinuz"
	rm -rf "$CACHE/dl"
fi

# What runs inside: edgevm, the integration-test binary, the guests, the QEMU-only TSS shim.
export EDGEVM_GUESTS=${EDGEVM_GUESTS:-$ROOT/target/guests}
guest/build.sh "$EDGEVM_GUESTS" >/dev/null
cargo build -q -p edgevm
tests_bin=$(cargo test -q -p edgevm --test all --no-run --message-format=json 2>/dev/null |
	python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "all" and m.get("executable"):
        print(m["executable"])' | tail -1)
[ -x "$tests_bin" ] || { echo "hwkvm: test binary not found" >&2; exit 1; }
mkdir -p "$CACHE"
gcc -shared -fPIC -O2 -Wall -o "$CACHE/tss_available.so" scripts/hwkvm/tss_available.c -ldl

R=$CACHE/root
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,usr/bin,proc,sys,dev,tmp,etc,hwkvm/modules,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list); do
	[ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"
done
cp "$ROOT/scripts/hwkvm/init" "$R/init"
cp "$KDIR"/modules/*.ko "$R/hwkvm/modules/"
cp "$CACHE/tss_available.so" "$R/hwkvm/"
# The test binary finds edgevm, the guests and the repository by their absolute build paths.
mkdir -p "$R$ROOT/target/debug" "$R$ROOT/crates/edgevm" "$R$EDGEVM_GUESTS" "$R$ROOT/target/test-scratch"
strip --strip-debug -o "$R$ROOT/target/debug/edgevm" target/debug/edgevm
strip --strip-debug -o "$R/hwkvm/all" "$tests_bin"
cp -r "$EDGEVM_GUESTS"/. "$R$EDGEVM_GUESTS/"
# Debug info off the guests (symbols stay: crash reports name functions); less to unpack.
# Not off `debug` and `hello_pie`: the debug:: tests read their variables and arguments with GDB.
find "$R$EDGEVM_GUESTS" -maxdepth 1 -type f -perm -u+x ! -name debug ! -name hello_pie -exec strip --strip-debug {} + 2>/dev/null || true
cp -r "$ROOT/bench" "$ROOT/config" "$R$ROOT/"
cp -r "$ROOT/guest" "$R$ROOT/guest"
rm -rf "$R$ROOT/guest/rust/"*/target
# GDB for the debug:: tests (not in the default list): Debian's gdb-minimal, no Python, so
# its shared libraries are all it needs. Downloaded once.
extra=()
if printf '%s\n' "${filters[@]}" | grep -q '^debug::'; then
	if [ ! -x "$CACHE/gdb/usr/bin/gdb" ]; then
		rm -rf "$CACHE/gdbdl" && mkdir -p "$CACHE/gdbdl"
		(cd "$CACHE/gdbdl" && apt-get download -q gdb-minimal >/dev/null 2>&1 && dpkg-deb -x ./*.deb "$CACHE/gdb")
		rm -rf "$CACHE/gdbdl"
	fi
	cp "$CACHE/gdb/usr/bin/gdb" "$R/usr/bin/gdb"
	extra+=("$CACHE/gdb/usr/bin/gdb")
fi
for f in $(ldd target/debug/edgevm "$tests_bin" "$CACHE/tss_available.so" "${extra[@]}" | awk '/=> \// { print $3 } /^[ \t]*\/lib64\// { print $1 }' | sort -u); do
	cp -L "$f" "$R$f"
done
cat >"$R/hwkvm/env" <<EOV
export EDGEVM_GUESTS=$EDGEVM_GUESTS
export EDGEVM_GUESTS_PREBUILT=1
export LD_PRELOAD=/hwkvm/tss_available.so
export HWKVM_TESTS_BIN=/hwkvm/all
export HOME=/tmp
export RUST_BACKTRACE=1
export NO_COLOR=1
# Limits of tests that must leave room for legitimate work, scaled for emulation.
export EDGEVM_TEST_TIME_SCALE=4
# QEMU's TCG never claims an invariant TSC: offer the vDSO anyway, so its TSC offset and time
# page run on real KVM code. The kernel is booted with tsc=reliable clocksource=tsc (TCG's TSC
# follows the host's clock): a kernel that marks its TSC unstable makes KVM rewrite guests' TSC
# offsets at every vCPU load, which edgevm's probe then detects (no vDSO), as it should.
export EDGEVM_VDSO=force
EOV
printf '%s\n' "${filters[@]}" >"$R/hwkvm/tests"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) >"$CACHE/initrd.cpio.gz"

failed=0
for model in "${models[@]}"; do
	log=$CACHE/$model.log
	echo "hwkvm: $model: booting (QEMU TCG, emulated SVM, timeout ${timeout_s}s)" >&2
	start=$(date +%s)
	timeout "$timeout_s" qemu-system-x86_64 -accel tcg -cpu "$model,+svm" -m 3072 -smp 1 \
		-kernel "$KDIR/vmlinuz" -initrd "$CACHE/initrd.cpio.gz" \
		-append 'console=ttyS0 panic=-1 quiet tsc=reliable clocksource=tsc' -nographic -no-reboot -monitor none \
		-serial stdio -display none </dev/null >"$log" 2>&1 || true
	secs=$(($(date +%s) - start))
	tr -d '\r' <"$log" | grep -o 'HWKVM: .*' | sed "s/^/[$model] /" >&2 || true
	body=$(tr -d '\r' <"$log" | sed -n '/^HWKVM-BEGIN/,/^HWKVM-END/p')
	printf '%s\n' "$body" | grep -E '^test .* \.\.\. |^test result:|panicked|^---- ' |
		sed "s/^test \(.* \.\.\. \)/test [$model] \1/" || true
	if ! printf '%s\n' "$body" | grep -q '^HWKVM-END status=0$'; then
		echo "hwkvm: $model: FAILED after ${secs}s (log: $log)" >&2
		tail -40 "$log" | tr -d '\r' >&2
		failed=1
	elif ! printf '%s\n' "$body" | grep -qE '^test result: ok\. [1-9]'; then
		echo "hwkvm: $model: no test ran (log: $log)" >&2
		failed=1
	else
		echo "hwkvm: $model: passed in ${secs}s" >&2
	fi
done
exit $failed
