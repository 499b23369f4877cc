#!/usr/bin/env bash
# Snapshot and rollback timings (issue 5): a snapshot of a 1 GiB and of a
# 1 TiB vdisk should cost the same (it is a cut in the TLog sequence, not a
# copy), and a rollback should cost metadata, not data. Prints a markdown
# table on stdout; run by `make bench`.
set -euo pipefail
OVS=${OVS_BIN:-$(cd "$(dirname "$0")/.." && pwd)/bin/ovs}
WORK=$(mktemp -d /tmp/ovs-bench-snap.XXXXXX)
API_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
NBD_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
API=http://127.0.0.1:$API_PORT
"$OVS" up --data "$WORK/data" --api 127.0.0.1:$API_PORT --nbd 127.0.0.1:$NBD_PORT >"$WORK/ovs.log" 2>&1 &
PID=$!
cleanup() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do curl -fs "$API/api/v1/health" >/dev/null && break; sleep 0.1; done
export OVS_API=$API
SOCK=$WORK/data/nbd.sock

# ms for one API call (server-side work plus one loopback HTTP round trip).
call_ms() { curl -fs -o /dev/null -w '%{time_total}' -X POST -H 'Content-Type: application/json' -d "$2" "$API/api/v1/vdisks/$1" | awk '{printf "%.2f", $1*1000}'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
write_mib() { # vdisk MiB seed
	fio --name=w --ioengine=nbd --uri="nbd+unix:///$1?socket=$SOCK" --rw=randwrite --bs=64k \
		--size="$(( $2 ))m" --randseed="$3" --iodepth=16 --output=/dev/null
}

"$OVS" vdisk create small --size 1GiB >/dev/null
"$OVS" vdisk create huge --size 1TiB >/dev/null
echo "| vdisk | data written | snapshot create (median of 20) |"
echo "| --- | --- | --- |"
for v in small huge; do
	write_mib "$v" 256 1
	ts=$(for i in $(seq 20); do write_mib "$v" 1 $((i+10)); call_ms "$v/snapshots" "{\"name\":\"b$i\"}"; echo; done | median)
	size=$("$OVS" vdisk info "$v" -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"]//2**30)')
	echo "| $v ($size GiB) | 276 MiB | ${ts} ms |"
done

echo
echo "| data written after the snapshot | rollback (after sync(1)) |"
echo "| --- | --- |"
"$OVS" vdisk create rb --size 4GiB >/dev/null
write_mib rb 256 1
for mib in 16 128 512 1024; do
	"$OVS" vdisk snapshot create rb base >/dev/null
	write_mib rb "$mib" 2
	# Let the kernel write back the page cache first: otherwise the
	# rollback's few fsyncs wait for ext4 to flush the data just written,
	# which measures the filesystem, not the rollback.
	sync
	ms=$(call_ms rb/rollback '{"snapshot":"base"}')
	"$OVS" vdisk snapshot delete rb base >/dev/null
	echo "| $mib MiB | ${ms} ms |"
done
