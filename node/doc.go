// Package node runs one chorus cluster member: hashicorp/raft with
// raft-boltdb/v2 for the log and stable store (fsync on every write) and a
// file snapshot store, the raft.FSM adapter over fsm.State (the locks fsm
// itself does not have, batched applies, copy-on-write snapshots), Submit
// (apply on the leader, or forward to it over the peer RPC, one hop at most,
// retrying with the same op ID), the linearizable read barrier, presence
// epochs and the reaping of players owned by unreachable nodes or by nodes
// that are no members, the hub that fans applied events out to this node's
// subscribers, membership changes, backups and restores (backup.go), the
// peers.json recovery from a lost quorum (recover.go), the write-path
// metrics (metrics.go), and orderly shutdown.
//
// It must not parse flags (cmd/chorus does that and hands over a Config), and
// it must not know WebSocket frames or close codes (transport owns the wire).
package node
