#!/usr/bin/env bash
# File frontend (issue 12): one vdisk measured through the FUSE mount,
# through the NFS export and through NBD, beside a plain file on the local
# disk, in one run. Prints a markdown table on stdout; run by `make bench`.
#
#   plain  a preallocated file in BENCH_TMPDIR: fio libaio, direct=1
#   fuse   MNT/fsb.raw on `ovs up --mount MNT`: fio libaio, direct=1
#   nfs    the NFS export (`ovs up --nfs ADDR`) read by qemu's libnfs
#          driver, served to fio over a unix socket by qemu-nbd
#          --cache=none (no kernel NFS client here, and fio has no libnfs
#          engine): it includes qemu-nbd's cost, so it is a lower bound
#   plainq the plain file through the same qemu-nbd: the client path's
#          own ceiling, to read the nfs column against
#   nbd    the vdisk's NBD export: fio nbd engine
#
# qemu's nfs:// driver takes no port and asks the portmapper on port 111,
# which the export answers itself: it listens on a random 127.x.y.z:111.
#
# Environment: OVS_BIN, BENCH_FS_RUNTIME (seconds per workload, default
# 10), BENCH_FS_MIB (the region, default 1024), BENCH_TMPDIR (/var/tmp).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OVS=${OVS_BIN:-$ROOT/bin/ovs}
RUNTIME=${BENCH_FS_RUNTIME:-10}
MIB=${BENCH_FS_MIB:-1024}
WORK=$(mktemp -d "${BENCH_TMPDIR:-/var/tmp}/ovs-bench-fs.XXXXXX")
read -r API_PORT NBD_PORT AK_C AK_R ISCSI_PORT <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(5)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
NFS_HOST=127.$((100 + RANDOM % 100)).$((RANDOM % 256)).$((1 + RANDOM % 254))
API=http://127.0.0.1:$API_PORT
MNT=$WORK/mnt
mkdir -p "$MNT"
PID= QPID= QPID2=
log() { printf '%s bench-fs: %s\n' "$(date +%T)" "$*" >&2; }
cleanup() {
	for p in $QPID $QPID2; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	[ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }
	fusermount3 -u -z "$MNT" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
"$OVS" up --data "$WORK/data" --api "127.0.0.1:$API_PORT" --nbd "127.0.0.1:$NBD_PORT" \
	--arakoon-client "127.0.0.1:$AK_C" --arakoon-raft "127.0.0.1:$AK_R" --iscsi "127.0.0.1:$ISCSI_PORT" \
	--mount "$MNT" --nfs "$NFS_HOST:111" >"$WORK/ovs.log" 2>&1 &
PID=$!
for _ in $(seq 300); do curl -fs "$API/api/v1/health" >/dev/null && break; sleep 0.1; done
export OVS_API=$API
SOCK=$WORK/data/nbd.sock
"$OVS" vdisk create fsb --size "$((2 * MIB))MiB" >/dev/null
for _ in $(seq 100); do [ -e "$MNT/fsb.raw" ] && break; sleep 0.1; done
fallocate -l "$((2 * MIB))M" "$WORK/plain.img"

# The NFS path: qemu-nbd reading the export with libnfs; the plain file
# through the same qemu-nbd as its reference.
# start_qemu_nbd SOCK IMAGE: sets QPID_LAST.
start_qemu_nbd() {
	setsid qemu-nbd -t -k "$1" -f raw --cache=none --aio=threads --shared=8 "$2" >"$1.log" 2>&1 &
	QPID_LAST=$!
	for _ in $(seq 100); do nbdinfo --size "nbd+unix:///?socket=$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
	log "qemu-nbd $2 did not start: $(tail -n 3 "$1.log")"
}
QSOCK=$WORK/q.sock QSOCK2=$WORK/q2.sock
start_qemu_nbd "$QSOCK" "nfs://$NFS_HOST/vpool/fsb.raw"
QPID=$QPID_LAST
start_qemu_nbd "$QSOCK2" "$WORK/plain.img"
QPID2=$QPID_LAST

declare -A R
# run TARGET TAG FIELD FIOARGS...: one time-based fio job; R[TARGET.TAG].
run() {
	local t=$1 tag=$2 field=$3 out=$WORK/$1.$2.json
	shift 3
	sync
	log "$t: $tag"
	if fio --name="$t-$tag" --direct=1 --output-format=json --output="$out" --time_based \
		--runtime="$RUNTIME" --ramp_time=2 --randrepeat=0 --norandommap --size="${MIB}m" "$@" >"$out.err" 2>&1; then
		# IOPS, or MiB/s for the sequential workload.
		col=1
		[ "$tag" = seqwrite ] && col=2
		R[$t.$tag]=$(python3 "$ROOT/bench/fiojson.py" "$out" "$field" | awk -v c="$col" '{print $c}')
	else
		log "$t: $tag failed: $(tail -n 3 "$out.err")"
		R[$t.$tag]=n/a
	fi
}
declare -A ARGS=(
	[plain]="--ioengine=libaio --filename=$WORK/plain.img"
	[fuse]="--ioengine=libaio --filename=$MNT/fsb.raw"
	[nfs]="--ioengine=nbd --uri=nbd+unix:///?socket=$QSOCK"
	[plainq]="--ioengine=nbd --uri=nbd+unix:///?socket=$QSOCK2"
	[nbd]="--ioengine=nbd --uri=nbd+unix:///fsb?socket=$SOCK"
)
# Prefill the region once (the vdisk is shared by fuse, nfs and nbd).
fio --name=prefill --ioengine=nbd --uri="nbd+unix:///fsb?socket=$SOCK" --rw=write --bs=1m --iodepth=8 --size="${MIB}m" --output=/dev/null
fio --name=prefill --ioengine=libaio --direct=1 --filename="$WORK/plain.img" --rw=write --bs=1m --iodepth=8 --size="${MIB}m" --output=/dev/null
for t in plain fuse plainq nfs nbd; do
	read -r -a a <<<"${ARGS[$t]}"
	run "$t" randwrite write "${a[@]}" --rw=randwrite --bs=4k --iodepth=32
	run "$t" randread read "${a[@]}" --rw=randread --bs=4k --iodepth=32
	run "$t" seqwrite write "${a[@]}" --rw=write --bs=1m --iodepth=8
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
echo "One ${MIB} MiB region of one vdisk on \`ovs up --mount MNT --nfs ADDR\` (EC 4+2 backend) through FUSE (fio libaio), NBD (fio nbd) and NFS; ${RUNTIME} s per workload, direct=1. Plain is a preallocated file on the same disk. There is no kernel NFS client here and fio has no libnfs engine, so NFS is read by qemu-nbd (libnfs) and served to fio over NBD; the plain file through the same qemu-nbd is its reference."
echo
echo "| workload | plain file | FUSE | NBD | plain file via qemu-nbd | NFS via qemu-nbd | FUSE/plain | NBD/plain | NFS/(plain via qemu-nbd) |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
for w in "4 KiB randwrite QD32, IOPS:randwrite" "4 KiB randread QD32, IOPS:randread" "1 MiB seq write QD8, MiB/s:seqwrite"; do
	label=${w%%:*} tag=${w##*:}
	p=${R[plain.$tag]} f=${R[fuse.$tag]} n=${R[nfs.$tag]} b=${R[nbd.$tag]} q=${R[plainq.$tag]}
	echo "| $label | $p | $f | $b | $q | $n | $(ratio "$f" "$p") | $(ratio "$b" "$p") | $(ratio "$n" "$q") |"
done
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
