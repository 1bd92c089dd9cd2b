package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"chorus/testcluster"
)

// nemesisConfig configures the nemesis.
type nemesisConfig struct {
	Procs *testcluster.Procs // required
	Kinds []string           // subset of AllNemeses; unknown kinds are dropped
	// Rand draws every choice; the harness seeds it, so the schedule of
	// choices replays from the seed. Default: a fixed seed.
	Rand *rand.Rand
	// Firewall cuts links for the partition nemesis; nil drops that kind
	// (the harness says why).
	Firewall *firewall
	// Logf gets one line per fault injected or healed; nil discards them.
	Logf func(format string, args ...any)
	// Quiet is the min/max healthy time between faults (default 2s–4s) and
	// Hold the min/max time a fault is in force (default 2s–5s).
	Quiet, Hold [2]time.Duration
}

func (c nemesisConfig) withDefaults() nemesisConfig {
	if c.Rand == nil {
		c.Rand = rand.New(rand.NewPCG(1, 2))
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	if c.Quiet == [2]time.Duration{} {
		c.Quiet = [2]time.Duration{2 * time.Second, 4 * time.Second}
	}
	if c.Hold == [2]time.Duration{} {
		c.Hold = [2]time.Duration{2 * time.Second, 5 * time.Second}
	}
	c.Kinds = slices.DeleteFunc(slices.Clone(c.Kinds), func(k string) bool {
		return !slices.Contains(AllNemeses, k) || (k == NemPartition && c.Firewall == nil)
	})
	return c
}

// How long the nemesis waits for the cluster to settle.
const (
	healthyWithin = 20 * time.Second // after a heal, before the next quiet time
	leaderWithin  = 10 * time.Second // for a leader to be agreed
	healWithin    = 30 * time.Second // bounds a heal that runs after Run's ctx is done
)

// nemesis injects one fault at a time into a cluster of processes, holds
// it, heals it and waits for the cluster to be healthy again, so that faults
// never overlap and quorum is never lost for good.
type nemesis struct {
	cfg   nemesisConfig
	p     *testcluster.Procs
	kinds map[string]injector

	// opMu serialises every step that changes the cluster (inject, heal,
	// repair), so that a HealAll on Ctrl-C never races the loop's own heal,
	// e.g. two starts of one node. It is held across process and HTTP calls
	// by design; the steps use their ctx and are bounded.
	opMu sync.Mutex
	heal func(context.Context) error // undoes the fault in force; nil: nothing to undo
	out  int                         // the node the member nemesis removed and has not added back, or -1

	mu     sync.Mutex // guards faults and active
	faults []Fault
	active int // index into faults of the fault in force, or -1
}

// pick holds one fault's random draws. Every fault draws the same values in
// the same order whatever its kind and the cluster's state, so the schedule
// replays from the seed.
type pick struct {
	leader bool  // aim at the leader rather than a random node
	perm   []int // a random order of the nodes
	n      int   // a random number for further choices
}

// An injector starts a fault. It names it with detail as soon as it knows
// what it will do, and returns the function that undoes it (nil: nothing to
// undo), even when it fails halfway.
type injector func(ctx context.Context, pk pick, detail func(string)) (heal func(context.Context) error, err error)

// newNemesis returns a nemesis over cfg.Procs; Run starts it.
func newNemesis(cfg nemesisConfig) *nemesis {
	n := &nemesis{cfg: cfg.withDefaults(), p: cfg.Procs, out: -1, active: -1}
	n.kinds = map[string]injector{
		NemKill:      n.kill,
		NemPause:     n.pause,
		NemPartition: n.partition,
		NemTransfer:  n.transfer,
		NemMember:    n.member,
	}
	return n
}

// Run injects faults until ctx is done: it waits a quiet time, injects the
// next kind of a shuffled round of all kinds, holds it, heals it and waits for the cluster to be healthy
// again. It returns after healing the fault in force. Run is called from one
// goroutine, once; it alone draws from cfg.Rand.
func (n *nemesis) Run(ctx context.Context) {
	r := n.cfg.Rand
	var bag []string // kinds still to come in this round
	for {
		quiet, hold := between(r, n.cfg.Quiet), between(r, n.cfg.Hold)
		// Every kind comes once per round, in a random order, so that even
		// a short run sees each of them.
		if len(bag) == 0 {
			for _, i := range r.Perm(len(n.cfg.Kinds)) {
				bag = append(bag, n.cfg.Kinds[i])
			}
		}
		kind := ""
		if len(bag) > 0 {
			kind, bag = bag[0], bag[1:]
		}
		pk := pick{leader: r.IntN(2) == 0, perm: r.Perm(len(n.p.Nodes)), n: r.IntN(1 << 30)}
		if kind == "" || !testcluster.Hold(ctx, quiet) {
			<-ctx.Done()
			return
		}
		// A fault on top of a cluster that has not recovered from the last
		// one could take quorum away for good: repair it instead.
		if err := n.waitHealthy(ctx, healthyWithin); err != nil {
			if ctx.Err() != nil {
				return
			}
			n.cfg.Logf("no %s fault: the cluster is not healthy (%v); repairing it", kind, err)
			n.opMu.Lock()
			err := n.repair(ctx)
			n.opMu.Unlock()
			if err != nil {
				n.cfg.Logf("repair failed: %v", err)
			}
			continue
		}
		n.step(ctx, kind, pk, hold)
		if ctx.Err() != nil {
			return
		}
	}
}

// step injects one fault, holds it, heals it and waits for the cluster to
// be healthy again, repairing it if it is not.
func (n *nemesis) step(ctx context.Context, kind string, pk pick, hold time.Duration) {
	n.opMu.Lock()
	idx := n.begin(kind)
	heal, err := n.kinds[kind](ctx, pk, func(d string) { n.setDetail(idx, d) })
	n.heal = heal
	n.opMu.Unlock()
	if err != nil {
		n.fail(idx, "inject", err)
	} else {
		n.cfg.Logf("inject %s", n.detail(idx))
		if heal != nil {
			testcluster.Hold(ctx, hold)
		}
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), healWithin)
	defer cancel()
	n.opMu.Lock()
	n.healActive(hctx)
	n.opMu.Unlock()
	if ctx.Err() != nil {
		return // HealAll waits for the cluster
	}
	if err := n.waitHealthy(ctx, healthyWithin); err != nil {
		n.fail(idx, "recover", err)
		n.opMu.Lock()
		err := n.repair(hctx)
		n.opMu.Unlock()
		if err == nil {
			err = n.waitHealthy(ctx, healthyWithin)
		}
		if err != nil {
			n.fail(idx, "repair", err)
		}
	}
}

