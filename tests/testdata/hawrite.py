#!/usr/bin/python3
"""A pipelined NBD writer that records which writes each completed flush
covered, and its checker, for the failover tests (tests/failover_test.go).
On libnbd's Python binding (the engine of nbdsh): run it with a python3
that can `import nbd` (Debian: /usr/bin/python3 with python3-libnbd).

Modes:

  write URI SEED BASE NBLOCKS INFLIGHT FLUSH_EVERY LOG
      Keep INFLIGHT 4 KiB writes in flight (aio_pwrite) to blocks of the
      region [BASE, BASE+NBLOCKS*4096) drawn from random.Random(SEED),
      never two in flight to the same block (the NBD protocol does not
      order concurrent writes, so two in flight to one block would leave
      either). Write number s to block b holds content(SEED, offset, s): a
      header (magic, seed, offset, s) and a fill derived from it, so a
      block read back says which write it is, and a torn, foreign or
      stale block is told apart from the right one. After every
      FLUSH_EVERY writes issued, send a flush (aio_flush) without waiting
      for it. Every event goes to LOG, one line each, written to the
      kernel as it happens (a kill of the writer loses none):
        I s b    write s to block b was sent
        A s      write s was acknowledged
        E s      write s failed
        F f      flush f was sent: it covers every write acknowledged
                 (an A line) before this line
        D f      flush f was acknowledged
        X f      flush f failed
      Prints "CONNECTED <size>", then "FLUSHED <f>" for each completed
      flush. Stops sending at the first failure, and exits on SIGTERM or
      SIGINT (without waiting for what is in flight: a client that gives
      up), printing "ISSUED <n> ACKED <m>".

  check URI SEED BASE NBLOCKS LOG STRICT
      Read the region back and judge every block against LOG. Let L(b) be
      the newest write to b that a completed flush covered. The block
      must hold L(b) or a write to b sent after it (acknowledged or not:
      it may have landed), exactly. With no covered write, it may hold
      zeros or any write sent to it. Anything else is one of:
        lost   zeros, or a write to b older than L(b): a flushed write is
               gone (the block went back in time)
        wrong  content that is no write ever sent to b: torn (the header
               of a write to b with another fill), foreign (another
               block's or another run's write), or garbage
      Prints BAD lines (the first 20) and a SUMMARY line; exits 1 on any
      wrong block, and with STRICT=1 on any lost one too.

  rollback URI SEED BASE NBLOCKS LOG
      A control: make one block lose its newest covered write, as a
      failover that lost it would: write the block's previous write back
      (or zeros if it had none), flush. Prints "ROLLED <b>".

  probe URI OFFSET TIMEOUT
      Write 4 KiB at OFFSET, flush, read it back, connecting again after
      any failure, until all three succeed and the read returns what was
      written ("IO_OK <seconds>") or TIMEOUT seconds pass ("TIMEOUT";
      exit 1). A non-owner forwards all three to the owner, so this is
      the first I/O the vdisk serves again.
"""

import hashlib
import os
import random
import signal
import struct
import sys
import time

import nbd

BS = 4096
CHUNK = 4 << 20
MAGIC = b"OVSHAWR1"
HDR = struct.Struct("<8sQQQ")   # magic, seed, offset, seq
ZERO = bytes(BS)


def out(*args):
    print(*args, flush=True)


def one_line(e):
    return " ".join(str(e).split())


def connect(uri):
    h = nbd.NBD()
    h.set_handle_name("ovs-e2e-ha")
    h.connect_uri(uri)
    return h


