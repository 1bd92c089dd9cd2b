// Package transport owns everything that crosses a wire. It is not built yet:
// it arrives in a later issue, and until then it holds only this comment and
// its TestMain.
//
// It will own the client HTTP and WebSocket API that the Keyboardia client
// speaks, the peer port (the first-byte stream mux, peer authentication, the
// Raft stream layer and the node-to-node RPC client and server for
// forwarding, read index, cursor relay and join), the mapping of errors to
// close codes and RPC status, and the embedded web client.
//
// It must not import node or fsm, and must not touch raft: node translates
// between the client wire types defined here and the replicated fsm.Command,
// so that a protocol change never rewrites the log.
package transport
