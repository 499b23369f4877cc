// Package arakoon is OVS's consistent, replicated key-value store for
// cluster metadata, in the spirit of Open vStorage's Arakoon.
//
// Consensus is hashicorp/raft: the log and raft's own state live in
// raft-boltdb, snapshots in a FileSnapshotStore, peers talk over raft's
// TCP transport. The state machine (fsm.go) is a bbolt store that applies
// each batch of committed entries in one synced transaction and records
// the last applied index with it, so a node restarts from its store
// instead of replaying from a snapshot; raft compacts its log behind
// snapshots streamed from the store (snapshot.go), and a follower that
// fell behind the compacted log is sent one.
//
// Clients speak a small binary protocol (protocol.go): length-prefixed
// frames, versioned from their first byte, with request ids so that
// requests on one connection run concurrently. Reads are linearizable
// (served by the master after one barrier per term, confirmed with
// VerifyLeader after reading) unless a stale read is asked for. Mutations
// run under a client session registered in the replicated state: each
// carries a sequence number and the lowest number its client still waits
// for, and the state machine keeps the results a client may retry, so a
// retry after a timeout or a master change never applies twice.
//
// Files: config.go (the cluster file), server.go (a node), client.go
// (the client), fsm.go and snapshot.go (the state machine), protocol.go,
// record.go and codec.go (wire and stored formats), bench.go (ovs
// arakoon bench), logging.go (raft's logging onto log/slog).
package arakoon
