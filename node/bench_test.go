package node_test

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"chorus/fsm"
	"chorus/node"
	"chorus/testcluster"
	"chorus/testcluster/bench"
)

// The benchmarks in this file compare chorus's commit path (node.Submit,
// writers spread over all three nodes, followers forwarding to the leader)
// with bare hashicorp/raft on the same stores, timeouts and payload, writers
// on the leader. Run both in one invocation and compare ratios:
//
//	go test ./node -run '^$' -bench 'Commit' -benchtime 5000x -count 3
//
// Each op is one committed entry: a toggle_step command (~200 bytes).

const benchSession = "00000000-0000-4000-8000-00000000b001"

func BenchmarkCommit(b *testing.B) {
	b.Run("chorus-via-follower/writers=1", func(b *testing.B) { benchChorusVia(b, 1, true) })
	for _, writers := range []int{1, 64, 256} {
		b.Run("chorus/writers="+strconv.Itoa(writers), func(b *testing.B) { benchChorus(b, writers) })
		b.Run("bare-raft/writers="+strconv.Itoa(writers), func(b *testing.B) { benchBareRaft(b, writers) })
	}
}

// runWriters splits b.N ops over writers goroutines and reports ops/s and
// latency percentiles.
func runWriters(b *testing.B, writers int, op func(w, i int) error) {
	b.Helper()
	lat := make([][]time.Duration, writers)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := op(w, i); err != nil {
					failed.Add(1)
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d ops failed", f, b.N)
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

func benchChorus(b *testing.B, writers int) { benchChorusVia(b, writers, false) }

// benchChorusVia spreads writers over all nodes, or with followersOnly puts
// them on the followers (every write forwarded, answered after the
// follower's own apply).
func benchChorusVia(b *testing.B, writers int, followersOnly bool) {
	c := testcluster.New(b, testcluster.Options{FirstIP: 61})
	ctx := testcluster.Context(b, 10*time.Minute)
	leader := c.Members[c.WaitLeader(10*time.Second)].Node()
	if _, err := leader.Submit(ctx, fsm.Command{Kind: fsm.KindCreate, Session: benchSession,
		State: []byte(`{"tracks":[{"id":"t1","name":"Kick","sampleId":"kick","steps":[]}]}`)}); err != nil {
		b.Fatal(err)
	}
	var nodes []*node.Node
	for _, m := range c.Members {
		n := m.Node()
		if _, err := n.Submit(ctx, fsm.Command{Kind: fsm.KindPlayerJoin, Session: benchSession,
			Player: "p-" + m.ID, Node: m.ID, Epoch: n.Epoch()}); err != nil {
			b.Fatal(err)
		}
		if !followersOnly || n != leader {
			nodes = append(nodes, n)
		}
	}
	runWriters(b, writers, func(w, i int) error {
		n := nodes[w%len(nodes)]
		res, err := n.Submit(ctx, fsm.Command{Kind: fsm.KindToggleStep, Session: benchSession,
			Player: "p-" + n.ID(), TrackID: "t1", Step: i % 128})
		if err == nil && res.Status != fsm.StatusOK {
			err = fmt.Errorf("status %s", res.Status)
		}
		return err
	})
}

// benchBareRaft runs bare hashicorp/raft (bench.StartBareRaft) with the same
// stores, timeouts, batching and payload as chorus, writers on the leader.
func benchBareRaft(b *testing.B, writers int) {
	br, err := bench.StartBareRaft(b.TempDir(), 71)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	payload, err := fsm.Encode(fsm.Command{Kind: fsm.KindToggleStep, Op: fsm.OpID{1}, At: 1700000000000,
		Session: benchSession, Player: "p-n1", TrackID: "t1", Step: 3})
	if err != nil {
		b.Fatal(err)
	}
	runWriters(b, writers, func(int, int) error { return br.Apply(payload, 5*time.Second) })
}
