#!/usr/bin/python3
"""NBD client for the OVS end-to-end tests, on libnbd's Python binding (the
engine of nbdsh). Run it with a python3 that can `import nbd` (Debian:
/usr/bin/python3 with python3-libnbd installed).

Modes:

  session URI
      Connect, print "CONNECTED <size>", then obey one command per stdin
      line and answer each with one line, "OK [...]" or "ERR <message>":
        size                   -> OK <export size>
        write OFF LEN BYTE     -> fill [OFF, OFF+LEN) with BYTE, then flush
        check OFF LEN BYTE     -> OK if every byte in the range is BYTE
        read OFF LEN           -> OK if the range can be read
        quit
      The connection stays open until quit or end of stdin: a client
      holding the export open.

  crash-write URI SEED BASE NBLOCKS FLUSH_EVERY
      Write 4 KiB blocks at BASE + 4096*b, with b drawn from
      random.Random(SEED) and the content derived from (offset, sequence
      number). Writes are synchronous: write number s is acknowledged
      before write s+1 is sent. After every FLUSH_EVERY writes, flush,
      and once the flush is acknowledged print "FLUSHED <n>": writes
      0..n-1 were all acknowledged before that flush was sent, so they must
      survive a crash. Runs until the connection fails, then prints
      "ISSUED <m>": writes 0..m-1 were sent (the last ones may or may not
      have landed).

  crash-check URI SEED BASE NBLOCKS FLUSHED ISSUED
      After the crash and restart, check every block of the writer's region:
      a block must hold the content of its last write numbered < FLUSHED,
      or of a later write (numbered < ISSUED) to the same block; a block
      that no write numbered < FLUSHED touched may also read as zeros, and a
      block no write touched at all must. Exits 1 on any mismatch.

  aio-write URI SEED BASE NBLOCKS INFLIGHT LOG
      Keep INFLIGHT 4 KiB writes in flight (libnbd's aio_pwrite), never a
      flush. Write number s goes to block perm[s] of the region
      [BASE, BASE+NBLOCKS*4096), perm being a permutation drawn from
      random.Random(SEED), so no block is written twice and the content
      (derived from offset and s) says which write it is. From the
      completion callback of each write the server acknowledged, append
      "s" to LOG (one number a line): those writes must survive the death
      of the server. Prints "ACKED <n>" every 1000 acknowledgements; runs
      until the connection fails or the region is used up ("EXHAUSTED"),
      then prints "ISSUED <m>" (writes 0..m-1 were sent) and
      "ACKED <n>".

  aio-check URI SEED BASE NBLOCKS ISSUED LOG
      After the crash and restart: every write listed in LOG must read
      back exactly; a write that was sent but not acknowledged may read
      as its content or as zeros; a block no write was sent to must read
      as zeros. Exits 1 on any mismatch, with a SUMMARY line that counts
      the acknowledged writes lost.
"""

import hashlib
import random
import struct
import sys

import nbd

BS = 4096
CHUNK = 4 << 20
MAGIC = b"OVSCRSH1"
HDR = struct.Struct("<8sQQ")


def connect(uri):
    h = nbd.NBD()
    h.set_handle_name("ovs-e2e")
    h.connect_uri(uri)
    return h


def out(*args):
    print(*args, flush=True)


def one_line(e):
    return " ".join(str(e).split())


# --- session -----------------------------------------------------------------

def session(uri):
    h = connect(uri)
    out("CONNECTED", h.get_size())
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            if words[0] == "quit":
                break
            elif words[0] == "size":
                out("OK", h.get_size())
            elif words[0] == "write":
                off, length, b = int(words[1]), int(words[2]), int(words[3], 0)
                end = off + length
                while off < end:
                    n = min(CHUNK, end - off)
                    h.pwrite(bytes([b]) * n, off)
                    off += n
                h.flush()
                out("OK")
            elif words[0] == "read":
                off, length = int(words[1]), int(words[2])
                end = off + length
                while off < end:
                    n = min(CHUNK, end - off)
                    h.pread(n, off)
                    off += n
                out("OK")
            elif words[0] == "check":
                off, length, b = int(words[1]), int(words[2]), int(words[3], 0)
                end = off + length
                bad = None
                while off < end and bad is None:
                    n = min(CHUNK, end - off)
                    data = h.pread(n, off)
                    want = bytes([b]) * n
                    if data != want:
                        i = next(i for i in range(n) if data[i] != b)
                        bad = "mismatch at offset %d: byte 0x%02x, want 0x%02x" % (
                            off + i, data[i], b)
                    off += n
                out("ERR " + bad if bad else "OK")
            else:
                out("ERR unknown command " + words[0])
        except (nbd.Error, ValueError, IndexError) as e:
            out("ERR " + one_line(e))
    try:
        h.shutdown()
    except nbd.Error:
        pass


