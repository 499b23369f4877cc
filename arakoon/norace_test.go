//go:build !race

package arakoon

const raceSlowdown = 1

// raceRaftSlowdown scales the raft timeouts of the tests' clusters.
const raceRaftSlowdown = 1
