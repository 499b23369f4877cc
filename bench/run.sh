#!/usr/bin/env bash
# OVS benchmark: fio against OVS and well-known alternatives, in one run on
# one machine, reported as ratios (absolute figures swing with machine load).
#
# Targets, each served over a unix socket and measured with fio's nbd
# ioengine (libnbd; no client-side cache, so every I/O is an NBD request):
#   null   nbdkit null plugin: the protocol's ceiling (no storage at all)
#   file   nbdkit file plugin on a preallocated (fallocate) raw file
#   qcow2  qemu-nbd serving a fresh qcow2 (default 64 KiB clusters, no
#          preallocation), --cache=writeback --aio=threads (qemu-nbd's
#          defaults: the page cache, like nbdkit's file plugin), -t
#   ovs    an OVS vdisk on `ovs up`, defaults
# nbdkit and qemu-nbd get the same size; every server uses the host page
# cache and none of the workloads sends a flush, so all are compared on
# the same terms.
#
# Workloads (time based, BENCH_RUNTIME s after BENCH_RAMP s of ramp):
#   4 KiB random write, QD32, over the whole device
#   4 KiB random read, QD32, over the first BENCH_READ_GIB GiB, which is
#       written (1 MiB sequential) before, so that reads hit data
#   4 KiB random write, QD1: IOPS and completion latency p50/p99
#   1 MiB sequential write, QD8
# Then memory: a fresh `ovs up`, a 1 TiB vdisk, 4 GiB of 4 KiB random
# writes; VmRSS and VmHWM of the ovs process from /proc.
#
# Environment:
#   OVS_BIN          use this ovs binary instead of building bin/ovs
#   BENCH_RUNTIME    seconds per workload (default 20)
#   BENCH_RAMP       ramp seconds per workload (default 3)
#   BENCH_SIZE_GIB   device size (default 16, or 4 if less than 64 GiB free)
#   BENCH_READ_GIB   random read region (default 1)
#   BENCH_RSS_IO_GIB data written for the memory figure (default 4)
#   BENCH_TARGETS    subset of "null file qcow2 ovs ovsec ecbeyond rss" (default all)
#   BENCH_BEYOND_WB_MIB  write buffer of the ecbeyond target (default 256)
#   BENCH_TMPDIR     where the scratch files go (default /var/tmp)
#   BENCH_RESULTS    the report (default bench/results.md)
#
# Targets checked (reported MET/MISSED, never failing the run):
#   ovs 4k randwrite IOPS >= 0.8x nbdkit-file and >= 2x qemu-nbd-qcow2
#   ovs 4k randread IOPS  >= 0.8x nbdkit-file
#   ovs 1M seq write      >= 0.9x nbdkit-file
#   ovs VmRSS and VmHWM   <= 256 MiB with a 1 TiB vdisk after 4 GiB of writes
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

RUNTIME=${BENCH_RUNTIME:-20}
RAMP=${BENCH_RAMP:-3}
READ_GIB=${BENCH_READ_GIB:-1}
RSS_IO_GIB=${BENCH_RSS_IO_GIB:-4}
TARGETS=${BENCH_TARGETS:-null file qcow2 ovs ovsec ecbeyond rss}
BEYOND_WB_MIB=${BENCH_BEYOND_WB_MIB:-256}
TMPBASE=${BENCH_TMPDIR:-/var/tmp}
RESULTS=${BENCH_RESULTS:-$ROOT/bench/results.md}
RSS_LIMIT_MIB=256
PY=python3

log() { printf '%s bench: %s\n' "$(date +%T)" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}
want() { [[ " $TARGETS " == *" $1 "* ]]; }

for tool in fio nbdkit qemu-img qemu-nbd nbdinfo "$PY" fallocate; do
	command -v "$tool" >/dev/null || die "$tool not found (run make deps)"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd ioengine"

# --- scratch space, servers, cleanup ------------------------------------------

mkdir -p "$TMPBASE"
WORK=$(mktemp -d "$TMPBASE/ovs-bench.XXXXXX")
SERVER_PID=

