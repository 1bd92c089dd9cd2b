package testcluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"chorus/testcluster/check"
)

// rollFirstIP is this file's loopback block: 127.0.0.72-74.
const rollFirstIP = 72

// TestRollingRestart restarts every node of a three-node cluster of real
// chorus serve processes in turn (SIGTERM, start on the same data dir, wait
// until it is ready and caught up), the leader included, while twelve
// Keyboardia-like pages on three sessions, spread over the three nodes,
// edit continuously. Half of the pages reconnect to the node they were on
// once it is back, the others to the next node, as behind a load balancer.
//
// It proves that nothing acknowledged is lost and the nodes end
// byte-identical (I4, I5), that no page saw seq go back, a broadcast twice
// or a skipped one (I1, I3, I6), and that no page would have needed a
// reload: no error frame, no refused or unexpected close (only 1001, 1006,
// 1012, 1013), no session-not-found, no snapshot older than its state, no
// gap it could not repair, no unanswered snapshot request or silently
// dropped edit, and never ten failed reconnects in a row. Every page ends
// connected, on its original session, showing exactly the server's state
// at the session's last seq.
func TestRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	seed := kbSeed(t)
	bin, err := BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := Context(t, 3*time.Minute)
	// Frequent snapshots: a restarted node restores one and replays the
	// log after it, as a node of a long-running cluster does.
	p, err := StartProcs(ctx, ProcOptions{Binary: bin, Dir: t.TempDir(), FirstIP: rollFirstIP,
		ExtraArgs: []string{"--snapshot-threshold", "128", "--snapshot-interval", "200ms"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	t.Cleanup(func() { logNodeTails(t, p) })
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}
	var addrs []string
	for _, n := range p.Nodes {
		addrs = append(addrs, n.HTTPAddr)
	}

	const sessionsN, perSession = 3, 4
	sessions := kbCreateSessions(t, ctx, hc, addrs[0], sessionsN)
	rec := &kbRecorder{}
	var players []*kbPlayer
	for i, s := range sessions {
		for j := range perSession {
			players = append(players, newKBPlayer(len(players), s, addrs, (i+j)%len(addrs), j%2 == 0, 60*time.Millisecond, rec, hc, seed))
		}
	}
	leader, err := p.WaitLeader(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// A follower, the leader, then the last node (which by then may lead).
	order := []int{(leader + 1) % 3, leader, (leader + 2) % 3}
	// The built-in web client, open on the node that goes first.
	page := openRollPage(t, p.Nodes[order[0]], sessions[0])

	load := startKBLoad(ctx, players)
	t.Cleanup(load.close) // before the nodes are killed: cleanups run last first
	if err := load.waitConnected(30*time.Second, nil, 20); err != nil {
		t.Fatalf("warm-up: %v", err)
	}
	rollStart := time.Now()
	for k, i := range order {
		role := "follower"
		if st, err := p.Status(ctx, i); err == nil {
			role = st.State
		}
		base := load.ackCounts()
		start := time.Now()
		if err := p.Stop(i); err != nil {
			t.Fatalf("stop %s: %v", p.Nodes[i].ID, err)
		}
		exited := time.Since(start)
		if err := p.Start(i); err != nil {
			t.Fatal(err)
		}
		applied, commit, leaderID, err := waitCaughtUp(ctx, p, hc, i, 30*time.Second)
		if err != nil {
			t.Fatalf("restart of %s: %v", p.Nodes[i].ID, err)
		}
		ready := time.Since(start)
		// Every page is connected again and has had edits acknowledged
		// since the SIGTERM, before the next node goes.
		if err := load.waitConnected(45*time.Second, base, 10); err != nil {
			t.Fatalf("after the restart of %s: %v", p.Nodes[i].ID, err)
		}
		t.Logf("restart %d/3: %s (%s): SIGTERM to exit %v, to ready and caught up %v (applied %d, leader %s committed %d); every page editing again after %v",
			k+1, p.Nodes[i].ID, role, exited.Round(time.Millisecond), ready.Round(time.Millisecond), applied, leaderID, commit,
			time.Since(start).Round(time.Millisecond))
	}
	rollEnd := time.Now()
	gap, at := rec.longestGap(rollStart, rollEnd)
	t.Logf("rolling restart took %v; the longest time without an acknowledged edit was %v, from %v into it",
		rollEnd.Sub(rollStart).Round(time.Millisecond), gap.Round(time.Millisecond), at.Sub(rollStart).Round(time.Millisecond))
	if gap > 10*time.Second {
		t.Errorf("no edit was acknowledged for %v during the rolling restart", gap)
	}

	// A little more editing on the restarted cluster, then quiet.
	if err := load.waitConnected(30*time.Second, load.ackCounts(), 5); err != nil {
		t.Fatalf("after the roll: %v", err)
	}
	if err := load.stop(); err != nil {
		t.Fatalf("the last edits: %v", err)
	}
	final, err := kbSettle(ctx, p, hc, []int{0, 1, 2}, sessions, players)
	if err != nil {
		t.Fatalf("the nodes did not converge: %v", err)
	}
	logKBStats(t, rec, players)
	checkKBHistory(t, rec, players, final)
	page.check(t, final)
}

// waitCaughtUp waits until node i answers /readyz with 200 and has applied
// its leader's commit index, read just before. It returns both indexes and
// the leader's id.
func waitCaughtUp(ctx context.Context, p *Procs, hc *http.Client, i int, within time.Duration) (applied, commit uint64, leaderID string, err error) {
	err = Poll(within, func() error {
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, status, err := HTTPDo(rctx, hc, http.MethodGet, "http://"+p.Nodes[i].HTTPAddr+"/readyz", "", nil)
		if err != nil {
			return err
		}
		if status != http.StatusOK {
			return fmt.Errorf("%s: /readyz HTTP %d", p.Nodes[i].ID, status)
		}
		st, err := p.Status(ctx, i)
		if err != nil {
			return err
		}
		l := -1
		for j, n := range p.Nodes {
			if n.ID == st.Leader.ID {
				l = j
			}
		}
		if l < 0 {
			return fmt.Errorf("%s follows %q, not a node of this cluster", p.Nodes[i].ID, st.Leader.ID)
		}
		ls, err := p.Status(ctx, l)
		if err != nil {
			return err
		}
		if st, err = p.Status(ctx, i); err != nil {
			return err
		}
		if st.AppliedIndex < ls.CommitIndex {
			return fmt.Errorf("%s applied %d, its leader %s committed %d", p.Nodes[i].ID, st.AppliedIndex, ls.ID, ls.CommitIndex)
		}
		applied, commit, leaderID = st.AppliedIndex, ls.CommitIndex, ls.ID
		return nil
	})
	return applied, commit, leaderID, err
}

// logKBStats logs how the pages got through: reconnects, how they resumed,
// and the snapshots they asked for.
func logKBStats(t *testing.T, rec *kbRecorder, players []*kbPlayer) {
	t.Helper()
	codes := map[int]int{}
	for _, c := range rec.History().Closes {
		codes[c.Code]++
	}
	var all, sticky, balanced kbStats
	for _, p := range players {
		_, _, _, s := p.snapshot()
		add := func(to *kbStats) {
			to.reconnects += s.reconnects
			to.resumes += s.resumes
			to.joinSnapshots += s.joinSnapshots
			to.failedDials += s.failedDials
			to.asked += s.asked
			to.answered += s.answered
		}
		add(&all)
		if p.sticky {
			add(&sticky)
		} else {
			add(&balanced)
		}
	}
	t.Logf("%d pages: %d reconnects (%d by pages back on their own node, %d by pages moved on to the next), "+
		"%d resumed with a replay and %d with a full snapshot; %d connection attempts failed; "+
		"%d snapshots asked for after a seq jump, %d received; sockets closed by the nodes, by code: %v",
		len(players), all.reconnects, sticky.reconnects, balanced.reconnects, all.resumes, all.joinSnapshots,
		all.failedDials, all.asked, all.answered, codes)
}

// rollPage is the built-in web client in a headless Chromium, open on one
// session through one node; nil without a Chromium (outside CI).
type rollPage struct {
	ctx     context.Context
	session string
	node    string
	marker  string
	console *consoleLog
}

// openRollPage opens /s/{session} on node n, waits until the page is
// connected and marks its window, so that a reload would show.
func openRollPage(t *testing.T, n *Proc, session string) *rollPage {
	t.Helper()
	chromium := lookChromium()
	if chromium == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is required in CI; .ci/run installs it")
		}
		t.Log("no chromium found: the rolling restart runs without the browser check")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	allocCtx, cancelAlloc := newBrowser(ctx, chromium)
	pageCtx, cancelPage := chromedp.NewContext(allocCtx)
	pg := &rollPage{ctx: pageCtx, session: session, node: n.ID, console: &consoleLog{},
		marker: "roll-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	var wg sync.WaitGroup
	// Registered after the cluster's cleanup, so it runs before it: the
	// page's socket closes while the nodes are up.
	t.Cleanup(func() {
		cancelPage()
		cancelAlloc()
		wg.Wait()
		cancel()
	})
	if err := chromedp.Do(pageCtx); err != nil { // starts the browser
		t.Fatalf("start %s: %v", chromium, err)
	}
	pg.console.follow(pageCtx, &wg)
	start := time.Now()
	pg.run(t, "open the session", chromedp.Navigate("http://"+n.HTTPAddr+"/s/"+session))
	pg.run(t, "wait for status connected", waitJS(`document.getElementById('status').textContent === 'connected'`))
	pg.run(t, "mark the window", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`window.__rollMarker = %q`, pg.marker)))
	t.Logf("browser page connected to %s after %v", n.ID, time.Since(start).Round(time.Millisecond))
	return pg
}

