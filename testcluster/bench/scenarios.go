package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"chorus/fsm"
	"chorus/testcluster"
)

// steady: sessions × players editing at a set rate, with every socket
// measuring when each op's broadcast reaches it; then what a fresh join
// (snapshot) and a resume (?since=) cost under that load.
func (r *runner) steady(ctx context.Context) ([]Figure, error) {
	z := r.opts.Sizes
	c, err := r.startCluster(ctx, ScenarioSteady, 3, 0)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	r.say("steady: %d sessions × %d players, %g mutations/s per session", z.Sessions, z.Players, z.Rate)
	l, err := newLoad(ctx, r.hc, c.addrs, z.Sessions, z.Players, -1, func(s string) { r.say("steady: %s", s) })
	if err != nil {
		return nil, err
	}
	defer l.close()
	var joins []time.Duration
	var joinBytes float64
	for _, j := range l.joins {
		joins = append(joins, j.took)
		joinBytes += float64(j.bytes)
	}
	lctx, stop := context.WithCancel(ctx)
	wg := l.openLoop(lctx, z.Rate, r.opts.Seed)
	defer func() { stop(); wg.Wait() }()
	if !testcluster.Hold(ctx, z.Warmup) {
		return nil, ctx.Err()
	}
	from := time.Now()
	d0, b0 := l.counters()
	if !r.holdWithProgress(ctx, "steady", z.Duration, l) {
		return nil, ctx.Err()
	}
	to := time.Now()
	d1, b1 := l.counters()
	resumes, resumeBytes, err := r.resumes(ctx, l, min(20, len(l.players)))
	stop()
	wg.Wait()
	if err != nil {
		return nil, err
	}
	r.settle(ctx, l)
	st := l.stats(from, to)
	secs := to.Sub(from).Seconds()
	figs := []Figure{
		{Name: "mutations sent", Value: float64(st.sent) / secs, Unit: "ops/s"},
		{Name: "mutations acknowledged", Value: float64(len(st.ack)) / secs, Unit: "ops/s",
			Note: fmt.Sprintf("%d of %d ops sent in the window were acknowledged", len(st.ack), st.sent)},
		{Name: "fan-out", Value: float64(d1-d0) / secs, Unit: "msgs/s", Note: fmt.Sprintf("%.1f MB/s received by the players", float64(b1-b0)/secs/1e6)},
	}
	e2e := latencyFigures("", "end-to-end", st.e2e)
	e2e[0].Target, e2e[1].Target = atMost(4), atMost(15)
	e2e[0].Note = "send on one node → broadcast received on another player's socket, any node; every such receipt is a sample"
	figs = append(figs, e2e...)
	all := latencyFigures("", "all sockets", st.all)
	all[0].Note = "send → the last socket of the session has the broadcast"
	figs = append(figs, all...)
	figs = append(figs, latencyFigures("", "acknowledgement", st.ack)[:2]...)
	if c.procs != nil {
		if leader, err := c.procs.WaitLeader(ctx, 5*time.Second); err == nil {
			var onFollowers []time.Duration
			for n, ds := range st.ackByNode {
				if n != leader {
					onFollowers = append(onFollowers, ds...)
				}
			}
			figs = append(figs,
				Figure{Name: "acknowledgement p50, leader's sockets", Value: percentile(st.ackByNode[leader], 0.5), Unit: "ms"},
				Figure{Name: "acknowledgement p50, followers' sockets", Value: percentile(onFollowers, 0.5), Unit: "ms",
					Note: "a write on a follower is forwarded to the leader and acknowledged once the follower applied it"})
		}
	}
	figs = append(figs,
		Figure{Name: "join (snapshot) p50", Value: percentile(joins, 0.5), Unit: "ms",
			Note: fmt.Sprintf("%d sockets opened 64 at a time before the load; %.0f bytes until the snapshot", len(joins), joinBytes/float64(len(joins)))},
		Figure{Name: "join (snapshot) p99", Value: percentile(joins, 0.99), Unit: "ms"},
		Figure{Name: "resume (?since=) p50", Value: percentile(resumes, 0.5), Unit: "ms",
			Note: fmt.Sprintf("%d players under load, each about %d broadcasts behind; %.0f bytes with the replay", len(resumes), resumeLag, resumeBytes)},
		Figure{Name: "resume (?since=) max", Value: percentile(resumes, 1), Unit: "ms"},
		Figure{Name: "sockets dropped", Value: float64(st.closed), Unit: "sockets", Target: atMost(0)},
	)
	figs = append(figs, c.rssFigures("")...)
	return figs, nil
}