# stop_server PID: SIGTERM to its process group, SIGKILL after 30 s.
stop_server() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		log "pid $pid ignored SIGTERM for 30 s; killing it"
	fi
	kill -KILL -- "-$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_server "$SERVER_PID"
	SERVER_PID=
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server LOG CMD...: run CMD in its own session (so its whole process
# tree can be stopped) and set SERVER_PID. Only one server runs at a time.
start_server() {
	local logf=$1
	shift
	setsid "$@" >"$logf" 2>&1 &
	SERVER_PID=$!
}

# wait_nbd URI: until an NBD client can connect (30 s).
wait_nbd() {
	local i
	for ((i = 0; i < 300; i++)); do
		nbdinfo --size "$1" >/dev/null 2>&1 && return 0
		kill -0 "$SERVER_PID" 2>/dev/null || return 1
		sleep 0.1
	done
	return 1
}

free_ports() {
	"$PY" -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))'
}

# --- the device size -------------------------------------------------------------

avail_gib=$(($(df -Pk "$WORK" | awk 'NR==2 {print $4}') / 1024 / 1024))
if [ -n "${BENCH_SIZE_GIB:-}" ]; then
	SIZE_GIB=$BENCH_SIZE_GIB
elif [ "$avail_gib" -ge 64 ]; then
	SIZE_GIB=16
else
	SIZE_GIB=4
fi
log "device size ${SIZE_GIB} GiB (${avail_gib} GiB free in $TMPBASE), ${RUNTIME} s per workload"
[ "$avail_gib" -ge $((SIZE_GIB + 8)) ] || log "warning: little free space for ${SIZE_GIB} GiB devices"