// run runs actions in the page with a deadline of their own.
func (pg *rollPage) run(t *testing.T, step string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(pg.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		t.Fatalf("browser: %s: %v\n%s", step, err, pageDiagnostics(pg.ctx, pg.console))
	}
}

// check proves that the page lived through the rolling restart without a
// reload (its window still has the marker), is connected, and shows the
// server's final state of its session at the session's last seq; and that
// it logged no exception and none of the web client's warnings (a snapshot
// it had to ignore, a resume from the wrong seq, missed broadcasts).
func (pg *rollPage) check(t *testing.T, final kbFinal) {
	t.Helper()
	if pg == nil {
		return
	}
	var server map[string]string
	for _, ns := range final.nodes {
		if ns.Session == pg.session {
			server = ns.Registers
		}
	}
	lastSeq := final.state.Session(pg.session).LastSeq
	want := pageView{Marker: pg.marker, Status: "connected", Seq: strconv.FormatUint(lastSeq, 10), Tempo: server[kbTempoKey]}
	for _, id := range strings.Split(server[kbTracksKey], ",") {
		row := pageRow{ID: id, On: []int{}}
		for n := range kbSteps {
			if server[check.StepKey(id, n)] == "true" {
				row.On = append(row.On, n)
			}
		}
		want.Rows = append(want.Rows, row)
	}
	var got pageView
	err := Poll(20*time.Second, func() error {
		sctx, cancel := context.WithTimeout(pg.ctx, 5*time.Second)
		defer cancel()
		var err error
		got, err = chromedp.Run(sctx, chromedp.Evaluate[pageView](`({
			marker: window.__rollMarker ?? '',
			status: document.getElementById('status').textContent,
			seq: document.getElementById('seq').textContent,
			node: document.getElementById('node').textContent,
			tempo: String(Number(document.getElementById('tempo').value)),
			rows: [...document.querySelectorAll('#grid .row')].map((r) => ({
				id: r.dataset.trackId,
				on: [...r.querySelectorAll('.step.on')].map((c) => Number(c.dataset.step)).filter((n) => n < 16)})),
		})`))
		if err != nil {
			return err
		}
		want.Node = got.Node
		if !reflect.DeepEqual(got, want) {
			return fmt.Errorf("the page shows %+v, want %+v", got, want)
		}
		return nil
	})
	if err != nil {
		t.Errorf("browser: %v\n%s", err, pageDiagnostics(pg.ctx, pg.console))
		return
	}
	var bad []string
	for _, m := range pg.console.all() {
		if strings.Contains(m, "chorus:") {
			bad = append(bad, m)
		}
	}
	pg.console.mu.Lock()
	for _, m := range pg.console.msgs {
		if m.IsException() {
			bad = append(bad, m.String())
		}
	}
	pg.console.mu.Unlock()
	if len(bad) > 0 {
		t.Errorf("browser: the page logged:\n%s", strings.Join(bad, "\n"))
	}
	t.Logf("browser page opened on %s is still the same page, connected through %s, at seq %s with the server's state",
		pg.node, got.Node, got.Seq)
}

// pageView is what the check reads from the page.
type pageView struct {
	Marker string    `json:"marker"`
	Status string    `json:"status"`
	Seq    string    `json:"seq"`
	Node   string    `json:"node"`
	Tempo  string    `json:"tempo"`
	Rows   []pageRow `json:"rows"`
}

type pageRow struct {
	ID string `json:"id"`
	On []int  `json:"on"`
}
