package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"chorus/fsm"
	"chorus/testcluster"
	"chorus/testcluster/check"
)

// Options configure one chaos run.
type Options struct {
	Binary string // the chorus binary the nodes run; required
	// Dir receives the nodes' data and logs, history.json, report.html and
	// summary.txt; required.
	Dir      string
	Seed     int64         // seeds the workload's and the nemesis's choices
	Duration time.Duration // how long the workload runs; default 1m
	Nodes    int           // default 3
	Clients  int           // WebSocket clients; default 12
	Sessions int           // default: one per 4 clients
	Nemeses  []string      // kinds from AllNemeses; empty means none
	// FirstIP is the last octet of node 1's loopback address; default 11.
	FirstIP int
	// Think bounds the random pause between one client's ops; default 20ms.
	Think time.Duration
	// Quiet and Hold are the nemesis's min/max healthy time between faults
	// and min/max fault length; zero means its defaults.
	Quiet, Hold [2]time.Duration
	// Out receives progress lines; nil discards them.
	Out io.Writer
	// Live rewrites one progress line in place (for a terminal) instead of
	// printing a line every 5 seconds.
	Live bool
}

// ErrBadOptions wraps every complaint about Options: the run did not start.
var ErrBadOptions = errors.New("bad options")

// withDefaults returns o with its zero fields set to their defaults, or an
// error wrapping ErrBadOptions.
func (o Options) withDefaults() (Options, error) {
	if err := o.fill(); err != nil {
		return o, fmt.Errorf("chaos: %w: %w", ErrBadOptions, err)
	}
	return o, nil
}