# The memory state at the start goes in the report: in a VM that hands
# freed memory back to its host, every page the page cache grows into is
# a host fault while memory is free, and the write rows (ovs writes each
# byte into the page cache 2.5 times, nbdkit-file once) move with it.
MEM_AT_START=$(awk '/^MemFree:/ {f = $2} /^Cached:/ {c = $2}
	END {printf "%.1f GiB free, %.1f GiB page cache", f / 1048576, c / 1048576}' /proc/meminfo)

# --- ovs -------------------------------------------------------------------------

if want ovs || want ovsec || want ecbeyond || want rss; then
	if [ -n "${OVS_BIN:-}" ]; then
		OVS=$(cd "$(dirname "$OVS_BIN")" && pwd)/$(basename "$OVS_BIN")
	else
		log "building bin/ovs"
		go build -o bin/ovs ./cmd/ovs
		OVS=$ROOT/bin/ovs
	fi
fi
OVS_API=

# start_ovs DIR [ARGS...]: `ovs up` on free ports with the NBD socket
# DIR.sock and extra ARGS; sets OVS_API, OVS_SOCK and OVS_ISCSI.
start_ovs() {
	local dir=$1 ports i
	shift
	read -r -a ports <<<"$(free_ports)"
	OVS_API=http://127.0.0.1:${ports[0]}
	OVS_ISCSI=127.0.0.1:${ports[4]}
	OVS_SOCK=$dir.sock
	start_server "$dir.log" "$OVS" up --data "$dir" --api "127.0.0.1:${ports[0]}" \
		--nbd "127.0.0.1:${ports[1]}" --nbd-socket "$OVS_SOCK" --iscsi "$OVS_ISCSI" \
		--arakoon-client "127.0.0.1:${ports[2]}" --arakoon-raft "127.0.0.1:${ports[3]}" "$@"
	for ((i = 0; i < 900; i++)); do
		if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
			"$OVS_API/api/v1/health" 2>/dev/null; then
			return 0
		fi
		kill -0 "$SERVER_PID" 2>/dev/null || break
		sleep 0.1
	done
	log "ovs up did not become ready; its log:"
	tail -n 40 "$dir.log" >&2 || true
	return 1
}

ovs_cli() { OVS_API=$OVS_API "$OVS" "$@"; }

# --- fio -------------------------------------------------------------------------

declare -A R # R[target.figure] = value

# fio_run TARGET TAG URI RW FIELD ARGS...: run one fio job, store
# R[TARGET.TAG.{iops,bw,p50,p99}] or n/a.
fio_run() {
	local target=$1 tag=$2 uri=$3 rw=$4 field=$5 out figures
	shift 5
	out=$WORK/$target.$tag.json
	# Start every workload with no dirty page cache left by the one before.
	sync
	log "$target: $tag"
	if (cd "$WORK" && fio --name="$target-$tag" --ioengine=nbd --uri="$uri" \
		--direct=1 --rw="$rw" --output-format=json --output="$out" "$@") >"$out.err" 2>&1 &&
		figures=$("$PY" "$ROOT/bench/fiojson.py" "$out" "$field" 2>>"$out.err"); then
		read -r "R[$target.$tag.iops]" "R[$target.$tag.bw]" \
			"R[$target.$tag.p50]" "R[$target.$tag.p99]" <<<"$figures"
	else
		log "$target: $tag failed:"
		cat "$out.err" >&2
		R[$target.$tag.iops]=n/a R[$target.$tag.bw]=n/a
		R[$target.$tag.p50]=n/a R[$target.$tag.p99]=n/a
	fi
}

timed=(--time_based "--runtime=$RUNTIME" "--ramp_time=$RAMP" --randrepeat=0 --norandommap)

# bench_target TARGET URI [--null]: the workloads against one server.
bench_target() {
	local t=$1 uri=$2 size=${SIZE_GIB}g
	if [ "${3:-}" = --null ]; then
		fio_run "$t" randwrite "$uri" randwrite write --bs=4k --iodepth=32 --size="$size" "${timed[@]}"
		fio_run "$t" randread "$uri" randread read --bs=4k --iodepth=32 --size="$size" "${timed[@]}"
		return
	fi
	fio_run "$t" prefill "$uri" write write --bs=1m --iodepth=8 --size="${READ_GIB}g"
	fio_run "$t" randwrite "$uri" randwrite write --bs=4k --iodepth=32 --size="$size" "${timed[@]}"
	fio_run "$t" randread "$uri" randread read --bs=4k --iodepth=32 --size="${READ_GIB}g" "${timed[@]}"
	fio_run "$t" qd1 "$uri" randwrite write --bs=4k --iodepth=1 --size="$size" "${timed[@]}"
	fio_run "$t" seqwrite "$uri" write write --bs=1m --iodepth=8 --size="$size" "${timed[@]}"
}

mark_failed() {
	local t=$1 tag f
	for tag in randwrite randread qd1 seqwrite; do
		for f in iops bw p50 p99; do R[$t.$tag.$f]=n/a; done
	done
}

OVS_FAILED=0
declare -A CMDLINE

if want null; then
	CMDLINE[null]="nbdkit -f -U SOCK null size=${SIZE_GIB}G"
	start_server "$WORK/null.log" nbdkit -f -U "$WORK/null.sock" null size="${SIZE_GIB}G"
	if wait_nbd "nbd+unix:///?socket=$WORK/null.sock"; then
		bench_target null "nbd+unix:///?socket=$WORK/null.sock" --null
	else
		log "nbdkit null did not start"
		mark_failed null
	fi
	stop_server "$SERVER_PID"
	SERVER_PID=
fi

if want file; then
	CMDLINE[file]="fallocate -l ${SIZE_GIB}G FILE; nbdkit -f -U SOCK file file=FILE"
	fallocate -l "${SIZE_GIB}G" "$WORK/file.img"
	start_server "$WORK/file.log" nbdkit -f -U "$WORK/file.sock" file file="$WORK/file.img"
	if wait_nbd "nbd+unix:///?socket=$WORK/file.sock"; then
		bench_target file "nbd+unix:///?socket=$WORK/file.sock"
		# The reference for ecbeyond's first (cold) pass.
		if want ecbeyond; then
			fio_run file seqread "nbd+unix:///?socket=$WORK/file.sock" read read --bs=1m --iodepth=8 --size="${READ_GIB}g"
		fi
	else
		log "nbdkit file did not start"
		mark_failed file
	fi
	stop_server "$SERVER_PID"
	SERVER_PID=
	rm -f "$WORK/file.img"
fi

if want qcow2; then
	CMDLINE[qcow2]="qemu-img create -f qcow2 FILE ${SIZE_GIB}G; qemu-nbd -t -k SOCK -x bench -f qcow2 --cache=writeback --aio=threads --shared=8 FILE"
	qemu-img create -q -f qcow2 "$WORK/q.qcow2" "${SIZE_GIB}G"
	start_server "$WORK/qcow2.log" qemu-nbd -t -k "$WORK/q.sock" -x bench -f qcow2 \
		--cache=writeback --aio=threads --shared=8 "$WORK/q.qcow2"
	if wait_nbd "nbd+unix:///bench?socket=$WORK/q.sock"; then
		bench_target qcow2 "nbd+unix:///bench?socket=$WORK/q.sock"
	else
		log "qemu-nbd did not start"
		mark_failed qcow2
	fi
	stop_server "$SERVER_PID"
	SERVER_PID=
	rm -f "$WORK/q.qcow2"
fi

# ovs is measured on the local-directory backend (the engine against the
# other servers) and, as ovsec, on its default erasure-coded backend
# (4+2 over 6 ASD processes on this same machine and disk).
if want ovs; then
	CMDLINE[ovs]="ovs up --backend local --data DIR --nbd-socket SOCK; ovs vdisk create bench --size ${SIZE_GIB}GiB"
	if start_ovs "$WORK/ovs" --backend local && ovs_cli vdisk create bench --size "${SIZE_GIB}GiB" >/dev/null &&
		wait_nbd "nbd+unix:///bench?socket=$OVS_SOCK"; then
		bench_target ovs "nbd+unix:///bench?socket=$OVS_SOCK"
	else
		log "ovs did not start"
		mark_failed ovs
		OVS_FAILED=1
	fi
	stop_server "$SERVER_PID"
	SERVER_PID=
	rm -rf "$WORK/ovs"
fi

if want ovsec; then
	CMDLINE[ovsec]="ovs up --data DIR --nbd-socket SOCK (erasure-coded 4+2 backend, 6 ASDs); ovs vdisk create bench --size ${SIZE_GIB}GiB"
	if start_ovs "$WORK/ovsec" && ovs_cli vdisk create bench --size "${SIZE_GIB}GiB" >/dev/null &&
		wait_nbd "nbd+unix:///bench?socket=$OVS_SOCK"; then
		bench_target ovsec "nbd+unix:///bench?socket=$OVS_SOCK"
	else
		log "ovs (erasure-coded) did not start"
		mark_failed ovsec
	fi
	stop_server "$SERVER_PID"
	SERVER_PID=
	rm -rf "$WORK/ovsec"
fi

# Reads beyond the write buffer (issue 16): ovs up on its default
# erasure-coded backend with a write buffer of BEYOND_WB_MIB; a vdisk
# written (1 MiB sequential) over 4x that, synced, and evicted from the
# write buffer, so that every read goes past it. Then one pass of 1 MiB
# sequential reads over the range (cold data: every cluster from the ASDs;
# it also warms the disk read cache), then 4 KiB random reads at QD32 over
# the range. With the default BEYOND_WB_MIB the range is 1 GiB, the same
# as nbdkit-file's random read region.
BEYOND_STATS=n/a
# cache_stat NAME: a counter of the disk read cache (hits, misses, ...) from
# /metrics, or "all": every counter, for the report.
cache_stat() {
	"$PY" -c '
import sys, urllib.request
m = {}
for line in urllib.request.urlopen(sys.argv[1] + "/metrics", timeout=10).read().decode().splitlines():
    if line.startswith("ovs_read_cache_disk_"):
        k, v = line.split()
        m[k.replace("ovs_read_cache_disk_", "").replace("_total", "")] = float(v)
if sys.argv[2] != "all":
    print(int(m[sys.argv[2]]))
else:
    print(", ".join("%s %d" % (k, m[k]) for k in ("hits", "misses", "fills", "dropped", "rejected", "evictions", "corrupt", "bytes", "capacity_bytes") if k in m) or "no disk read cache")' "$OVS_API" "$1" 2>/dev/null || echo n/a
}
if want ecbeyond; then
	range_mib=$((4 * BEYOND_WB_MIB))
	CMDLINE[ecbeyond]="ovs up --data DIR --nbd-socket SOCK --write-buffer ${BEYOND_WB_MIB}MiB (erasure-coded 4+2, disk read cache auto); ovs vdisk create bench --size ${SIZE_GIB}GiB; ${range_mib} MiB written, synced, out of the write buffer"
	if start_ovs "$WORK/ecbeyond" --write-buffer "${BEYOND_WB_MIB}MiB" &&
		ovs_cli vdisk create bench --size "${SIZE_GIB}GiB" >/dev/null &&
		wait_nbd "nbd+unix:///bench?socket=$OVS_SOCK"; then
		uri="nbd+unix:///bench?socket=$OVS_SOCK"
		fio_run ecbeyond prefill "$uri" write write --bs=1m --iodepth=8 --size="${range_mib}m"
		ovs_cli vdisk sync bench >/dev/null || log "ecbeyond: sync failed"
		for ((i = 0; i < 600; i++)); do
			wb=$(ovs_cli vdisk info bench -o json | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["write_buffer_bytes"])')
			[ "$wb" -le $((BEYOND_WB_MIB << 20)) ] && break
			sleep 0.5
		done
		log "ecbeyond: write buffer holds $((wb >> 20)) MiB of the ${range_mib} MiB written"
		# The cold pass: every cluster beyond the write buffer from the
		# ASDs (a scan: the disk cache does not keep it).
		fio_run ecbeyond seqread "$uri" read read --bs=1m --iodepth=8 --size="${range_mib}m"
		# Cold random reads, with no ramp: the disk cache starts empty,
		# each miss fetches its 64 KiB window from an ASD. This pass is
		# also the warm-up of the next.
		miss0=$(cache_stat misses)
		fio_run ecbeyond coldrand "$uri" randread read --bs=4k --iodepth=32 --size="${range_mib}m" \
			--time_based "--runtime=$RUNTIME" --randrepeat=0 --norandommap
		miss1=$(cache_stat misses)
		R[ecbeyond.coldrand.asd]=$("$PY" -c 'import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) / float(sys.argv[3])))' "$miss0" "$miss1" "$RUNTIME" 2>/dev/null || echo n/a)
		fio_run ecbeyond randread "$uri" randread read --bs=4k --iodepth=32 --size="${range_mib}m" "${timed[@]}"
		BEYOND_STATS=$(cache_stat all)
	else
		log "ovs (ecbeyond) did not start"
		R[ecbeyond.seqread.bw]=n/a R[ecbeyond.randread.iops]=n/a R[ecbeyond.coldrand.iops]=n/a R[ecbeyond.coldrand.asd]=n/a
	fi
	stop_server "$SERVER_PID"
	SERVER_PID=
	rm -rf "$WORK/ecbeyond"
fi

# --- memory ------------------------------------------------------------------------

RSS=n/a HWM=n/a KIDS_RSS=n/a RSS_IOPS=n/a
status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; }
if want rss; then
	if start_ovs "$WORK/rss" && ovs_cli vdisk create rss --size 1TiB >/dev/null &&
		wait_nbd "nbd+unix:///rss?socket=$OVS_SOCK"; then
		fio_run ovs rss "nbd+unix:///rss?socket=$OVS_SOCK" randwrite write --bs=4k --iodepth=32 \
			--size=1t --io_size="${RSS_IO_GIB}g" --randrepeat=0 --norandommap --runtime=600
		RSS_IOPS=${R[ovs.rss.iops]}
		rss=$(status_kib "$SERVER_PID" VmRSS)
		hwm=$(status_kib "$SERVER_PID" VmHWM)
		if [ -n "$rss" ] && [ -n "$hwm" ]; then
			kids=0
			for pid in $(pgrep -s "$SERVER_PID" || true); do
				[ "$pid" = "$SERVER_PID" ] && continue
				k=$(status_kib "$pid" VmRSS)
				kids=$((kids + ${k:-0}))
			done
			RSS=$((rss / 1024)) HWM=$((hwm / 1024)) KIDS_RSS=$((kids / 1024))
		else
			log "ovs exited during the memory test"
			OVS_FAILED=1
		fi
	else
		log "ovs did not start for the memory figure"
		OVS_FAILED=1
	fi
	stop_server "$SERVER_PID"
	SERVER_PID=
	rm -rf "$WORK/rss"