// resumeLag is how many broadcasts a resuming player misses.
const resumeLag = 20

// resumes disconnects one player in each of n sessions spread over the
// load, waits until the session's other players have had resumeLag
// broadcasts, and reconnects it with ?since=. It returns how long each took
// until its replay was complete, and the mean bytes that took.
func (r *runner) resumes(ctx context.Context, l *load, n int) ([]time.Duration, float64, error) {
	if len(l.sessions[0].players) < 2 {
		return nil, 0, nil // nobody else to keep the session moving
	}
	n = min(n, len(l.sessions))
	out := make([]time.Duration, n)
	bytes := make([]int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		s := l.sessions[i*len(l.sessions)/n]
		p, other := s.players[i%len(s.players)], s.players[(i+1)%len(s.players)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.disconnect()
			since := p.seq.Load()
			base, _ := other.counters()
			errs[i] = testcluster.Poll(30*time.Second, func() error {
				if d, _ := other.counters(); d >= base+resumeLag || ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("session %s did not have %d broadcasts in 30 s", s.id, resumeLag)
			})
			if errs[i] != nil {
				return
			}
			cost, err := p.connect(ctx, l.hc, since)
			out[i], bytes[i], errs[i] = cost.took, cost.bytes, err
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, 0, fmt.Errorf("resume: %w", err) // the first says enough
		}
	}
	total := 0
	for _, b := range bytes {
		total += b
	}
	return out, float64(total) / float64(n), ctx.Err()
}

// settle waits (at most 5 s) until every op sent has reached every socket
// that was open when it was sent, so that late broadcasts are counted.
func (r *runner) settle(ctx context.Context, l *load) {
	_ = testcluster.Poll(5*time.Second, func() error { // a timeout leaves those ops unacknowledged, which the figures show
		if ctx.Err() != nil {
			return nil
		}
		for _, s := range l.sessions {
			s.mu.Lock()
			n := len(s.pending)
			s.mu.Unlock()
			if n > 0 {
				return errors.New("broadcasts still on their way")
			}
		}
		return nil
	})
}

// holdWithProgress waits d, printing the load's rates every second.
func (r *runner) holdWithProgress(ctx context.Context, what string, d time.Duration, l *load) bool {
	end := time.Now().Add(d)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	last, _ := l.counters()
	lastAt := time.Now()
	for {
		left := time.Until(end)
		if left <= 0 {
			r.sayDone()
			return true
		}
		select {
		case <-ctx.Done():
			r.sayDone()
			return false
		case <-time.After(min(left, time.Second)):
		case now := <-t.C:
			n, _ := l.counters()
			r.say("%s: %.0f broadcasts/s received, %v left", what, float64(n-last)/now.Sub(lastAt).Seconds(), left.Round(time.Second))
			last, lastAt = n, now
		}
	}
}

