// Package node runs one chorus cluster member. It is not built yet: it
// arrives with the node issue, and until then it holds only this comment and
// its TestMain.
//
// It will own the hashicorp/raft wiring with raft-boltdb/v2 for the log and
// stable store, the raft.FSM adapter over fsm.State (with the locks that fsm
// itself does not have), forwarding of proposals from a follower to the
// leader (one hop at most), the linearizable read barrier, presence epochs and
// the reaping of players owned by unreachable nodes, the local hub that fans
// applied events out to this node's subscribers, membership changes, and
// orderly shutdown.
//
// It must not parse flags (cmd/chorus does that and hands over a Config), and
// it must not know WebSocket frames or close codes (transport owns the wire).
package node