// HealAll heals the fault in force and repairs whatever else is amiss
// (paused or stopped nodes, firewall rules, a removed member), then waits
// until every node runs, a leader is agreed and every node lists all
// members. It is idempotent and safe to call concurrently with Run (on
// Ctrl-C) or after it.
func (n *nemesis) HealAll(ctx context.Context) error {
	n.opMu.Lock()
	n.healActive(ctx)
	err := n.repair(ctx)
	n.opMu.Unlock()
	return errors.Join(err, n.waitHealthy(ctx, healWithin))
}

// Active returns the details of the faults in force now (at most one).
// Safe for concurrent use.
func (n *nemesis) Active() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.active < 0 {
		return nil
	}
	return []string{n.faults[n.active].Detail}
}

// Faults returns a copy of every fault so far, in order. Safe for concurrent use.
func (n *nemesis) Faults() []Fault {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.faults)
}

func (n *nemesis) begin(kind string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = append(n.faults, Fault{Kind: kind, Detail: kind, Start: time.Now()})
	n.active = len(n.faults) - 1
	return n.active
}

func (n *nemesis) setDetail(idx int, d string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults[idx].Detail = d
}

func (n *nemesis) detail(idx int) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.faults[idx].Detail
}

// fail records and logs an error of fault idx at stage.
func (n *nemesis) fail(idx int, stage string, err error) {
	n.mu.Lock()
	f := &n.faults[idx]
	f.Err = strings.TrimPrefix(f.Err+"; "+stage+": "+err.Error(), "; ")
	d := f.Detail
	n.mu.Unlock()
	n.cfg.Logf("%s %s failed: %v", stage, d, err)
}

