// Package transport owns everything that crosses a wire.
//
// The Keyboardia API (api.go, ws.go): every HTTP route of PROTOCOL.md §1 and
// the WebSocket of §3 and §4, over a Backend that a node implements. It owns
// the wire rules (routing, id checks, body limits, CORS, error shapes, the
// create rate limit, frame size, ping, invalid JSON, published-session
// errors, the per-socket message rate limit, the Origin allow-list) and maps
// errors to HTTP statuses and close codes in one place each. The debug
// routes' request and socket logs live here (apilogs.go). The built-in web
// client is embedded from web/ (web.go). The admin and health routes of
// DESIGN.md §7 are in admin.go.
// NewServer (server.go) is the HTTP server they run in, with the limits on
// a request's headers (a WebSocket upgrade's included) and idle connections.
//
// The peer port (peer.go): each node has one peer TCP listener
// that carries both hashicorp/raft's stream traffic and chorus's own RPCs.
// Every connection, in either direction, first passes a mutual HMAC-SHA256
// challenge over the cluster secret (handshake.go); a connection that fails
// it is closed before its stream-kind byte, or any byte after it, is read.
// With PeerConfig.TLS (tls.go) that challenge runs inside mutual TLS 1.3,
// where both ends present a certificate of the cluster's CA; tlscert.go
// creates such a CA and its node certificates.
// The kind byte then selects a raft stream, handed out by
// Peer.RaftListener and opened by Peer.DialRaft (node wraps the two into a
// raft.StreamLayer), or a multiplexed RPC connection (rpc.go): Peer.Call on
// one side, an RPCHandler on the other, with one persistent connection per
// target address, bounded handler concurrency and errors mapped to RPC codes
// in one function. Outgoing dials bind to the host of the listen address, so
// per-address firewall rules can cut single links. Faults (faults.go) lets
// tests refuse, drop or delay each directed link between node ids; product
// code passes nil.
//
// It must not import node or fsm, and must not touch raft: node translates
// between the client wire types defined here and the replicated fsm.Command,
// so that a protocol change never rewrites the log, and adapts the peer port
// to raft's interfaces itself.
package transport