// fill sets the defaults of o, a copy, and validates the result.
func (o *Options) fill() error {
	if o.Binary == "" || o.Dir == "" {
		return errors.New("the Binary and Dir options are required")
	}
	if o.Duration == 0 {
		o.Duration = time.Minute
	}
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Clients == 0 {
		o.Clients = 12
	}
	if o.Sessions == 0 {
		o.Sessions = (o.Clients + 3) / 4
	}
	if o.FirstIP == 0 {
		o.FirstIP = 11
	}
	if o.Think == 0 {
		o.Think = 20 * time.Millisecond
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	switch {
	case o.Duration < 0:
		return fmt.Errorf("duration %v is negative", o.Duration)
	case o.Nodes < 1 || o.Nodes > 9:
		return fmt.Errorf("%d nodes; want 1 to 9", o.Nodes)
	case len(o.Nemeses) > 0 && o.Nodes < 3:
		return fmt.Errorf("the nemeses need at least 3 nodes to keep a quorum through a fault; %d given (or --nemesis none)", o.Nodes)
	case o.Clients < 1:
		return fmt.Errorf("%d clients; want at least 1", o.Clients)
	case o.Sessions < 1 || o.Sessions > o.Clients:
		return fmt.Errorf("%d sessions for %d clients; want 1 to %d", o.Sessions, o.Clients, o.Clients)
	case (o.Clients+o.Sessions-1)/o.Sessions > 8:
		return fmt.Errorf("%d clients on %d sessions puts more than 8 on one session; a session holds 10 players and a dead node's players linger until they are reaped", o.Clients, o.Sessions)
	case o.FirstIP < 2 || o.FirstIP+o.Nodes > 255:
		return fmt.Errorf("first IP 127.0.0.%d does not leave room for %d nodes", o.FirstIP, o.Nodes)
	}
	for _, k := range o.Nemeses {
		if !slices.Contains(AllNemeses, k) {
			return fmt.Errorf("unknown nemesis %q; want some of %s", k, strings.Join(AllNemeses, ","))
		}
	}
	return nil
}

// ErrInterrupted is returned when the run's context ends before the
// workload is over (Ctrl-C): the faults are healed and the cluster stopped,
// but nothing is checked.
var ErrInterrupted = errors.New("chaos run interrupted")

// Run starts a cluster of real chorus serve processes, runs the workload
// against it with the nemesis injecting faults, heals everything, collects
// every node's final state and checks the history. It writes history.json,
// report.html and summary.txt into opts.Dir. The Report's Valid says whether
// every checker passed; an error means the run itself could not be done.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if entries, err := os.ReadDir(filepath.Join(opts.Dir, "nodes")); err == nil && len(entries) > 0 {
		return nil, fmt.Errorf("chaos: %w: %s already holds the nodes of another run; give a fresh --dir", ErrBadOptions, opts.Dir)
	}
	unlock, err := testcluster.LockAddrs(opts.FirstIP, opts.Nodes)
	if err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	defer unlock()
	if err := os.MkdirAll(opts.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("chaos: %w", err)
	}
	rep := &Report{Seed: opts.Seed, Started: time.Now(), Duration: opts.Duration, Nodes: opts.Nodes,
		Clients: opts.Clients, Sessions: opts.Sessions, Nemeses: slices.Clone(opts.Nemeses), Logs: map[string]string{}}
	kinds := slices.Clone(opts.Nemeses)
	var fw *firewall
	if slices.Contains(kinds, NemPartition) {
		if n, err := sweepStale(); err != nil {
			rep.Notes = append(rep.Notes, "could not sweep iptables rules left by an earlier run: "+err.Error())
		} else if n > 0 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("removed %d iptables rules left by an earlier run", n))
		}
		var err error
		fw, err = newFirewall(FirewallPrefix + "-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(opts.Seed, 10))
		if err != nil {
			kinds = slices.DeleteFunc(kinds, func(k string) bool { return k == NemPartition })
			rep.Notes = append(rep.Notes, "the partition nemesis is skipped: "+err.Error())
			fmt.Fprintf(opts.Out, "chaos: the partition nemesis is skipped: %v\n", err)
		} else {
			defer func() {
				if err := fw.Heal(); err != nil {
					fmt.Fprintf(opts.Out, "chaos: removing iptables rules: %v\n", err)
				}
			}()
		}
	}

	token := randomToken()
	fmt.Fprintf(opts.Out, "chaos: seed %d, %d nodes on 127.0.0.%d+, %d clients on %d sessions, %v, nemeses %s; output in %s\n",
		opts.Seed, opts.Nodes, opts.FirstIP, opts.Clients, opts.Sessions, opts.Duration, strings.Join(orNone(kinds), ","), opts.Dir)
	procs, err := testcluster.StartProcs(ctx, testcluster.ProcOptions{
		Binary: opts.Binary, Dir: filepath.Join(opts.Dir, "nodes"), Nodes: opts.Nodes, FirstIP: opts.FirstIP,
		Secret: randomToken(), AdminToken: token,
		ExtraArgs: []string{"--ws-rate", "0", "--create-rate", "0", "--max-conns-per-ip", "0", "--presence-timeout", "5s"},
	})
	if err != nil {
		return nil, fmt.Errorf("chaos: start the cluster: %w", err)
	}
	defer procs.Close()
	var addrs []string
	for _, n := range procs.Nodes {
		addrs = append(addrs, n.HTTPAddr)
		rep.Logs[n.ID] = n.LogPath
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}

	rec := &recorder{}
	sessions, err := createSessions(ctx, hc, addrs, opts, rec)
	if err != nil {
		return nil, err
	}

	rng := mrand.New(mrand.NewPCG(uint64(opts.Seed), 0xc4a05))
	nem := newNemesis(nemesisConfig{Procs: procs, Kinds: kinds, Rand: mrand.New(mrand.NewPCG(rng.Uint64(), rng.Uint64())),
		Firewall: fw, Quiet: opts.Quiet, Hold: opts.Hold, Logf: func(format string, args ...any) {
			if !opts.Live {
				fmt.Fprintf(opts.Out, "nemesis: "+format+"\n", args...)
			}
		}})
	wctx, stop := context.WithTimeout(ctx, opts.Duration)
	defer stop()
	var wg sync.WaitGroup
	// guard runs f on its own goroutine; a panic stops the workload and
	// fails the run instead of killing the process before its cleanup.
	guard := func(name string, f func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer stop()
			defer rec.recovered(name)
			f()
		}()
	}
	start := time.Now()
	guard("the nemesis", func() { nem.Run(wctx) })
	var clients sync.WaitGroup
	for i := range opts.Clients {
		c := &client{id: i, sess: sessions[i%len(sessions)], nodes: addrs, rec: rec, http: hc, think: opts.Think,
			node: i % len(addrs), rng: mrand.New(mrand.NewPCG(rng.Uint64(), rng.Uint64()))}
		clients.Add(1)
		guard("client "+strconv.Itoa(i), func() {
			defer clients.Done()
			c.run(wctx)
		})
	}
	guard("the progress line", func() { progress(wctx, opts, rec, nem, start) })
	clients.Wait()
	stop() // a client that panicked ends the run early; the others are done
	wg.Wait()
	rep.Faults = nem.Faults()
	if err := errors.Join(rec.panics...); err != nil {
		return rep, err
	}
	if ctx.Err() != nil {
		return rep, ErrInterrupted // the deferred cleanup kills the nodes and removes the rules
	}

	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := nem.HealAll(hctx); err != nil {
		rep.Notes = append(rep.Notes, "healing the cluster at the end failed: "+err.Error())
	}
	rep.Faults = nem.Faults()
	fmt.Fprintf(opts.Out, "chaos: workload done after %v; waiting for every node to catch up\n", time.Since(start).Round(time.Millisecond))
	final, note := collectFinals(hctx, hc, procs, token, sessions)
	if note != "" {
		rep.Notes = append(rep.Notes, note)
	}
	h := rec.History()
	h.Final = final
	if n := h.ResolveUnknown(); n > 0 {
		rep.Notes = append(rep.Notes, fmt.Sprintf("%d unknown ops were resolved to ok: another socket received their broadcast", n))
	}
	finalReads(&h, procs)
	rep.History = &h
	fmt.Fprintf(opts.Out, "chaos: checking %d ops, %d deliveries\n", len(h.Ops), len(h.Deliveries))
	rep.Results = check.CheckAll(&h)
	rep.Valid = check.Valid(rep.Results)
	rep.Elapsed = time.Since(rep.Started)
	return rep, writeOutputs(opts.Dir, rep)
}

