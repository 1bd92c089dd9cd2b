package transport

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSlowBodyRefused: a client that sends its headers and then trickles
// the body (slow loris) gets 408 once BodyTimeout has passed, whether it
// stops or keeps sending a byte now and then, and the backend sees nothing.
func TestSlowBodyRefused(t *testing.T) {
	const bodyTimeout = 300 * time.Millisecond
	be := &countingCreates{}
	srv := httptest.NewServer(NewAPI(APIConfig{Backend: be, BodyTimeout: bodyTimeout}))
	defer srv.Close()
	for _, trickle := range []bool{false, true} {
		code, _, took := slowRequest(t, srv.Listener.Addr().String(),
			"POST /api/sessions HTTP/1.1\r\nHost: chorus.test\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"state\":", trickle, 5*time.Second)
		if code != http.StatusRequestTimeout || took < bodyTimeout || took > bodyTimeout+2*time.Second {
			t.Errorf("trickle %v: HTTP %d after %v, want 408 after about %v", trickle, code, took, bodyTimeout)
		}
	}
	if n := be.creates(); n != 0 {
		t.Errorf("the backend got %d creates from slow bodies", n)
	}
	// A body in time still works.
	resp, err := http.Post(srv.URL+"/api/sessions", "application/json", strings.NewReader(`{"state":{"tracks":[],"tempo":120,"swing":0,"version":1}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || be.creates() != 1 {
		t.Errorf("a prompt create: HTTP %d, %d creates", resp.StatusCode, be.creates())
	}
}

// countingCreates is a Backend that counts the sessions it is asked to create.
type countingCreates struct {
	Backend
	mu sync.Mutex
	n  int
}

func (c *countingCreates) CreateSession(context.Context, json.RawMessage, json.RawMessage) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return "11111111-1111-4111-8111-11111111111" + strconv.Itoa(c.n%10), nil
}

func (c *countingCreates) creates() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}
