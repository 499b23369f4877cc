// Package nbd is the Network Block Device frontend of the volume driver: a
// server for the NBD protocol (doc/proto.md of the reference
// implementation) that serves Devices to standard clients such as the
// Linux kernel's nbd-client, libnbd (nbdinfo, nbdcopy, nbdsh), qemu and
// fio.
//
// The server speaks the fixed-newstyle handshake only (no oldstyle, no
// TLS) with NBD_OPT_GO/INFO/LIST/EXPORT_NAME/ABORT, structured replies and
// the base:allocation metadata context. In transmission it serves READ,
// WRITE (with FUA), FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FUA, FAST_ZERO),
// CACHE (a no-op hint), BLOCK_STATUS (REQ_ONE) and DISC, and advertises
// CAN_MULTI_CONN: Device.Flush must cover writes from every connection.
//
// Each connection has a reader goroutine that parses and checks requests
// and starts one goroutine per request, so replies may come out of order;
// a reply is written whole under the connection's write lock. The number
// of requests and payload bytes in flight per connection are bounded (see
// Options). Malformed or out-of-range requests get the NBD error the
// protocol asks for and the connection goes on; a request with a bad magic
// closes that connection only.
//
// Device errors map onto NBD errors with errors.Is: syscall.ENOSPC (and
// EDQUOT, EFBIG) to NBD_ENOSPC, syscall.EINVAL to NBD_EINVAL, syscall.EPERM,
// EROFS and EACCES to NBD_EPERM, anything else to NBD_EIO.
//
// The package imports nothing from the volume engine; the engine
// implements Exports and Device.
package nbd
