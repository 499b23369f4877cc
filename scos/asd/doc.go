// Package asd is the ASD (ALBA storage daemon, `ovs asd serve`): it keeps
// erasure-coded fragments on one local disk and serves them over HTTP. It
// knows nothing of objects or policies: the erasure-coded backend (package
// ec) decides what goes where. Every fragment file carries a checksummed
// header (see FragmentHeader); a put is acknowledged only once the file and
// its directory entry are fsynced; every read is verified and a fragment
// that fails its checksum is reported as corrupt, never served.
//
// Server is the daemon, Client talks to one, and LocalSet supervises ASDs
// run as child processes of this one (StartLocal).
package asd