// healActive undoes the fault in force, if any, and closes its window. The
// caller holds opMu.
func (n *nemesis) healActive(ctx context.Context) {
	n.mu.Lock()
	idx := n.active
	n.mu.Unlock()
	if idx < 0 {
		return
	}
	if n.heal != nil {
		if err := n.heal(ctx); err != nil {
			n.fail(idx, "heal", err)
		}
	}
	n.heal = nil
	n.mu.Lock()
	n.faults[idx].End = time.Now()
	n.active = -1
	f := n.faults[idx]
	n.mu.Unlock()
	n.cfg.Logf("healed %s after %v", f.Detail, f.End.Sub(f.Start).Round(time.Millisecond))
}

// repair brings the cluster back from any state a fault can leave it in:
// no firewall rules, no paused or stopped node, no removed member. The
// caller holds opMu.
func (n *nemesis) repair(ctx context.Context) error {
	var errs []error
	if fw := n.cfg.Firewall; fw != nil {
		errs = append(errs, fw.Heal())
	}
	for i := range n.p.Nodes {
		switch {
		case n.p.Running(i):
			errs = append(errs, n.p.Resume(i)) // SIGCONT is harmless on a running node
		case i != n.out:
			errs = append(errs, n.p.Start(i))
		}
	}
	if n.out >= 0 {
		errs = append(errs, n.readd(ctx, n.out, -1))
	}
	return errors.Join(errs...)
}

// waitHealthy waits until every node runs, answers, agrees on one leader
// and lists every node as a member.
func (n *nemesis) waitHealthy(ctx context.Context, within time.Duration) error {
	return until(ctx, within, func() error { return n.members(ctx, len(n.p.Nodes), nil, true) })
}

// members checks that every node (or those in only) answers and lists want
// members, and with agree that they follow the same leader.
func (n *nemesis) members(ctx context.Context, want int, only []int, agree bool) error {
	leader := ""
	for i, node := range n.p.Nodes {
		if only != nil && !slices.Contains(only, i) {
			continue
		}
		if !n.p.Running(i) {
			return fmt.Errorf("%s is down", node.ID)
		}
		st, err := n.p.Status(ctx, i)
		if err != nil {
			return err
		}
		if len(st.Members) != want {
			return fmt.Errorf("%s lists %d members, want %d", node.ID, len(st.Members), want)
		}
		if !agree {
			continue
		}
		if st.Leader.ID == "" {
			return fmt.Errorf("%s sees no leader", node.ID)
		}
		if leader != "" && st.Leader.ID != leader {
			return fmt.Errorf("%s follows %s, others %s", node.ID, st.Leader.ID, leader)
		}
		leader = st.Leader.ID
	}
	return nil
}

// leader waits until the running nodes agree on a leader and returns it.
// Unlike Procs.WaitLeader it gives up as soon as ctx is done.
func (n *nemesis) leader(ctx context.Context) (int, error) {
	leader := -1
	err := until(ctx, leaderWithin, func() error {
		var err error
		leader, err = n.p.WaitLeader(ctx, 0) // one look
		return err
	})
	return leader, err
}

// leaderExcept waits until the running nodes other than skip agree on a
// leader and returns it.
func (n *nemesis) leaderExcept(ctx context.Context, skip int) (int, error) {
	leader := -1
	err := until(ctx, leaderWithin, func() error {
		agreed := ""
		for j, node := range n.p.Nodes {
			if j == skip || !n.p.Running(j) {
				continue
			}
			st, err := n.p.Status(ctx, j)
			if err != nil {
				return err
			}
			if st.Leader.ID == "" || agreed != "" && st.Leader.ID != agreed {
				return fmt.Errorf("%s follows %q, others %q", node.ID, st.Leader.ID, agreed)
			}
			agreed = st.Leader.ID
		}
		leader = slices.IndexFunc(n.p.Nodes, func(p *testcluster.Proc) bool { return p.ID == agreed && agreed != "" })
		if leader < 0 || leader == skip {
			return fmt.Errorf("the leader %q is not one of the other nodes", agreed)
		}
		return nil
	})
	return leader, err
}

