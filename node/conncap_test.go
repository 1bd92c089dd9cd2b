package node_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"chorus/testcluster"
	"chorus/transport"
)

// TestWSConnsPerIPCap: with a cap of 5 sockets per client address, 1,000
// more upgrades from the same client are refused with 429 before they cost a
// log entry, while the players already connected go on editing; a socket on
// another node is not counted, and a closed socket frees its place.
func TestWSConnsPerIPCap(t *testing.T) {
	const capPerIP, extra = 5, 1000
	e := newWSPEnv(t, testcluster.Options{ConfigureAPI: func(_ int, cfg *transport.APIConfig) { cfg.MaxConnsPerIP = capPerIP }})
	id := e.create(0, sessionState)
	a, _ := e.join(0, id)
	b, _ := e.join(0, id)
	var rest []*wspClient
	for range capPerIP - 2 {
		cl, _ := e.join(0, e.create(0, sessionState))
		rest = append(rest, cl)
	}
	before := e.c.Members[0].Node().Status().LastLogIndex

	var refused, other atomic.Int64
	var sample atomic.Value // one refusal's header and body
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= extra {
				cl, resp, err := e.tryDial(0, id, "", nil, true)
				switch {
				case err == nil:
					cl.leave()
					other.Add(1)
				case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
					refused.Add(1)
					sample.CompareAndSwap(nil, resp.Header.Get("Retry-After")+" "+wspBody(resp))
				default:
					other.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if refused.Load() != extra || other.Load() != 0 {
		t.Fatalf("%d of %d upgrades beyond the cap refused with 429, %d otherwise", refused.Load(), extra, other.Load())
	}
	if s, _ := sample.Load().(string); !strings.HasPrefix(s, "10 ") || !strings.Contains(s, "Too many connections from this address") {
		t.Fatalf("a refusal said %q, want Retry-After 10 and the reason", s)
	}
	if grew := e.c.Members[0].Node().Status().LastLogIndex - before; grew > 20 {
		t.Fatalf("the refused upgrades wrote to the log: %d entries", grew)
	}

	// The players already connected still edit together.
	a.msg("set_tempo", `"tempo":133`)
	if f, _ := b.until("tempo_changed"); f.str("playerId") != a.ID {
		t.Fatalf("the other player got %s, want a's tempo_changed", f)
	}

	// Another node counts its own sockets; a closed socket frees a place.
	e.join(1, id)
	rest[0].leave()
	testcluster.Eventually(t, wspWait, func() error {
		cl, resp, err := e.tryDial(0, id, "", nil, true)
		if err != nil {
			return fmt.Errorf("upgrade after a socket closed: %v (%s)", err, wspRespString(resp))
		}
		cl.leave()
		return nil
	})
}
