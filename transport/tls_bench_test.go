package transport

import (
	"bytes"
	"context"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// BenchmarkPeerTLS compares the peer port with the HMAC handshake alone and
// with mutual TLS under it: an RPC of 1 KiB each way on a warm connection,
// serial and from many goroutines, and the cost of a new connection (TCP,
// TLS, HMAC handshake and stream kind, as raft pays for each new stream).
//
//	go test ./transport -run '^$' -bench PeerTLS -benchtime 2000x -count 3
func BenchmarkPeerTLS(b *testing.B) {
	ca := testCA(b)
	for _, mode := range []struct {
		name     string
		cli, srv *PeerTLS
	}{
		{"hmac", nil, nil},
		{"mtls", peerTLS(b, ca, "cli", tlsIP2), peerTLS(b, ca, "srv", tlsIP1)},
	} {
		setup := func(b *testing.B) (client, server *Peer) {
			// newPeer fails the benchmark itself; its log is not read.
			server, _ = newPeer(b, PeerConfig{ID: "srv", Addr: tlsIP1 + ":0", TLS: mode.srv, Logger: hclog.NewNullLogger()})
			client, _ = newPeer(b, PeerConfig{ID: "cli", Addr: tlsIP2 + ":0", TLS: mode.cli, Logger: hclog.NewNullLogger()})
			return client, server
		}
		req := bytes.Repeat([]byte("x"), 1024)
		b.Run(mode.name+"/rpc", func(b *testing.B) {
			client, server := setup(b)
			addr := server.Addr().String()
			b.SetBytes(int64(2 * len(req)))
			b.ResetTimer()
			for b.Loop() {
				if _, err := client.Call(context.Background(), addr, 1, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(mode.name+"/rpc-parallel", func(b *testing.B) {
			client, server := setup(b)
			addr := server.Addr().String()
			b.SetBytes(int64(2 * len(req)))
			b.SetParallelism(16)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.Call(context.Background(), addr, 1, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(mode.name+"/connect", func(b *testing.B) {
			client, server := setup(b)
			stop := raftAccepts(server)
			defer stop()
			addr := server.Addr().String()
			b.ResetTimer()
			for b.Loop() {
				c, err := client.DialRaft(addr, 0)
				if err != nil {
					b.Fatal(err)
				}
				_ = c.Close() // a benchmark conn; nothing was sent on it
			}
		})
	}
}