def content(seed, off, seq):
    hdr = HDR.pack(MAGIC, seed, off, seq)
    return hdr + (hashlib.sha256(hdr).digest() * (BS // 32 + 1))[:BS - HDR.size]


# --- write -------------------------------------------------------------------

def write(uri, seed, base, nblocks, inflight, flush_every, logpath):
    h = connect(uri)
    if base + nblocks * BS > h.get_size():
        out("ERR region beyond the end of the export")
        sys.exit(2)
    if inflight >= nblocks:
        out("ERR more writes in flight than blocks")
        sys.exit(2)
    # Line-buffered: each line is in the kernel once written.
    log = open(logpath, "w", buffering=1)
    stop = False

    def on_signal(_sig, _frame):
        nonlocal stop
        stop = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    rnd = random.Random(seed)
    busy = {}       # block -> (seq, nbd.Buffer) of the write in flight
    flushes = 0     # flushes sent
    inflight_flushes = set()
    issued = acked = 0
    failed = False

    def wrote(seq, block, err):
        # Runs inside libnbd once the reply (or the connection's death)
        # retires the command; only a reply without error counts.
        nonlocal acked, failed
        del busy[block]
        if err.value == 0:
            acked += 1
            log.write("A %d\n" % seq)
        else:
            failed = True
            log.write("E %d\n" % seq)
        return 1

    def flushed(f, err):
        nonlocal failed
        inflight_flushes.discard(f)
        if err.value == 0:
            log.write("D %d\n" % f)
            out("FLUSHED", f)
        else:
            failed = True
            log.write("X %d\n" % f)
        return 1

    out("CONNECTED", h.get_size())
    try:
        while not stop:
            while not failed and len(busy) < inflight:
                b = rnd.randrange(nblocks)
                while b in busy:
                    b = rnd.randrange(nblocks)
                seq = issued
                off = base + b * BS
                buf = nbd.Buffer.from_bytearray(bytearray(content(seed, off, seq)))
                busy[b] = (seq, buf)
                log.write("I %d %d\n" % (seq, b))
                issued += 1
                h.aio_pwrite(buf, off, completion=lambda err, seq=seq, b=b: wrote(seq, b, err))
                if issued % flush_every == 0:
                    f = flushes
                    flushes += 1
                    inflight_flushes.add(f)
                    log.write("F %d\n" % f)
                    h.aio_flush(completion=lambda err, f=f: flushed(f, err))
            # Wake up now and then to see a stop request while the server
            # stalls.
            h.poll(200)
    except nbd.Error as e:
        log.write("# %s\n" % one_line(e))
        out("STOPPED", one_line(e))
    log.close()
    out("ISSUED", issued, "ACKED", acked)
    sys.stdout.flush()
    # Do not wait for what is in flight (a shutdown would).
    os._exit(0)


# --- the log -------------------------------------------------------------------

class History:
    """What LOG says: the writes sent to each block, in order, and which
    of them a completed flush covered."""

    def __init__(self, logpath, nblocks):
        self.writes = [[] for _ in range(nblocks)]   # block -> [seq...] in send order
        self.block_of = {}
        self.acked = set()
        self.issued = 0
        self.failed = 0             # writes that failed (E)
        self.flushes_failed = 0     # flushes that failed (X)
        covers = {}         # flush -> how many acks were seen before it was sent
        order = []          # acks in the order seen
        done = set()
        with open(logpath) as f:
            for line in f:
                w = line.split()
                if len(w) < 2 or w[0] == "#":
                    continue
                if w[0] == "I":
                    s, b = int(w[1]), int(w[2])
                    self.writes[b].append(s)
                    self.block_of[s] = b
                    self.issued += 1
                elif w[0] == "A":
                    self.acked.add(int(w[1]))
                    order.append(int(w[1]))
                elif w[0] == "F":
                    covers[int(w[1])] = len(order)
                elif w[0] == "D":
                    done.add(int(w[1]))
                elif w[0] == "E":
                    self.failed += 1
                elif w[0] == "X":
                    self.flushes_failed += 1
        # A flush covers the writes acknowledged before it was sent; the
        # union over completed flushes is what the newest of them covers.
        n = max((covers[f] for f in done), default=0)
        self.covered = set(order[:n])
        self.flushes_done = len(done)
        # L(b): the newest covered write to each block (writes to one block
        # never overlap, so send order is completion order).
        self.last = [-1] * nblocks
        for s in self.covered:
            b = self.block_of[s]
            if s > self.last[b]:
                self.last[b] = s


# --- check -------------------------------------------------------------------

def check(uri, seed, base, nblocks, logpath, strict):
    hist = History(logpath, nblocks)
    h = connect(uri)
    counts = {"covered": 0, "later": 0, "unflushed": 0, "zeros": 0, "lost": 0, "wrong": 0}
    acked_lost = 0      # acknowledged writes (covered or not) whose block went back before them
    shown = 0

    def bad(kind, msg):
        nonlocal shown
        counts[kind] += 1
        shown += 1
        if shown <= 20:
            out("BAD", kind, msg)

    end = base + nblocks * BS
    off = base
    while off < end:
        n = min(CHUNK, end - off)
        data = h.pread(n, off)
        for i in range(0, n, BS):
            blk = data[i:i + BS]
            boff = off + i
            b = (boff - base) // BS
            sent = hist.writes[b]
            last = hist.last[b]
            newest_acked = max((s for s in sent if s in hist.acked), default=-1)
            if blk == ZERO:
                if last >= 0:
                    bad("lost", "block %d (offset %d) reads as zeros, but write %d to it was "
                        "covered by a completed flush" % (b, boff, last))
                else:
                    counts["zeros"] += 1
                if newest_acked >= 0:
                    acked_lost += 1
                continue
            magic, hseed, hoff, seq = HDR.unpack_from(blk)
            if magic != MAGIC or hseed != seed or hoff != boff or seq not in sent:
                bad("wrong", "block %d (offset %d) holds no write sent to it (header %r seed %d "
                    "offset %d seq %d); want write %d or later" % (
                        b, boff, bytes(blk[:8]), hseed, hoff, seq, last))
                continue
            if blk != content(seed, boff, seq):
                bad("wrong", "block %d (offset %d) holds a torn copy of write %d" % (b, boff, seq))
                continue
            if seq < newest_acked:
                acked_lost += 1
            if seq < last:
                bad("lost", "block %d (offset %d) holds write %d, older than write %d that a "
                    "completed flush covered" % (b, boff, seq, last))
            elif seq == last:
                counts["covered"] += 1
            elif last >= 0:
                counts["later"] += 1
            else:
                counts["unflushed"] += 1
        off += n
    h.shutdown()
    out("SUMMARY issued=%d acked=%d failed=%d covered=%d flushes=%d flushes_failed=%d "
        "blocks_covered_ok=%d blocks_later=%d blocks_unflushed=%d blocks_zero=%d lost=%d wrong=%d "
        "acked_lost=%d" % (
            hist.issued, len(hist.acked), hist.failed, len(hist.covered), hist.flushes_done,
            hist.flushes_failed,
            counts["covered"], counts["later"], counts["unflushed"], counts["zeros"],
            counts["lost"], counts["wrong"], acked_lost))
    sys.exit(1 if counts["wrong"] or (strict and counts["lost"]) else 0)


def rollback(uri, seed, base, nblocks, logpath):
    hist = History(logpath, nblocks)
    cands = [b for b in range(nblocks) if hist.last[b] >= 0]
    if not cands:
        out("ERR no block has a covered write")
        sys.exit(2)
    b = random.Random(seed).choice(cands)
    older = [s for s in hist.writes[b] if s < hist.last[b]]
    off = base + b * BS
    h = connect(uri)
    h.pwrite(content(seed, off, older[-1]) if older else ZERO, off)
    h.flush()
    h.shutdown()
    out("ROLLED", b)


def probe(uri, offset, timeout):
    start = time.monotonic()
    data = b"P" * BS
    while time.monotonic() - start < timeout:
        try:
            h = connect(uri)
            h.pwrite(data, offset)
            h.flush()
            if h.pread(BS, offset) != data:
                out("ERR the probe block reads back differently")
                sys.exit(1)
            out("IO_OK %.3f" % (time.monotonic() - start))
            return
        except nbd.Error as e:
            out("RETRY", one_line(e))
            time.sleep(0.1)
    out("TIMEOUT")
    sys.exit(1)


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    mode, uri = argv[1], argv[2]
    if mode == "write":
        a = [int(x) for x in argv[3:8]]
        write(uri, *a, argv[8])
    elif mode == "check":
        check(uri, int(argv[3]), int(argv[4]), int(argv[5]), argv[6], argv[7] == "1")
    elif mode == "rollback":
        rollback(uri, int(argv[3]), int(argv[4]), int(argv[5]), argv[6])
    elif mode == "probe":
        probe(uri, int(argv[3]), float(argv[4]))
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main(sys.argv)