fi

# --- report ------------------------------------------------------------------------

v() { echo "${R[$1]:-n/a}"; }
# ratio A B: A/B with two decimals, or n/a
ratio() {
	awk -v a="$1" -v b="$2" 'BEGIN {
		if (a == "n/a" || b == "n/a" || a == "" || b == "" || b + 0 == 0) print "n/a";
		else printf "%.2f", a / b }'
}
# check A B FACTOR: MET if A >= FACTOR * B
check() {
	awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN {
		if (a == "n/a" || b == "n/a" || a == "" || b == "") print "n/a";
		else if (a + 0 >= f * b) print "MET"; else print "MISSED" }'
}

row() { # label tag field
	local ovs file qcow2 null
	local ovsec
	null=$(v "null.$2.$3") file=$(v "file.$2.$3") qcow2=$(v "qcow2.$2.$3") ovs=$(v "ovs.$2.$3") ovsec=$(v "ovsec.$2.$3")
	[ "$2.$3" = randwrite.iops ] || [ "$2.$3" = randread.iops ] || null=-
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$ovsec" "$(ratio "$ovsec" "$file")" \
		"$ovs" "$(ratio "$ovs" "$file")" "$null" "$file" "$qcow2" "$(ratio "$ovs" "$qcow2")"
}