// finalClient numbers the pseudo-clients of the final reads: node i reads
// as client finalClient+i.
const finalClient = 1000

// finalReads appends each node's final state as a read of every register,
// after every op: the linearizability checker then also proves that no
// write, even one without a seq (an HTTP rename), was lost.
func finalReads(h *check.History, procs *testcluster.Procs) {
	var end time.Time
	for _, o := range h.Ops {
		end = maxTime(end, o.Invoke, o.Complete)
	}
	end = end.Add(time.Millisecond)
	for i, n := range procs.Nodes {
		for _, ns := range h.Final {
			if ns.Node != n.ID || ns.Registers == nil {
				continue
			}
			for _, k := range slices.Sorted(maps.Keys(h.Initial[ns.Session])) {
				h.Ops = append(h.Ops, check.Op{Client: finalClient + i, Session: ns.Session, Kind: check.KindRead, Key: k,
					Value: ns.Registers[k], OpID: "final-" + n.ID, Invoke: end, Complete: end, Outcome: check.OK})
			}
		}
	}
}

func maxTime(t time.Time, ts ...time.Time) time.Time {
	for _, u := range ts {
		if u.After(t) {
			t = u
		}
	}
	return t
}

func orNone(kinds []string) []string {
	if len(kinds) == 0 {
		return []string{"none"}
	}
	return kinds
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// createSessions creates the run's sessions through node 1 and records their
// initial registers.
func createSessions(ctx context.Context, hc *http.Client, addrs []string, opts Options, rec *recorder) ([]*session, error) {
	sessions := make([]*session, opts.Sessions)
	for i := range sessions {
		sessions[i] = &session{}
	}
	for c := range opts.Clients {
		s := sessions[c%len(sessions)]
		s.clients = append(s.clients, c)
	}
	body := []byte(`{"name":"chaos","state":` + initialState() + `}`)
	for _, s := range sessions {
		err := testcluster.Poll(30*time.Second, func() error {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rctx, cancel := context.WithTimeout(ctx, httpTimeout)
			defer cancel()
			if s.id == "" {
				b, status, err := testcluster.HTTPDo(rctx, hc, http.MethodPost, "http://"+addrs[0]+"/api/sessions", "", body)
				if err != nil || status != http.StatusCreated && status != http.StatusOK {
					return fmt.Errorf("create a session: HTTP %d %s %v", status, b, err)
				}
				var created struct{ ID string }
				if err := json.Unmarshal(b, &created); err != nil || created.ID == "" {
					return fmt.Errorf("create a session: answer %s: %v", b, err)
				}
				s.id = created.ID
			}
			b, status, err := testcluster.HTTPDo(rctx, hc, http.MethodGet, "http://"+addrs[0]+"/api/sessions/"+s.id, "", nil)
			if err != nil || status != http.StatusOK {
				return fmt.Errorf("read session %s: HTTP %d %s %v", s.id, status, b, err)
			}
			regs, err := registers(b, s.clients)
			if err != nil {
				return err
			}
			rec.Initial(s.id, regs)
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("chaos: %w", err)
		}
	}
	return sessions, nil
}

// wholeState is the NodeState session name under which every node's entire
// FSM state is compared, besides each session on its own.
const wholeState = "*"

// collectFinals fetches every node's FSM state until all of them are at the
// same applied index, and turns it into NodeStates: one per session (its
// snapshot bytes, the state hash the node itself reports, and the
// registers) and one for the whole state. If the nodes do not agree within
// a minute it returns what it last saw, which the convergence checker then
// reports, and a note saying so; a node it could not read at all gets empty
// states, so that no checker can pass it by.
func collectFinals(ctx context.Context, hc *http.Client, procs *testcluster.Procs, token string, sessions []*session) ([]check.NodeState, string) {
	type nodeState struct {
		raw    []byte
		state  *fsm.State
		hashes map[string]string // session -> the hash the node reports
	}
	states := make([]nodeState, len(procs.Nodes))
	get := func(i int, path, token string) ([]byte, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		b, status, err := testcluster.HTTPDo(rctx, hc, http.MethodGet, "http://"+procs.Nodes[i].HTTPAddr+path, token, nil)
		if err == nil && status != http.StatusOK {
			err = fmt.Errorf("HTTP %d: %s", status, b)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: GET %s: %w", procs.Nodes[i].ID, path, err)
		}
		return b, nil
	}
	fetch := func(i int) error {
		// The node's applied index, which also counts configuration
		// entries, must not move while its state and hashes are read.
		before, err := procs.Status(ctx, i)
		if err != nil {
			return err
		}
		b, err := get(i, "/cluster/state", token)
		if err != nil {
			return err
		}
		st, err := fsm.ReadSnapshot(bytes.NewReader(b))
		if err != nil {
			return fmt.Errorf("%s: GET /cluster/state: %w", procs.Nodes[i].ID, err)
		}
		hashes := map[string]string{}
		for _, s := range sessions {
			b, err := get(i, "/api/debug/session/"+s.id+"/state-sync", "")
			if err != nil {
				return err
			}
			var sync struct{ ServerStateHash string }
			if err := json.Unmarshal(b, &sync); err != nil {
				return fmt.Errorf("%s: state-sync of %s: %w", procs.Nodes[i].ID, s.id, err)
			}
			hashes[s.id] = sync.ServerStateHash
		}
		// The hashes must be of the same state: nothing applied meanwhile.
		if after, err := procs.Status(ctx, i); err != nil || after.AppliedIndex != before.AppliedIndex {
			return fmt.Errorf("%s moved on while it was read (%v)", procs.Nodes[i].ID, err)
		}
		states[i] = nodeState{b, st, hashes}
		return nil
	}
	agree := func() error {
		for i := range procs.Nodes {
			if err := fetch(i); err != nil {
				return err
			}
		}
		for i := range states {
			if states[i].state.Index() != states[0].state.Index() {
				return fmt.Errorf("%s is at index %d, %s at %d", procs.Nodes[i].ID, states[i].state.Index(), procs.Nodes[0].ID, states[0].state.Index())
			}
		}
		return nil
	}
	var note string
	if err := testcluster.Poll(time.Minute, agree); err != nil {
		note = "the nodes did not reach the same applied index within a minute: " + err.Error()
	}
	var out []check.NodeState
	for i, ns := range states {
		id := procs.Nodes[i].ID
		if ns.state == nil {
			for _, s := range sessions {
				out = append(out, check.NodeState{Node: id, Session: s.id, Hash: "unreadable", Registers: map[string]string{}})
			}
			out = append(out, check.NodeState{Node: id, Session: wholeState, Hash: "unreadable"})
			continue
		}
		sum := sha256.Sum256(ns.raw)
		out = append(out, check.NodeState{Node: id, Session: wholeState, Hash: hex.EncodeToString(sum[:]), Snapshot: ns.raw, Index: ns.state.Index()})
		for _, s := range sessions {
			sess := ns.state.Session(s.id)
			if sess == nil {
				out = append(out, check.NodeState{Node: id, Session: s.id, Hash: "missing", Index: ns.state.Index(), Registers: map[string]string{}})
				continue
			}
			regs, err := registers(sess.AppendJSON(nil), s.clients)
			if err != nil {
				note = strings.TrimSpace(note + " " + id + ": " + err.Error())
			}
			out = append(out, check.NodeState{Node: id, Session: s.id, Hash: ns.hashes[s.id], Snapshot: sess.AppendSnapshot(nil),
				Index: ns.state.Index(), Registers: regs})
		}
	}
	return out, note
}

// writeOutputs writes history.json, report.html and summary.txt.
func writeOutputs(dir string, rep *Report) error {
	hist, err := rep.History.Marshal()
	if err != nil {
		return fmt.Errorf("chaos: %w", err)
	}
	var html bytes.Buffer
	if err := rep.WriteHTML(&html); err != nil {
		return fmt.Errorf("chaos: report: %w", err)
	}
	for name, data := range map[string][]byte{"history.json": hist, "report.html": html.Bytes(), "summary.txt": []byte(rep.Summary())} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o640); err != nil {
			return fmt.Errorf("chaos: %w", err)
		}
	}
	return nil
}

// progress prints the live progress line until ctx is done.
func progress(ctx context.Context, opts Options, rec *recorder, nem *nemesis, start time.Time) {
	every := 5 * time.Second
	if opts.Live {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var lastOps int64
	lastAt := start
	for {
		select {
		case <-ctx.Done():
			if opts.Live {
				fmt.Fprintln(opts.Out)
			}
			return
		case now := <-t.C:
			ops := rec.ok.Load() + rec.fail.Load() + rec.unk.Load()
			rate := float64(ops-lastOps) / now.Sub(lastAt).Seconds()
			lastOps, lastAt = ops, now
			faults := strings.Join(nem.Active(), "; ")
			if faults == "" {
				faults = "none"
			}
			line := fmt.Sprintf("[%5.1fs/%v] %6.0f ops/s  ok %d  failed %d  unknown %d  conn errors %d  faults: %s",
				now.Sub(start).Seconds(), opts.Duration, rate, rec.ok.Load(), rec.fail.Load(), rec.unk.Load(), rec.errs.Load(), faults)
			if opts.Live {
				fmt.Fprintf(opts.Out, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(opts.Out, line)
			}
		}
	}
}
