// Package tests holds OVS's end-to-end tests. They build cmd/ovs (or use
// the binary named by $OVS_BIN), run `ovs up` on a temporary data directory
// and drive it with real clients nobody here wrote: the ovs CLI itself,
// libnbd (nbdinfo, nbdcopy and its Python binding, the engine behind
// nbdsh), qemu-img and fio, and a Linux guest under qemu-system-x86_64
// whose disk is a vdisk behind qemu's NBD client (guest_test.go).
//
// Run them with `make test`, or on their own:
//
//	go build -o bin/ovs ./cmd/ovs
//	OVS_BIN=$PWD/bin/ovs go test -count=1 -timeout 20m ./tests/
//
// A missing client skips the tests that need it, unless OVS_REQUIRE_TOOLS=1
// (as `make test` sets), which turns a missing client into a failure.
// `go test -short` skips them all.
package tests