rss_check=n/a
if [ "$RSS" != n/a ]; then
	if [ "$RSS" -le "$RSS_LIMIT_MIB" ] && [ "$HWM" -le "$RSS_LIMIT_MIB" ]; then rss_check=MET; else rss_check=MISSED; fi
fi

commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then commit="$commit (with local changes)"; fi

{
	echo "# OVS benchmark results"
	echo
	echo "Produced by \`make bench\` (bench/run.sh). Absolute figures swing with machine load;"
	echo "the ratios compare targets measured in the same run."
	echo
	echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "- ovs: $commit"
	echo "- machine: $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM (at the start: $MEM_AT_START), kernel $(uname -r)"
	echo "- tools: $(fio --version), nbdkit $(nbdkit --version | awk '{print $2}'), $(qemu-nbd --version | head -n1)"
	echo "- fio: ioengine=nbd over unix sockets, direct=1, ${RUNTIME} s per workload after ${RAMP} s ramp, randrepeat=0, norandommap; device ${SIZE_GIB} GiB; random reads over the first ${READ_GIB} GiB, written before"
	echo "- servers:"
	for t in null file qcow2 ovs ovsec; do
		[ -n "${CMDLINE[$t]:-}" ] && echo "  - $t: \`${CMDLINE[$t]}\`"
	done
	echo
	echo "The headline is the first column: what \`ovs up\` gives (erasure-coded 4+2 backend over 6 ASDs). Beside it the local-directory backend (\`ovs up --backend local\`), then the reference servers."
	echo
	echo "| workload | **ovs up (EC 4+2)** | ovs-ec/nbdkit-file | ovs, local backend | ovs-local/nbdkit-file | nbdkit null | nbdkit file | qemu-nbd qcow2 | ovs-local/qemu-nbd-qcow2 |"
	echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
	row "4 KiB randwrite QD32, IOPS" randwrite iops
	row "4 KiB randread QD32, IOPS" randread iops
	row "4 KiB randwrite QD1, IOPS" qd1 iops
	row "4 KiB randwrite QD1, p50 latency µs" qd1 p50
	row "4 KiB randwrite QD1, p99 latency µs" qd1 p99
	row "1 MiB seq write QD8, MiB/s" seqwrite bw
	echo
	echo "Memory: a fresh \`ovs up\`, one 1 TiB vdisk, ${RSS_IO_GIB} GiB of 4 KiB random writes at QD32 (${RSS_IOPS} IOPS):"
	echo "ovs VmRSS ${RSS} MiB, VmHWM ${HWM} MiB (its child processes: ${KIDS_RSS} MiB RSS)."
	echo
	echo "| target | measured | result |"
	echo "| --- | --- | --- |"
	echo "| 4 KiB randwrite IOPS >= 0.8x nbdkit-file (local backend) | $(ratio "$(v ovs.randwrite.iops)" "$(v file.randwrite.iops)")x | $(check "$(v ovs.randwrite.iops)" "$(v file.randwrite.iops)" 0.8) |"
	echo "| 4 KiB randwrite IOPS >= 2x qemu-nbd-qcow2 (local backend) | $(ratio "$(v ovs.randwrite.iops)" "$(v qcow2.randwrite.iops)")x | $(check "$(v ovs.randwrite.iops)" "$(v qcow2.randwrite.iops)" 2) |"
	echo "| 4 KiB randread IOPS >= 0.8x nbdkit-file (local backend) | $(ratio "$(v ovs.randread.iops)" "$(v file.randread.iops)")x | $(check "$(v ovs.randread.iops)" "$(v file.randread.iops)" 0.8) |"
	echo "| 1 MiB seq write >= 0.9x nbdkit-file (local backend) | $(ratio "$(v ovs.seqwrite.bw)" "$(v file.seqwrite.bw)")x | $(check "$(v ovs.seqwrite.bw)" "$(v file.seqwrite.bw)" 0.9) |"
	echo "| VmRSS and VmHWM <= ${RSS_LIMIT_MIB} MiB (1 TiB vdisk) | ${RSS} / ${HWM} MiB | ${rss_check} |"
	if want ecbeyond; then
		echo
		echo "Reads beyond the write buffer (ecbeyond: EC 4+2, write buffer ${BEYOND_WB_MIB} MiB, $((4 * BEYOND_WB_MIB)) MiB written; nbdkit-file over ${READ_GIB} GiB):"
		echo
		echo "| workload | nbdkit file | ovs EC, beyond the write buffer | ovs/nbdkit-file | target |"
		echo "| --- | ---: | ---: | ---: | --- |"
		echo "| 1 MiB seq read QD8, cold (first pass), MiB/s | $(v file.seqread.bw) | $(v ecbeyond.seqread.bw) | $(ratio "$(v ecbeyond.seqread.bw)" "$(v file.seqread.bw)") | >= 0.5x: $(check "$(v ecbeyond.seqread.bw)" "$(v file.seqread.bw)" 0.5) |"
		echo "| 4 KiB randread QD32, cold (empty disk cache, no ramp), IOPS | $(v file.randread.iops) | $(v ecbeyond.coldrand.iops) | $(ratio "$(v ecbeyond.coldrand.iops)" "$(v file.randread.iops)") | >= 33000 (3x 11k/s): $(check "$(v ecbeyond.coldrand.iops)" 33000 1) |"
		echo "| 4 KiB randread QD32 after one warm pass, IOPS | $(v file.randread.iops) | $(v ecbeyond.randread.iops) | $(ratio "$(v ecbeyond.randread.iops)" "$(v file.randread.iops)") | >= 0.8x: $(check "$(v ecbeyond.randread.iops)" "$(v file.randread.iops)" 0.8) |"
		echo "| 1 MiB seq write QD8 (ovsec above), MiB/s | $(v file.seqwrite.bw) | $(v ovsec.seqwrite.bw) | $(ratio "$(v ovsec.seqwrite.bw)" "$(v file.seqwrite.bw)") | >= 0.35x: $(check "$(v ovsec.seqwrite.bw)" "$(v file.seqwrite.bw)" 0.35) |"
		echo
		echo "During the cold random reads the ASDs served $(v ecbeyond.coldrand.asd) window reads/s (disk read cache misses: each fetches the 64 KiB around the cluster asked for). Long sequential runs are a scan: the cache keeps them only once read before."
		echo
		echo "Disk read cache after the run: ${BEYOND_STATS}. Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
	fi
} >"$RESULTS.tmp"
mv "$RESULTS.tmp" "$RESULTS"
cat "$RESULTS"
log "written to $RESULTS"
[ "$OVS_FAILED" -eq 0 ] || die "ovs could not be benchmarked"