// burst: writers send as fast as their acknowledgements allow, one session
// each, against three nodes, one node, and bare raft with as many writers.
func (r *runner) burst(ctx context.Context) ([]Figure, error) {
	z := r.opts.Sizes
	c3, err := r.startCluster(ctx, ScenarioBurst, 3, 0)
	if err != nil {
		return nil, err
	}
	defer c3.stop()
	var c1 *cluster
	var bare *BareRaft
	if len(r.opts.Targets) == 0 {
		if c1, err = r.startCluster(ctx, ScenarioBurst, 1, 3); err != nil {
			return nil, err
		}
		defer c1.stop()
		if bare, err = StartBareRaft(c3.dir, r.opts.FirstIP+4); err != nil {
			return nil, err
		}
		defer bare.Close()
	}
	// The entry a chorus toggle_step makes, give or take the ids' lengths.
	clientSeq := int64(12)
	payload, err := fsm.Encode(fsm.Command{Kind: fsm.KindToggleStep, Op: fsm.OpID{1}, At: time.Now().UnixMilli(),
		Session: "00000000-0000-4000-8000-00000000b001", Player: "p-0123456789", TrackID: "t1", Step: 3, ClientSeq: &clientSeq})
	if err != nil {
		return nil, err
	}
	var figs []Figure
	for _, w := range z.Writers {
		f, err := r.burstOf(ctx, w, c3, c1, bare, payload)
		figs = append(figs, f...)
		if err != nil {
			return figs, err
		}
	}
	return figs, nil
}

// contender is one system a burst compares, run once per repetition.
type contender struct {
	name string
	run  func() float64 // ops per second
	ops  []float64
}

