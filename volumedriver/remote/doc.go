// Package remote forwards block I/O from one node to another: every node's
// NBD server exports every vdisk of the cluster, and I/O for a vdisk that
// another node owns goes to that owner over this protocol.
//
// # Wire format (version 1)
//
// A connection is TCP, optionally inside TLS (the caller's *tls.Config). All
// integers are big-endian. The client speaks first.
//
// Hello, 8 bytes, both ways:
//
//	magic "OVSF" | u16 version | u8 status | u8 reserved (0)
//
// The client sends status 0. The server answers with its own version and a
// status: 0 accepted, 1 unsupported version, 2 too many connections; on
// anything but 0 it closes the connection. Either side that sees a version it
// does not speak refuses the connection with an error naming both versions.
//
// Request, 24-byte header, then the vdisk name, then for Write the data:
//
//	u8 op | u8 flags | u8 name length (1..64) | u8 reserved (0) |
//	u32 length | u64 handle | u64 offset
//
// Ops: 1 Size, 2 Read, 3 Write, 4 Flush, 5 Trim, 6 WriteZeroes,
// 7 BlockStatus. Flags: 1 FUA (Write, WriteZeroes), 2 no-hole
// (WriteZeroes). Read and Write carry at most MaxData bytes; Size and Flush
// carry offset and length 0.
//
// Reply, 16-byte header, then the error message, then the data:
//
//	u64 handle | u8 status | u8 reserved (0) | u16 message length (<= 1024) |
//	u32 data length
//
// Data on success: Read the bytes asked for; Size u64 size, u32 info flags
// (1 read-only, 2 fast zero), u32 reserved; BlockStatus 8 bytes per extent,
// u32 length and u32 flags (1 hole, 2 zero), at most MaxExtents of them.
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