# --- crash -------------------------------------------------------------------

def content(off, seq):
    hdr = HDR.pack(MAGIC, off, seq)
    return hdr + (hashlib.sha256(hdr).digest() * (BS // 32))[:BS - HDR.size]


def crash_write(uri, seed, base, nblocks, flush_every):
    h = connect(uri)
    out("CONNECTED", h.get_size())
    if base + nblocks * BS > h.get_size():
        out("ERR region beyond the end of the export")
        sys.exit(2)
    rnd = random.Random(seed)
    issued = 0
    try:
        while True:
            b = rnd.randrange(nblocks)
            off = base + b * BS
            issued += 1
            h.pwrite(content(off, issued - 1), off)
            if issued % flush_every == 0:
                h.flush()
                out("FLUSHED", issued)
    except nbd.Error as e:
        out("STOPPED", one_line(e))
    out("ISSUED", issued)


def crash_check(uri, seed, base, nblocks, flushed, issued):
    rnd = random.Random(seed)
    last = [-1] * nblocks   # last write < flushed, per block
    later = {}              # block -> writes >= flushed
    for seq in range(issued):
        b = rnd.randrange(nblocks)
        if seq < flushed:
            last[b] = seq
        else:
            later.setdefault(b, set()).add(seq)

    h = connect(uri)
    zero = bytes(BS)
    bad = 0
    counts = {"flushed": 0, "later": 0, "zero": 0}

    def fail(msg):
        nonlocal bad
        bad += 1
        if bad <= 20:
            out("BAD", msg)

    end = base + nblocks * BS
    off = base
    while off < end:
        n = min(CHUNK, end - off)
        data = h.pread(n, off)
        for i in range(0, n, BS):
            blk = data[i:i + BS]
            boff = off + i
            b = (boff - base) // BS
            if blk == zero:
                if last[b] >= 0:
                    fail("block %d (offset %d) reads as zeros, but write %d to it "
                         "was acknowledged before a completed flush" % (b, boff, last[b]))
                else:
                    counts["zero"] += 1
                continue
            magic, hoff, seq = HDR.unpack_from(blk)
            if magic != MAGIC or hoff != boff:
                fail("block %d (offset %d) holds foreign data (header %r, offset %d); "
                     "want write %d" % (b, boff, bytes(blk[:8]), hoff, last[b]))
                continue
            allowed = later.get(b, set())
            if seq != last[b] and seq not in allowed:
                if 0 <= seq < last[b]:
                    why = "an older write than %d, the last acknowledged before a flush" % last[b]
                elif last[b] < 0:
                    why = "not a write this block may hold (want zeros or a later write)"
                else:
                    why = "not a write this block may hold (want %d or a later one)" % last[b]
                fail("block %d (offset %d) holds write %d: %s" % (b, boff, seq, why))
                continue
            if blk != content(boff, seq):
                fail("block %d (offset %d) holds a torn or corrupt copy of write %d"
                     % (b, boff, seq))
                continue
            counts["flushed" if seq == last[b] else "later"] += 1
        off += n

    h.shutdown()
    out("SUMMARY blocks=%d flushed_content=%d later_content=%d zeros=%d bad=%d "
        "(flushed=%d issued=%d)" % (nblocks, counts["flushed"], counts["later"],
                                    counts["zero"], bad, flushed, issued))
    sys.exit(1 if bad else 0)


# --- acknowledged, unflushed writes ------------------------------------------

def permutation(seed, nblocks):
    perm = list(range(nblocks))
    random.Random(seed).shuffle(perm)
    return perm


def aio_write(uri, seed, base, nblocks, inflight, logpath):
    perm = permutation(seed, nblocks)
    h = connect(uri)
    out("CONNECTED", h.get_size())
    if base + nblocks * BS > h.get_size():
        out("ERR region beyond the end of the export")
        sys.exit(2)
    log = open(logpath, "w")
    bufs = {}       # seq -> nbd.Buffer, alive until its write completes
    acked = 0
    failed = 0

    def done(seq, err):
        # Runs inside libnbd once the reply (or the connection's death)
        # retires the command; only a reply without error counts.
        nonlocal acked, failed
        del bufs[seq]
        if err.value == 0:
            log.write("%d\n" % seq)
            acked += 1
            if acked % 1000 == 0:
                log.flush()
                out("ACKED", acked)
        else:
            failed += 1
        return 1

    issued = 0
    try:
        while True:
            while len(bufs) < inflight and issued < nblocks:
                seq = issued
                off = base + perm[seq] * BS
                buf = nbd.Buffer.from_bytearray(bytearray(content(off, seq)))
                bufs[seq] = buf
                issued += 1
                h.aio_pwrite(buf, off,
                             completion=lambda err, seq=seq: done(seq, err))
            if not bufs:
                out("EXHAUSTED")
                break
            h.poll(-1)
    except nbd.Error as e:
        out("STOPPED", one_line(e))
    log.close()
    out("ISSUED", issued)
    out("ACKED", acked)


def aio_check(uri, seed, base, nblocks, issued, logpath):
    perm = permutation(seed, nblocks)
    acked = set()
    with open(logpath) as f:
        for line in f:
            if line.strip():
                acked.add(int(line))
    seq_of = {}     # block -> the one write sent to it
    for seq in range(issued):
        seq_of[perm[seq]] = seq

    h = connect(uri)
    zero = bytes(BS)
    counts = {"acked_ok": 0, "acked_lost": 0, "acked_bad": 0,
              "unacked_landed": 0, "unacked_zero": 0, "foreign": 0}
    shown = 0

    def show(msg):
        nonlocal shown
        shown += 1
        if shown <= 20:
            out("BAD", msg)

    end = base + nblocks * BS
    off = base
    while off < end:
        n = min(CHUNK, end - off)
        data = h.pread(n, off)
        for i in range(0, n, BS):
            blk = data[i:i + BS]
            boff = off + i
            b = (boff - base) // BS
            seq = seq_of.get(b)
            if seq is None:
                if blk != zero:
                    counts["foreign"] += 1
                    show("block %d (offset %d) was never written but is not zeros" % (b, boff))
                continue
            if blk == content(boff, seq):
                counts["acked_ok" if seq in acked else "unacked_landed"] += 1
            elif seq in acked:
                if blk == zero:
                    counts["acked_lost"] += 1
                    show("block %d (offset %d) reads as zeros, but write %d to it "
                         "was acknowledged" % (b, boff, seq))
                else:
                    counts["acked_bad"] += 1
                    show("block %d (offset %d) does not hold acknowledged write %d "
                         "(torn or foreign data)" % (b, boff, seq))
            elif blk == zero:
                counts["unacked_zero"] += 1
            else:
                counts["foreign"] += 1
                show("block %d (offset %d) holds neither zeros nor unacknowledged "
                     "write %d" % (b, boff, seq))
        off += n
    h.shutdown()
    bad = counts["acked_lost"] + counts["acked_bad"] + counts["foreign"]
    out("SUMMARY acked=%d issued=%d acked_ok=%d acked_lost=%d acked_bad=%d "
        "unacked_landed=%d unacked_zero=%d foreign=%d" % (
            len(acked), issued, counts["acked_ok"], counts["acked_lost"],
            counts["acked_bad"], counts["unacked_landed"], counts["unacked_zero"],
            counts["foreign"]))
    sys.exit(1 if bad else 0)


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    mode, uri = argv[1], argv[2]
    if mode in ("aio-write", "aio-check"):
        args = [int(a) for a in argv[3:-1]]
        if mode == "aio-write":
            aio_write(uri, *args, argv[-1])
        else:
            aio_check(uri, *args, argv[-1])
        return
    args = [int(a) for a in argv[3:]]
    if mode == "session":
        session(uri)
    elif mode == "crash-write":
        crash_write(uri, *args)
    elif mode == "crash-check":
        crash_check(uri, *args)
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main(sys.argv)