// burstOf runs w writers against: chorus with every writer's socket on the
// leader (where bare raft's writers are too: the like-for-like comparison),
// chorus with the sockets spread over the nodes (two writes in three
// forwarded), one chorus node, and bare raft; the runs interleave, and
// medians count.
func (r *runner) burstOf(ctx context.Context, w int, c3, c1 *cluster, bare *BareRaft, payload []byte) ([]Figure, error) {
	z := r.opts.Sizes
	r.say("burst: %d writers: opening sockets", w)
	leader, err := leaderOf(ctx, r.hc, c3.addrs)
	if err != nil {
		return nil, err
	}
	var loads []*load
	defer func() {
		for _, l := range loads {
			l.close()
		}
	}()
	open := func(addrs []string, on int) (*load, error) {
		l, err := newLoad(ctx, r.hc, addrs, w, 1, on, nil)
		if err == nil {
			loads = append(loads, l)
		}
		return l, err
	}
	var lat []time.Duration
	var lost, bareFailed int64
	closed := func(l *load, keep bool) func() float64 {
		return func() float64 {
			ops, ls, lo := r.closedRun(ctx, l, z.BurstTime)
			lost += lo
			if keep {
				lat = append(lat, ls...)
			}
			return ops
		}
	}
	onLeader, err := open(c3.addrs, leader)
	if err != nil {
		return nil, err
	}
	spread, err := open(c3.addrs, -1)
	if err != nil {
		return nil, err
	}
	cs := []*contender{{name: "chorus, writers on the leader", run: closed(onLeader, true)}, {name: "chorus, writers spread", run: closed(spread, false)}}
	if c1 != nil {
		one, err := open(c1.addrs, -1)
		if err != nil {
			return nil, err
		}
		cs = append(cs, &contender{name: "chorus, 1 node", run: closed(one, false)})
	}
	if bare != nil {
		cs = append(cs, &contender{name: "bare raft", run: func() float64 {
			ops, failed := bareRun(ctx, bare, w, payload, z.BurstTime)
			bareFailed += failed
			return ops
		}})
	}
	for rep := 1; rep <= z.Repeats && ctx.Err() == nil; rep++ {
		for _, c := range cs {
			r.say("burst: %d writers, run %d of %d: %s", w, rep, z.Repeats, c.name)
			c.ops = append(c.ops, c.run())
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var detail []string
	for _, c := range cs {
		detail = append(detail, c.name+" "+runs(c.ops))
	}
	name := fmt.Sprintf("%d writers", w)
	note := fmt.Sprintf("median of %d runs of %v each, ops/s: %s; %d chorus ops unacknowledged, %d bare raft applies failed",
		len(cs[0].ops), z.BurstTime, strings.Join(detail, "; "), lost, bareFailed)
	if now, err := leaderOf(ctx, r.hc, c3.addrs); err != nil || now != leader {
		note += "; leadership moved during the runs, so some of the writers on the leader were on a follower"
	}
	lead := Figure{Name: name + " on the leader", Value: median(cs[0].ops), Unit: "ops/s", Note: note}
	spreadF := Figure{Name: name + " spread over the nodes", Value: median(cs[1].ops), Unit: "ops/s"}
	if bare != nil {
		base := median(cs[len(cs)-1].ops)
		for _, f := range []*Figure{&lead, &spreadF} {
			f.Baseline, f.BaselineValue, f.Ratio = "bare raft", base, f.Value/base
		}
		lead.Target = ratioAtLeast(0.8)
	}
	figs := []Figure{lead, spreadF}
	if c1 != nil {
		figs = append(figs, Figure{Name: name + " on 1 node", Value: median(cs[2].ops), Unit: "ops/s"})
	}
	return append(figs, latencyFigures("", name+" on the leader, acknowledgement", lat)[:2]...), nil
}

// leaderOf returns the index of the node in addrs that reports itself leader.
func leaderOf(ctx context.Context, hc *http.Client, addrs []string) (int, error) {
	leader := -1
	err := testcluster.Poll(15*time.Second, func() error {
		for i, a := range addrs {
			b, status, err := testcluster.HTTPDo(ctx, hc, http.MethodGet, "http://"+a+"/cluster/status", "", nil)
			if err != nil || status != http.StatusOK {
				return fmt.Errorf("status of %s: HTTP %d %v", a, status, err)
			}
			var st struct{ State string }
			if json.Unmarshal(b, &st) == nil && st.State == "leader" {
				leader = i
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("no node reports itself leader")
	})
	if err == nil && leader < 0 {
		err = ctx.Err()
	}
	return leader, err
}

// runs prints per-run figures.
func runs(vs []float64) string {
	if len(vs) == 0 {
		return "-"
	}
	s := ""
	for i, v := range vs {
		if i > 0 {
			s += ", "
		}
		s += num(v)
	}
	return s
}

// closedRun runs every player of l as a closed-loop writer for a warm-up of
// a fifth of d and then d, and returns the acknowledged ops per second in
// d, their acknowledgement latencies and the ops that were not acknowledged.
func (r *runner) closedRun(ctx context.Context, l *load, d time.Duration) (float64, []time.Duration, int64) {
	l.reset()
	warm := d / 5
	cctx, cancel := context.WithTimeout(ctx, warm+d)
	defer cancel()
	from := time.Now().Add(warm)
	_, lost := closedLoop(cctx, l.players, r.opts.Seed)
	to := from.Add(d)
	st := l.stats(from, to)
	return float64(len(st.ack)) / d.Seconds(), st.ack, lost
}

// bareRun applies payload from writers goroutines for a warm-up of a fifth
// of d and then d, and returns the entries committed per second in d and
// the applies that failed (a failed one waits 10 ms before the next).
func bareRun(ctx context.Context, b *BareRaft, writers int, payload []byte, d time.Duration) (float64, int64) {
	warm := d / 5
	start := time.Now()
	from, to := start.Add(warm), start.Add(warm+d)
	var n, failed atomic.Int64
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(to) {
				err := b.Apply(payload, ackTimeout)
				now := time.Now()
				switch {
				case err != nil:
					failed.Add(1)
					testcluster.Hold(ctx, 10*time.Millisecond)
				case now.After(from) && now.Before(to):
					n.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return float64(n.Load()) / d.Seconds(), failed.Load()
}

// fanout: one session of up to 10 players, all writing as fast as their
// acknowledgements allow; every op reaches every socket.
func (r *runner) fanout(ctx context.Context) ([]Figure, error) {
	z := r.opts.Sizes
	c, err := r.startCluster(ctx, ScenarioFanout, 3, 0)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	l, err := newLoad(ctx, r.hc, c.addrs, 1, z.FanoutPlayers, -1, nil)
	if err != nil {
		return nil, err
	}
	defer l.close()
	var ops, fan []float64
	var all, e2e []time.Duration
	for rep := 1; rep <= z.Repeats; rep++ {
		r.say("fanout: 1 session × %d players, run %d of %d", z.FanoutPlayers, rep, z.Repeats)
		d0, _ := l.counters()
		t0 := time.Now()
		o, _, _ := r.closedRun(ctx, l, z.BurstTime)
		d1, _ := l.counters()
		ops, fan = append(ops, o), append(fan, float64(d1-d0)/time.Since(t0).Seconds())
		st := l.stats(t0.Add(z.BurstTime/5), t0.Add(z.BurstTime/5+z.BurstTime))
		all, e2e = append(all, st.all...), append(e2e, st.e2e...)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	figs := []Figure{
		{Name: "mutations", Value: median(ops), Unit: "ops/s", Note: fmt.Sprintf("median of %d runs: %s", len(ops), runs(ops))},
		{Name: "fan-out", Value: median(fan), Unit: "msgs/s", Note: "broadcasts received per second over all the session's sockets"},
	}
	figs = append(figs, latencyFigures("", "end-to-end", e2e)[:2]...)
	figs = append(figs, latencyFigures("", "all sockets", all)[:2]...)
	return figs, nil
}

// idle: many sockets on one node, with an occasional broadcast; its memory
// per socket and the latency of those broadcasts.
func (r *runner) idle(ctx context.Context) ([]Figure, error) {
	z := r.opts.Sizes
	c, err := r.startCluster(ctx, ScenarioIdle, 3, 0)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	const on = 0 // every socket on n1
	sessions := z.IdleSockets / 10
	r.say("idle: creating %d sessions", sessions)
	l, err := prepareLoad(ctx, r.hc, c.addrs, sessions, 10, on)
	if err != nil {
		return nil, err
	}
	// The sessions exist: what n1 grows by from here on is the sockets'.
	before, err := c.rssKiB(on)
	if err != nil {
		return nil, err
	}
	r.say("idle: opening %d sockets on n1 (%d sessions of 10 players)", sessions*10, sessions)
	t0 := time.Now()
	if err := l.connect(ctx, func(s string) { r.say("idle: %s", s) }); err != nil {
		return nil, err
	}
	defer l.close()
	opened := time.Since(t0)
	lctx, stop := context.WithCancel(ctx)
	wg := l.openLoop(lctx, z.IdleRate/float64(sessions), r.opts.Seed)
	from := time.Now()
	ok := r.holdWithProgress(ctx, "idle", z.IdleTime, l)
	to := time.Now()
	stop()
	wg.Wait()
	if !ok {
		return nil, ctx.Err()
	}
	r.settle(ctx, l)
	after, err := c.rssKiB(on)
	if err != nil {
		return nil, err
	}
	st := l.stats(from, to)
	n := float64(len(l.players))
	figs := []Figure{
		{Name: "memory per socket", Value: (after - before) / n, Unit: "KiB", Target: atMost(20),
			Note: fmt.Sprintf("RSS of n1 %.0f MiB with the sessions, %.0f MiB with their %d sockets open too (after %v of idle load); sockets opened in %v",
				before/1024, after/1024, len(l.players), z.IdleTime, opened.Round(time.Millisecond))},
		{Name: "broadcasts", Value: float64(st.sent) / to.Sub(from).Seconds(), Unit: "ops/s"},
	}
	figs = append(figs, latencyFigures("", "all sockets", st.all)[:2]...)
	figs = append(figs, Figure{Name: "sockets dropped", Value: float64(st.closed), Unit: "sockets", Target: atMost(0)})
	return figs, nil
}

// failover: SIGKILL the leader under steady load, Rounds times; how soon
// writes resume and every player is caught up, and whether the players of
// the surviving nodes kept their sockets.
func (r *runner) failover(ctx context.Context) ([]Figure, error) {
	z := r.opts.Sizes
	c, err := r.startCluster(ctx, ScenarioFailover, 3, 0)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	l, err := newLoad(ctx, r.hc, c.addrs, z.FailoverSessions, z.Players, -1, nil)
	if err != nil {
		return nil, err
	}
	defer l.close()
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	wg := l.openLoop(lctx, z.Rate, r.opts.Seed)
	defer wg.Wait()
	var rwg sync.WaitGroup
	rwg.Add(1)
	go func() { defer rwg.Done(); l.reconnector(lctx, c) }()
	defer rwg.Wait()
	defer stop()

	var resume, caught []float64
	dropped := int64(0)
	for round := 1; round <= z.Rounds; round++ {
		if !testcluster.Hold(ctx, 2*time.Second) {
			return nil, ctx.Err()
		}
		leader, err := c.procs.WaitLeader(ctx, 15*time.Second)
		if err != nil {
			return nil, err
		}
		// No mark while the players' receipts are reset, so that none of
		// them records a broadcast of the previous round as after this kill.
		l.mark.Store(noMark)
		survivors := map[*player]int64{}
		for _, p := range l.players {
			p.firstAfter.Store(0)
			p.ackAfter.Store(0)
			if int(p.node.Load()) != leader && p.live.Load() {
				survivors[p] = p.drops.Load()
			}
		}
		kill := time.Now()
		l.mark.Store(kill.UnixNano())
		if err := c.procs.Kill(leader); err != nil {
			return nil, err
		}
		r.say("failover: round %d of %d: killed the leader %s", round, z.Rounds, c.procs.Nodes[leader].ID)
		var resumed, all time.Duration
		err = testcluster.Poll(30*time.Second, func() error {
			if ctx.Err() != nil {
				return nil
			}
			first, last, waiting := int64(math.MaxInt64), int64(0), 0
			for _, p := range l.players {
				if a := p.ackAfter.Load(); a > 0 {
					first = min(first, a)
				}
				if f := p.firstAfter.Load(); f > 0 {
					last = max(last, f)
				} else {
					waiting++
				}
			}
			if first == math.MaxInt64 {
				return errors.New("no write acknowledged since the kill")
			}
			resumed = time.Duration(first - kill.UnixNano())
			if waiting > 0 {
				return fmt.Errorf("%d players have not caught up", waiting)
			}
			all = time.Duration(last - kill.UnixNano())
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("round %d: %w", round, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		for p, d := range survivors {
			dropped += p.drops.Load() - d
		}
		resume, caught = append(resume, ms(resumed)), append(caught, ms(all))
		r.say("failover: round %d of %d: writes resumed after %v, every player caught up after %v; restarting %s",
			round, z.Rounds, resumed.Round(time.Millisecond), all.Round(time.Millisecond), c.procs.Nodes[leader].ID)
		if err := c.procs.Start(leader); err != nil {
			return nil, err
		}
		if err := c.ready(ctx, 30*time.Second); err != nil {
			return nil, err
		}
	}
	return []Figure{
		{Name: "writes resume (median)", Value: median(resume), Unit: "ms", Target: atMost(1500),
			Note: fmt.Sprintf("SIGKILL of the leader → the first acknowledgement of an op sent after it; %d rounds: %s ms", len(resume), runs(resume))},
		{Name: "writes resume (max)", Value: slicesMax(resume), Unit: "ms"},
		{Name: "all caught up (median)", Value: median(caught), Unit: "ms",
			Note: fmt.Sprintf("until every player, the killed node's reconnected to another node with ?since=, received an op sent after the kill: %s ms", runs(caught))},
		{Name: "all caught up (max)", Value: slicesMax(caught), Unit: "ms"},
		{Name: "survivors' sockets dropped", Value: float64(dropped), Unit: "sockets", Target: atMost(0)},
	}, nil
}

func slicesMax(vs []float64) float64 {
	m := math.NaN()
	for _, v := range vs {
		if math.IsNaN(m) || v > m {
			m = v
		}
	}
	return m
}

// reconnector reconnects every player whose socket ended unasked to the
// next running node, resuming with ?since=, until ctx ends. A browser does
// the same after a jittered backoff; here the first try comes at once and
// later ones 100 ms apart.
func (l *load) reconnector(ctx context.Context, c *cluster) {
	var wg sync.WaitGroup
	defer wg.Wait()
	busy := map[*player]bool{}
	var mu sync.Mutex
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, p := range l.players {
			mu.Lock()
			skip := busy[p] || p.live.Load() || p.sock.Load() == nil
			if !skip {
				busy[p] = true
			}
			mu.Unlock()
			if skip {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { mu.Lock(); delete(busy, p); mu.Unlock() }()
				for attempt := 0; ctx.Err() == nil; attempt++ {
					if attempt > 0 && !testcluster.Hold(ctx, 100*time.Millisecond) {
						return
					}
					n := (int(p.node.Load()) + 1) % len(l.addrs)
					if !c.procs.Running(n) {
						n = (n + 1) % len(l.addrs)
					}
					p.node.Store(int32(n))
					if old := p.sock.Load(); old != nil {
						old.cancel()
						<-old.done
					}
					if _, err := p.connect(ctx, l.hc, p.seq.Load()); err == nil {
						return
					}
				}
			}()
		}
	}
}

// restart: many sessions, a snapshot under a light load (how long it
// stalls the FSM), then every node stopped and started again: how soon the
// cluster serves again.
func (r *runner) restart(ctx context.Context) ([]Figure, error) {
	z := r.opts.Sizes
	c, err := r.startCluster(ctx, ScenarioRestart, 3, 0)
	if err != nil {
		return nil, err
	}
	defer c.stop()
	r.say("restart: creating %d sessions", z.RestartSessions)
	t0 := time.Now()
	ids, err := createSessions(ctx, r.hc, c.addrs, z.RestartSessions, 64, func(n int) {
		r.say("restart: %d of %d sessions created (%.0f/s)", n, z.RestartSessions, float64(n)/time.Since(t0).Seconds())
	})
	if err != nil {
		return nil, err
	}
	created := time.Since(t0)
	r.sayDone()
	figs := []Figure{{Name: "sessions created", Value: float64(len(ids)) / created.Seconds(), Unit: "creates/s",
		Note: fmt.Sprintf("%d sessions over HTTP, 64 at a time, in %v", len(ids), created.Round(time.Millisecond))}}

	// The snapshot, under a light load whose acknowledgements show the stall.
	l, err := newLoad(ctx, r.hc, c.addrs, 10, 2, -1, nil)
	if err != nil {
		return figs, err
	}
	lctx, stop := context.WithCancel(ctx)
	wg := l.openLoop(lctx, 50, r.opts.Seed)
	snapFigs, err := r.snapshotStall(ctx, c, l)
	stop()
	wg.Wait()
	l.close()
	figs = append(figs, snapFigs...)
	if err != nil {
		return figs, err
	}
	figs = append(figs, c.rssFigures(fmt.Sprintf("with %d sessions", len(ids)))...)

	r.say("restart: stopping every node")
	var swg sync.WaitGroup
	errs := make([]error, len(c.procs.Nodes))
	for i := range c.procs.Nodes {
		swg.Add(1)
		go func() { defer swg.Done(); errs[i] = c.procs.Stop(i) }()
	}
	swg.Wait()
	if err := errors.Join(errs...); err != nil {
		return figs, err
	}
	r.say("restart: starting every node")
	start := time.Now()
	for i := range c.procs.Nodes {
		if err := c.procs.Start(i); err != nil {
			return figs, err
		}
	}
	rng := rand.New(rand.NewPCG(r.opts.Seed, 7))
	hc := &http.Client{Timeout: time.Second}
	var serving time.Duration
	err = testcluster.Poll(60*time.Second, func() error {
		if ctx.Err() != nil {
			return nil
		}
		for _, a := range c.addrs {
			for _, path := range []string{"/readyz", "/api/sessions/" + ids[rng.IntN(len(ids))]} {
				_, status, err := testcluster.HTTPDo(ctx, hc, http.MethodGet, "http://"+a+path, "", nil)
				if err != nil || status != http.StatusOK {
					return fmt.Errorf("%s%s: HTTP %d %v", a, path, status, err)
				}
			}
		}
		serving = time.Since(start)
		return nil
	})
	if err != nil {
		return figs, fmt.Errorf("after the restart: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return figs, err
	}
	// And a player can join on every node.
	jl := &load{hc: r.hc, addrs: c.addrs, mark: new(atomic.Int64)}
	for i := range c.addrs {
		s := &session{id: ids[rng.IntN(len(ids))], pending: map[sendKey]*inflight{}, mark: jl.mark}
		p := newPlayer(s, c.addrs, i)
		jl.sessions, jl.players = append(jl.sessions, s), append(jl.players, p)
		if _, err := p.connect(ctx, r.hc, 0); err != nil {
			jl.close()
			return figs, fmt.Errorf("join after the restart: %w", err)
		}
	}
	joined := time.Since(start)
	jl.close()
	figs = append(figs,
		Figure{Name: "restart: serving again", Value: ms(serving), Unit: "ms", Target: atMost(5000),
			Note: fmt.Sprintf("all %d nodes started at once on their data → every node answers /readyz and a GET of a random session; a WebSocket join on every node after %v", len(c.addrs), joined.Round(time.Millisecond))},
	)
	figs = append(figs, c.rssFigures("after the restart")...)
	return figs, nil
}

// snapshotAnswer is the admin snapshot route's answer.
type snapshotAnswer struct {
	Index      uint64  `json:"index"`
	PauseMs    float64 `json:"pauseMs"`
	PersistMs  float64 `json:"persistMs"`
	Bytes      int64   `json:"bytes"`
	MaxPauseMs float64 `json:"maxPauseMs"`
}

// snapshotStall asks every node for a snapshot, one after the other, while
// l's load runs, and reports the longest time a snapshot held the FSM
// still, next to the writes' acknowledgement latency around it.
func (r *runner) snapshotStall(ctx context.Context, c *cluster, l *load) ([]Figure, error) {
	if !testcluster.Hold(ctx, time.Second) {
		return nil, ctx.Err()
	}
	before := time.Now()
	if !testcluster.Hold(ctx, 2*time.Second) {
		return nil, ctx.Err()
	}
	from := time.Now()
	var pause, persist []float64
	var bytes int64
	for i, n := range c.procs.Nodes {
		r.say("restart: snapshot of %s", n.ID)
		var a snapshotAnswer
		if err := c.procs.AdminJSON(ctx, i, http.MethodPost, "/cluster/snapshot", nil, &a); err != nil {
			return nil, err
		}
		pause, persist, bytes = append(pause, a.PauseMs), append(persist, a.PersistMs), a.Bytes
	}
	to := time.Now()
	if !testcluster.Hold(ctx, time.Second) {
		return nil, ctx.Err()
	}
	r.settle(ctx, l)
	quiet := l.stats(before, from)
	during := l.stats(from, to)
	return []Figure{
		{Name: "snapshot: FSM stall (max)", Value: slicesMax(pause), Unit: "ms", Target: atMost(20),
			Note: fmt.Sprintf("time raft's apply goroutine waited for the FSM snapshot, one per node: %s ms; written in %s ms, %.1f MB",
				runs(pause), runs(persist), float64(bytes)/1e6)},
		{Name: "snapshot: write latency p99", Value: percentile(during.ack, 0.99), Unit: "ms",
			Baseline: "without", BaselineValue: percentile(quiet.ack, 0.99), Ratio: percentile(during.ack, 0.99) / percentile(quiet.ack, 0.99),
			Note: fmt.Sprintf("acknowledgements of %d light-load ops while the three snapshots were taken and written, against the 2 s before", len(during.ack))},
		{Name: "snapshot: write latency max", Value: percentile(during.ack, 1), Unit: "ms",
			Baseline: "without", BaselineValue: percentile(quiet.ack, 1), Ratio: percentile(during.ack, 1) / percentile(quiet.ack, 1)},
	}, nil
}
