package testcluster

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHTTPCluster creates a session through one node's API and reads it
// through another, after a restart of the first.
func TestHTTPCluster(t *testing.T) {
	c := New(t, Options{HTTP: true, FirstIP: 81})
	resp, err := http.Post(c.Members[0].URL()+"/api/sessions", "application/json", strings.NewReader(`{"state":{"tracks":[],"tempo":99,"swing":0,"version":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("create: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	c.Restart(0)
	Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(c.Members[0].URL() + "/api/sessions/" + created.ID)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var s struct{ State struct{ Tempo float64 } }
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			return err
		}
		if s.State.Tempo != 99 {
			t.Fatalf("tempo %v", s.State.Tempo)
		}
		return nil
	})
	resp, err = http.Get(c.Members[2].URL() + "/api/sessions/" + created.ID)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("read on n3: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
}
