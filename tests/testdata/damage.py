#!/usr/bin/python3
"""NBD client for the OVS damage tests, on libnbd's Python binding (the
engine of nbdsh).

  write URI FILE OFF LEN
      Write FILE[OFF:OFF+LEN) to the export at OFF, in order, 256 KiB at a
      time, then flush. Prints "OK".

  check URI FILE
      Read the export one 4 KiB cluster at a time and compare it with FILE.
      Prints "EIO <cluster>" for each cluster whose read fails with EIO,
      "BAD <cluster>" for each that reads other data than FILE holds, and
      finally "DONE ok=<n> eio=<n> bad=<n>".
"""

import sys

import nbd

BS = 4096


def connect(uri):
    h = nbd.NBD()
    h.set_handle_name("ovs-damage")
    h.connect_uri(uri)
    return h


def write(uri, path, off, length):
    h = connect(uri)
    with open(path, "rb") as f:
        f.seek(off)
        data = f.read(length)
    pos = 0
    while pos < len(data):
        chunk = data[pos:pos + (256 << 10)]
        h.pwrite(chunk, off + pos)
        pos += len(chunk)
    h.flush()
    h.shutdown()
    print("OK", flush=True)


def check(uri, path):
    h = connect(uri)
    with open(path, "rb") as f:
        want = f.read()
    ok = eio = bad = 0
    for c in range(len(want) // BS):
        try:
            got = h.pread(BS, c * BS)
        except nbd.Error as e:
            if e.errno == "EIO":  # libnbd gives the errno by name
                eio += 1
                print("EIO", c, flush=True)
                continue
            raise
        if got == want[c * BS:(c + 1) * BS]:
            ok += 1
        else:
            bad += 1
            print("BAD", c, flush=True)
    h.shutdown()
    print("DONE ok=%d eio=%d bad=%d" % (ok, eio, bad), flush=True)


def main():
    mode = sys.argv[1]
    if mode == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    elif mode == "check":
        check(sys.argv[2], sys.argv[3])
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()
