package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"chorus/node"
)

// TestAdvertiseHTTPAddr: a node announces the address given by
// --advertise-http-addr instead of the one it bound, which is what chorus
// status and the web client dial.
func TestAdvertiseHTTPAddr(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	hold, err := net.Listen("tcp", "127.0.0.30:0")
	if err != nil {
		t.Fatal(err)
	}
	peer := hold.Addr().String() // a free port for the node
	hold.Close()
	o, log, err := serveOptions([]string{"--id", "n1", "--data-dir", filepath.Join(t.TempDir(), "n1"),
		"--cluster-secret", "s", "--peer-addr", peer, "--peers", "n1=" + peer,
		"--http-addr", "127.0.0.30:0", "--advertise-http-addr", "chorus-1.example:8443", "--log-level", "error"}, io.Discard, noEnv)
	if err != nil {
		t.Fatal(err)
	}
	r, err := startNode(log, *o)
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
	resp, err := http.Get("http://" + r.addr + "/cluster/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st node.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 1 || st.Members[0].HTTPAddr != "chorus-1.example:8443" {
		t.Errorf("members %+v, want n1 announcing chorus-1.example:8443", st.Members)
	}
}

func noEnv(string) string { return "" }
