package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/node"
	"chorus/testcluster"
)

// TestMetrics starts a one-node cluster as chorus serve does and scrapes
// GET /metrics: the raft figures, the sessions and Go's own metrics.
func TestMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	hold, err := net.Listen("tcp", "127.0.0.29:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := hold.Addr().String() // a free peer port for the node
	hold.Close()
	log := hclog.NewNullLogger()
	r, err := startNode(log, nodeOptions{
		cfg: node.Config{ID: "n1", DataDir: filepath.Join(t.TempDir(), "n1"), PeerAddr: ln,
			Peers: []node.Peer{{ID: "n1", Addr: ln}}, ClusterSecret: []byte("metrics-test-secret"), Logger: log},
		httpAddr: "127.0.0.29:0", adminToken: "t",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := r.stop(ctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	scrape := func() (string, error) {
		resp, err := http.Get("http://" + r.addr + "/metrics")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			return "", fmt.Errorf("GET /metrics: HTTP %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return string(b), err
	}
	testcluster.Eventually(t, 10*time.Second, func() error { // once the node leads
		resp, err := http.Post("http://"+r.addr+"/api/sessions", "application/json", bytes.NewReader([]byte(`{}`)))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("create a session: HTTP %d", resp.StatusCode)
		}
		return nil
	})
	testcluster.Eventually(t, 10*time.Second, func() error {
		m, err := scrape()
		if err != nil {
			return err
		}
		for _, want := range []string{
			`chorus_raft_state{state="leader"} 1`, `chorus_raft_state{state="follower"} 0`,
			`chorus_raft_members{suffrage="voter"} 1`, "chorus_raft_has_leader 1", "chorus_sessions 1",
			"chorus_sockets 0", `chorus_snapshot_pause_seconds{which="max"}`, "go_goroutines", "process_resident_memory_bytes",
		} {
			if !strings.Contains(m, want) {
				return fmt.Errorf("/metrics lacks %q", want)
			}
		}
		if strings.Contains(m, "chorus_raft_applied_index 0\n") || strings.Contains(m, "chorus_raft_term 0\n") {
			return fmt.Errorf("/metrics: nothing applied yet")
		}
		return nil
	})
}