// target returns the node a kill or pause aims at: the leader or a random
// node, as pk says, and a label that says whether it leads.
func (n *nemesis) target(ctx context.Context, pk pick) (int, string) {
	leader, err := n.leader(ctx)
	i := pk.perm[0]
	if err == nil && pk.leader {
		i = leader
	}
	if err == nil && i == leader {
		return i, n.p.Nodes[i].ID + " (leader)"
	}
	return i, n.p.Nodes[i].ID
}

// kill SIGKILLs the leader or a random node, or one time in five every
// node at once: acknowledged writes must survive a restart of the whole
// cluster too (I5).
func (n *nemesis) kill(ctx context.Context, pk pick, detail func(string)) (func(context.Context) error, error) {
	if pk.n%5 == 4 {
		detail("kill all")
		var errs []error
		for i := range n.p.Nodes {
			errs = append(errs, n.p.Kill(i))
		}
		return func(context.Context) error {
			var errs []error
			for i := range n.p.Nodes {
				errs = append(errs, n.p.Start(i))
			}
			return errors.Join(errs...)
		}, errors.Join(errs...)
	}
	i, label := n.target(ctx, pk)
	detail("kill " + label)
	// Start also restarts a node that had exited by itself.
	return func(context.Context) error { return n.p.Start(i) }, n.p.Kill(i)
}

func (n *nemesis) pause(ctx context.Context, pk pick, detail func(string)) (func(context.Context) error, error) {
	i, label := n.target(ctx, pk)
	detail("pause " + label)
	return func(context.Context) error { return n.p.Resume(i) }, n.p.Pause(i)
}

// partition cuts, with the firewall, a random minority from the rest, the
// leader from the rest, or every link but those between ring neighbours.
func (n *nemesis) partition(ctx context.Context, pk pick, detail func(string)) (func(context.Context) error, error) {
	nodes := len(n.p.Nodes)
	if nodes < 3 {
		return nil, fmt.Errorf("partition needs at least 3 nodes, have %d", nodes)
	}
	var cuts [][2]int
	cutAcross := func(side []int) {
		for _, a := range side {
			for b := range nodes {
				if !slices.Contains(side, b) {
					cuts = append(cuts, [2]int{a, b})
				}
			}
		}
	}
	switch variant := pk.n % 3; {
	case variant == 0:
		side := pk.perm[:1+pk.n/3%((nodes-1)/2)]
		cutAcross(side)
		detail("partition minority " + n.groups(side))
	case variant == 1:
		leader, err := n.leader(ctx)
		if err != nil {
			return nil, fmt.Errorf("isolate the leader: %w", err)
		}
		cutAcross([]int{leader})
		detail("partition isolate-leader " + n.groups([]int{leader}))
	case nodes == 3: // a ring of three is complete: cut one link, so that two nodes talk only through the third
		a, b, via := pk.perm[0], pk.perm[1], pk.perm[2]
		cuts = append(cuts, [2]int{a, b})
		detail(fmt.Sprintf("partition ring %s x %s (via %s)", n.p.Nodes[a].ID, n.p.Nodes[b].ID, n.p.Nodes[via].ID))
	default: // each node reaches only its two neighbours in the order of perm
		pos := make([]int, nodes)
		ids := make([]string, 0, nodes+1)
		for k, i := range pk.perm {
			pos[i] = k
			ids = append(ids, n.p.Nodes[i].ID)
		}
		for a := range nodes {
			for b := a + 1; b < nodes; b++ {
				if d := (pos[a] - pos[b] + nodes) % nodes; d != 1 && d != nodes-1 {
					cuts = append(cuts, [2]int{a, b})
				}
			}
		}
		detail("partition ring " + strings.Join(append(ids, ids[0]), "-"))
	}
	fw := n.cfg.Firewall
	heal := func(context.Context) error { return fw.Heal() }
	for _, c := range cuts {
		if err := fw.Cut(n.ip(c[0]), n.ip(c[1])); err != nil {
			return heal, err
		}
	}
	return heal, nil
}

