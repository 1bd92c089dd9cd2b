package testcluster

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"testing"
	"time"
)

// BenchmarkFailover SIGKILLs the leader of a cluster of three chorus serve
// processes (default timeouts: 500 ms heartbeat and election, 250 ms lease)
// and measures the time until the two survivors agree on a new leader. It
// runs rounds=10 kills per benchmark iteration and reports the median and
// the maximum:
//
//	go test ./testcluster -run '^$' -bench Failover -benchtime 1x
func BenchmarkFailover(b *testing.B) {
	bin, err := BuildBinary(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, err := StartProcs(ctx, ProcOptions{Binary: bin, Dir: b.TempDir(), FirstIP: 51})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	const rounds = 10
	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		for range rounds {
			leader, err := p.WaitLeader(ctx, 15*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if err := p.Kill(leader); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			next := -1
			if err := Poll(10*time.Second, func() error {
				var err error
				next, err = p.WaitLeader(ctx, 0)
				return err
			}); err != nil {
				b.Fatal(err)
			}
			took = append(took, time.Since(start))
			b.Logf("killed %s; %s leads after %v", p.Nodes[leader].ID, p.Nodes[next].ID, took[len(took)-1].Round(time.Millisecond))
			if err := p.Start(leader); err != nil {
				b.Fatal(err)
			}
			if err := Poll(20*time.Second, func() error { return ready(ctx, p.Nodes[leader].HTTPAddr) }); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "median-ms")
	b.ReportMetric(float64(took[len(took)-1].Milliseconds()), "max-ms")
}

func ready(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s not ready: %d", addr, resp.StatusCode)
	}
	return nil
}
