// Package dtl is the distributed transaction log: the owner of a vdisk
// ships every change it appends to its open TLog (a run of written clusters
// with their CRC-32C, or a trim) to a DTL server on another node, in the
// same order, so that a write acknowledged after a flush survives the loss
// of the owner's host. A Shipper is the owner's side; Server is the DTL
// node's; Fence, Groups, Read and Forget are what a node taking a vdisk
// over (and the tooling) calls.
//
// Changes are grouped by TLog: Begin starts the group of a new TLog (named
// after it, with the name of the previous one), and Drop tells the server
// that a TLog is on the backend, so that its group and every group before
// it can go. On failover the new owner fences the vdisk with its epoch
// (from then on the server refuses the old owner, durably), lists the
// groups and replays the entries of those whose TLog is not on the backend.
//
// # Wire format (version 1)
//
// A connection is TCP, optionally inside TLS (the caller's *tls.Config,
// mutual TLS between nodes). All integers are big-endian. The client speaks
// first.
//
// Hello, 8 bytes, both ways:
//
//	magic "OVSD" | u16 version | u8 status | u8 reserved (0)
//
// The client sends status 0. The server answers with its own version and a
// status: 0 accepted, 1 unsupported version, 2 too many connections; on
// anything but 0 it closes the connection. Either side that sees a version
// it does not speak refuses the connection with an error naming both.
//
// Then frames, both ways, an 8-byte header and a body:
//
//	u32 body length | u8 type | 3 reserved bytes (0)
//
// Strings are a u8 length and that many bytes. vdisk ids are 1..64 of
// [a-z0-9-], group names 1..128 of [A-Za-z0-9_-] (they become file names).
// Frame types and their bodies, client to server:
//
//	1 Ship    u64 epoch | u32 cluster size | vdisk      opens a shipping session
//	2 Begin   tlog | prev (may be empty)                starts a group
//	3 Write   u64 cluster addr | u32 count | count x u32 CRC-32C | count clusters of data
//	4 Trim    u64 cluster addr | u32 count
//	5 Sync    u64 position                              fdatasync everything up to here
//	6 Drop    tlog                                      drop the group tlog and all before it
//	7 Fence   u64 epoch | vdisk
//	8 Groups  u64 epoch | vdisk
//	9 Read    u64 epoch | vdisk | from (may be empty: all groups)
//	10 Forget u64 epoch | vdisk
//
// Server to client:
//
//	64 Result  u8 status | u8 reserved (0) | u16 message length (<= 1024) | message
//	65 SyncAck u64 position
//	66 Group   u64 epoch | u32 entries | u64 bytes | tlog | prev
//	67 RecvAck u64 position                             everything up to here is in the server's files
//	3, 4       Write and Trim as above (the entries of a Read)
//
// Result statuses: 0 ok, 1 fenced (the epoch is below the vdisk's fence),
// 2 invalid (a malformed frame, a corrupt entry), 3 I/O error on the
// server, 4 not found (Read from a group the server does not have), 5
// gone (the session was ended by a newer session of the vdisk or by
// Forget).
//
// A Write entry carries at most MaxEntryData bytes of data; the cluster
// size is a power of two in 512..64 KiB, fixed per session by Ship.
//
// # Sessions
//
// A connection carries either one shipping session or admin requests.
// Shipping: the client sends Ship; the server answers Result (ok, or why
// not, and closes). Then the client streams Begin, Write, Trim, Drop and
// Sync frames without waiting. Begin, Write and Trim each take the next
// position (1, 2, ... per session); a Sync carries the position of the
// last frame before it, and the server answers SyncAck with that position
// once everything up to it is on disk and fdatasynced. Many Syncs may be
// in flight; one fdatasync answers all that arrived while the previous ran
// (group commit). Whenever it has read all that arrived and written it to
// its files (the kernel: it survives the owner's host, and the server's
// process), the server sends RecvAck with its position, if it grew: an
// owner in sync mode acknowledges a write once the DTL has it. The server
// sends nothing else on a healthy session. When
// it ends the session (a bad frame, a corrupt entry, a disk error, a fence
// by a newer epoch, a newer session of the same vdisk, Forget) it sends a
// Result saying why and closes.
//
// Admin: the client sends Fence, Groups, Read or Forget; the server
// answers with the request's frames (Group frames for Groups; for Read, a
// Group frame before the entries of each group) and ends with a Result.
// The connection may carry further admin requests; the clients here use
// one connection per call.
//
// A frame that cannot be decoded (unknown type, a length above the type's
// limit, reserved bytes set, names out of their alphabet, a Write whose
// data does not match its CRCs) is a protocol error: the reader closes the
// connection, without allocating what the frame claims; the server first
// sends a Result with status invalid saying why.
//
// # Disk format (version 1)
//
// DIR/<vdisk>/fence holds the fence:
//
//	magic "OVSDTLF" | u8 version | u64 epoch | u32 CRC-32C of all before
//
// written to fence.tmp, fsynced, renamed over fence and the directory
// fsynced, so that a fence survives a crash once Fence returned.
//
// DIR/<vdisk>/<n>-<tlog>.dtl is one group, n a 12-digit sequence number
// giving the ship order. It starts with a header
//
//	magic "OVSDTLG" | u8 version | u64 epoch | tlog | prev | u32 CRC-32C of all before
//
// and goes on with one record per entry:
//
//	u32 length (kind + body) | u32 CRC-32C of (length, kind, body) | u8 kind (1 write, 2 trim) | body
//
// where body is the Write or Trim frame body. A reader refuses a file of a
// version it does not know with an error naming both versions (the server
// refuses that vdisk until it is forgotten). At load a torn tail (a record
// running past the end of the file, or a bad last record, or a bad record
// followed only by zeros) is cut off; a corrupt record elsewhere ends the
// valid part of its group, with a log line.
//
// # Durability
//
// The server appends each entry to its group file with one buffered write
// (pushed to the kernel whenever the connection has nothing more to read,
// so a kill -9 of the server loses nothing it read) and never fsyncs per
// entry; a Sync makes it fdatasync each file written since the last sync
// and the directory when files were created or removed.
package dtl
