// Package remote forwards block I/O from one node to another: every node's
// NBD server exports every vdisk of the cluster, and I/O for a vdisk that
// another node owns goes to that owner over this protocol.
//
// # Wire format (version 2)
//
// A connection is TCP, optionally inside TLS (the caller's *tls.Config). All
// integers are big-endian. The client speaks first.
//
// Hello, 8 bytes, both ways:
//
//	magic "OVSF" | u16 version | u8 status | u8 reserved (0)
//
// The client sends status 0 and the newest version it speaks. A server that
// speaks that version (it speaks MinVersion to Version) answers with the
// same version and a status: 0 accepted, 2 too many connections; one that
// does not answers with its newest version and status 1 (unsupported
// version). On anything but 0 it closes the connection. A client told of an
// older version that it speaks too greets again in that version, on a new
// connection (a version 1 server refuses version 2 this way); otherwise it
// gives up with an error naming both versions. The connection then speaks
// the version agreed: version 1 is version 2 without CompareAndWrite, which
// the client then refuses itself (ErrInvalid) rather than send an op the
// server would take for a protocol error.
//
// Request, 24-byte header, then the vdisk name, then for Write the data
// and for CompareAndWrite the bytes to compare followed by those to write:
//
//	u8 op | u8 flags | u8 name length (1..64) | u8 reserved (0) |
//	u32 length | u64 handle | u64 offset
//
// Ops: 1 Size, 2 Read, 3 Write, 4 Flush, 5 Trim, 6 WriteZeroes,
// 7 BlockStatus, 8 CompareAndWrite (version 2). Flags: 1 FUA (Write,
// WriteZeroes, CompareAndWrite), 2 no-hole (WriteZeroes). Read and Write
// carry at most MaxData bytes; Size and Flush carry offset and length 0.
// CompareAndWrite's length is that of its payload, 2n for n bytes compared
// at offset (n <= blockdev.MaxCompareAndWrite, 1 MiB): the owner writes the
// second half there if the vdisk holds the first, as one step serialised
// with every other CompareAndWrite of the vdisk.
//
// Reply, 16-byte header, then the error message, then the data:
//
//	u64 handle | u8 status | u8 reserved (0) | u16 message length (<= 1024) |
//	u32 data length
//
// Data on success: Read the bytes asked for; Size u64 size, u32 info flags
// (1 read-only, 2 fast zero), u32 reserved; BlockStatus 8 bytes per extent,
// u32 length and u32 flags (1 hole, 2 zero), at most MaxExtents of them;
// CompareAndWrite an i64: -1 when it wrote, else the offset (0..n-1, from
// the request's offset) of the first byte that differed, nothing written.
// A device that cannot compare and write answers status 3 (invalid).
// Replies come in any order: the handle ties each to its request. Handles
// are chosen by the client and never 0: a reply with handle 0 (no message,
// no data) is the server's go-away, sent when it shuts down. The client
// then sends nothing new on that connection and closes it once every
// request it sent is answered; the server serves what it reads until then.
//
// # Behaviour
//
// One connection multiplexes requests for many vdisks, pipelined. The server
// reads requests in one goroutine and runs them concurrently (bounded per
// connection), so a slow flush does not hold up reads behind it; replies are
// written whole under a lock into a buffered writer that is flushed when no
// other reply is queued, so concurrent small replies share a syscall. The
// client does the same for requests, and reads Read replies straight into
// the caller's buffer.
//
// A frame that cannot be decoded (unknown op, bad lengths, reserved bits
// set) is a protocol error: the side that reads it closes the connection,
// without allocating what the frame claims.
package remote