// transfer asks for a leadership transfer through a random node, to a random
// other node or to any; the fault lasts until a leader is agreed again.
func (n *nemesis) transfer(ctx context.Context, pk pick, detail func(string)) (func(context.Context) error, error) {
	via := pk.perm[0]
	st, err := n.p.Status(ctx, via)
	if err != nil {
		detail("transfer via " + n.p.Nodes[via].ID)
		return nil, err
	}
	target := ""
	if pk.leader {
		for _, i := range pk.perm {
			if id := n.p.Nodes[i].ID; id != st.Leader.ID {
				target = id
				break
			}
		}
	}
	d := fmt.Sprintf("transfer via %s from %s", n.p.Nodes[via].ID, orDefault(st.Leader.ID, "no leader"))
	if target != "" {
		d += " to " + target
	}
	detail(d)
	err = n.p.TransferLeadership(ctx, via, target)
	leader, lerr := n.leader(ctx)
	if lerr == nil {
		detail(d + ": leader " + n.p.Nodes[leader].ID)
	}
	return nil, errors.Join(err, lerr)
}

// member removes a random node through another, waits until the others
// list one member fewer and kills it; its heal starts it empty and adds it back.
func (n *nemesis) member(ctx context.Context, pk pick, detail func(string)) (func(context.Context) error, error) {
	nodes := len(n.p.Nodes)
	if nodes < 3 {
		return nil, fmt.Errorf("member needs at least 3 nodes, have %d", nodes)
	}
	i, via := pk.perm[0], pk.perm[1]
	detail(fmt.Sprintf("member remove %s via %s", n.p.Nodes[i].ID, n.p.Nodes[via].ID))
	n.out = i
	heal := func(ctx context.Context) error { return n.readd(ctx, i, via) }
	if err := n.p.RemoveMember(ctx, via, i); err != nil {
		return heal, err
	}
	others := slices.DeleteFunc(slices.Clone(pk.perm), func(j int) bool { return j == i })
	if err := until(ctx, leaderWithin, func() error { return n.members(ctx, nodes-1, others, false) }); err != nil {
		return heal, err
	}
	return heal, n.p.Kill(i)
}

// readd brings back node i that the member nemesis removed: unless the
// leader lists it still (the removal did not happen), it is wiped, started
// empty and added through via (-1: the leader). It then waits until every
// node lists every member. The caller holds opMu.
func (n *nemesis) readd(ctx context.Context, i, via int) error {
	// Node i may still run after its removal, leaderless: ask the others.
	leader, err := n.leaderExcept(ctx, i)
	if err != nil {
		return err
	}
	st, err := n.p.Status(ctx, leader)
	if err != nil {
		return err
	}
	if via < 0 || via == i {
		via = leader
	}
	id := n.p.Nodes[i].ID
	listed := false
	for _, m := range st.Members {
		listed = listed || m.ID == id
	}
	switch {
	case listed && !n.p.Running(i):
		err = n.p.Start(i)
	case !listed:
		if n.p.Running(i) {
			err = n.p.Kill(i)
		}
		if err == nil {
			err = n.p.StartFresh(i)
		}
		if err == nil {
			err = n.p.AddMember(ctx, via, i)
		}
	}
	if err != nil {
		return fmt.Errorf("add %s back: %w", id, err)
	}
	n.out = -1
	return until(ctx, healthyWithin, func() error { return n.members(ctx, len(n.p.Nodes), nil, false) })
}

// groups shows side against the rest, e.g. "n1 | n2 n3".
func (n *nemesis) groups(side []int) string {
	var in, rest []string
	for i, node := range n.p.Nodes {
		if slices.Contains(side, i) {
			in = append(in, node.ID)
		} else {
			rest = append(rest, node.ID)
		}
	}
	return strings.Join(in, " ") + " | " + strings.Join(rest, " ")
}

// ip returns node i's loopback address, which its peer traffic comes from.
func (n *nemesis) ip(i int) string {
	host, _, _ := net.SplitHostPort(n.p.Nodes[i].PeerAddr) // StartProcs built it with JoinHostPort
	return host
}

// between draws a duration in [r[0], r[1]).
func between(rng *rand.Rand, r [2]time.Duration) time.Duration {
	if r[1] <= r[0] {
		return r[0]
	}
	return r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0])))
}

// until polls cond every 20ms until it returns nil, within passes (the
// last error is returned) or ctx is done.
func until(ctx context.Context, within time.Duration, cond func() error) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("not true after %v: %w", within, err)
		}
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
