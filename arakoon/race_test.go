//go:build race

package arakoon

// raceSlowdown scales the tests' request timeouts: the race detector makes
// moving an 8 MiB value through raft (and TLS) many times slower.
const raceSlowdown = 10

// raceRaftSlowdown scales the raft timeouts of the tests' clusters.
const raceRaftSlowdown = 4
