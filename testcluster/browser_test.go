package testcluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browserStateJSON is the session the browser test starts from: one 16-step
// kick track with no step on.
const browserStateJSON = `{"state":{"tracks":[{"id":"track-1","name":"Kick","sampleId":"kick","steps":[],"parameterLocks":[],"volume":1,"muted":false,"soloed":false,"playbackMode":"oneshot","transpose":0,"stepCount":16}],"tempo":120,"swing":0,"version":1}}`

// TestBrowserTwoNodes drives the built-in web client in a headless Chromium:
// two pages of one session, each served by (and with its WebSocket on) a
// different node, see each other's step toggles through Raft and each other
// in the player list.
func TestBrowserTwoNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test: skipped with -short")
	}
	chromium := findChromium(t)

	c := New(t, Options{HTTP: true, FirstIP: 151})
	id := createBrowserSession(t, c.Members[0].URL())

	// Everything the browser does is bounded by ctx: the browser lives only
	// as long as the context of its first Run, a descendant of ctx. Each step
	// below gets its own, shorter deadline, so a failing step still leaves
	// the browser up to collect diagnostics.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	allocCtx, cancelAlloc := newBrowser(ctx, chromium)
	// The first tab owns the browser; the second is a new tab (in a window of
	// its own, so it is never hidden) of the same browser.
	page1, cancel1 := chromedp.NewContext(allocCtx)
	var console1, console2 consoleLog
	var wg sync.WaitGroup
	t.Cleanup(func() {
		// Close the browser before the cluster (registered earlier, so it
		// runs later): the pages' sockets close while the nodes are up.
		// cancel1 waits for the browser process to exit, cancelAlloc for
		// its temporary directory to be removed, wg for the console readers.
		cancel1()
		cancelAlloc()
		wg.Wait()
		cancel()
	})
	if err := chromedp.Do(page1); err != nil { // starts the browser
		t.Fatalf("start %s: %v", chromium, err)
	}
	page2, cancel2 := chromedp.NewContext(page1)
	// Registered later, so it runs before the browser's cleanup above.
	t.Cleanup(cancel2)
	if err := chromedp.Do(page2); err != nil { // opens the second tab
		t.Fatalf("open a second tab: %v", err)
	}
	console1.follow(page1, &wg)
	console2.follow(page2, &wg)

	type page struct {
		name    string
		ctx     context.Context
		member  *Member
		console *consoleLog
	}
	pages := []page{
		{"page 1", page1, c.Members[0], &console1},
		{"page 2", page2, c.Members[1], &console2},
	}
	// fail reports err with what both pages show and logged.
	fail := func(step string, err error) {
		t.Helper()
		var b strings.Builder
		for _, p := range pages {
			fmt.Fprintf(&b, "\n--- %s (%s) ---\n%s", p.name, p.member.URL(), pageDiagnostics(p.ctx, p.console))
		}
		t.Fatalf("%s: %v%s", step, err, b.String())
	}
	// run runs actions in p's tab with a deadline of its own.
	run := func(p page, step string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(p.ctx, stepTimeout)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			fail(p.name+": "+step, err)
		}
	}
	// text reads the text of the element with the given id.
	text := func(p page, id string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(p.ctx, stepTimeout)
		defer scancel()
		s, err := chromedp.Run(sctx, chromedp.TextContent(chromedp.ID(id)))
		if err != nil {
			fail(p.name+": read #"+id, err)
		}
		return s
	}

	start := time.Now()
	for _, p := range pages {
		run(p, "open the session", chromedp.Navigate(p.member.URL()+"/s/"+id))
	}
	for _, p := range pages {
		run(p, "wait for status connected",
			waitJS(`document.getElementById('status').textContent === 'connected'`))
		// The socket is on the node that served the page: the two pages
		// really are joined through different nodes.
		run(p, "wait for the node display", waitJS(fmt.Sprintf(
			`document.getElementById('node').textContent.includes(%q)`, p.member.HTTPAddr)))
		run(p, "wait for an editable step-0-3", chromedp.WaitEnabled(chromedp.ID("step-0-3")))
	}
	t.Logf("both pages connected after %v: %s on %q, %s on %q", time.Since(start).Round(time.Millisecond),
		pages[0].name, text(pages[0], "node"), pages[1].name, text(pages[1], "node"))

	// Replicated presence: each page lists both players, itself marked.
	for _, p := range pages {
		run(p, "wait for 2 players", waitJS(
			`document.querySelectorAll('#players li').length === 2 && document.querySelectorAll('#players li .me').length === 1`))
	}

	// On in page 1 (served by n1), seen in page 2 (served by n2).
	const stepOn = `document.getElementById('step-0-3').classList.contains('on')`
	const stepOff = `!document.getElementById('step-0-3').classList.contains('on')`
	toggled := time.Now()
	run(pages[0], "click step-0-3", chromedp.Click(chromedp.ID("step-0-3")))
	run(pages[1], "wait for step-0-3 on", waitJS(stepOn))
	run(pages[0], "wait for step-0-3 on", waitJS(stepOn))
	t.Logf("toggle on in page 1 seen in both pages after %v", time.Since(toggled).Round(time.Millisecond))
	// Both applied the same broadcast, so both show its Raft index.
	seq1, seq2 := text(pages[0], "seq"), text(pages[1], "seq")
	if seq1 != seq2 || seq1 == "0" {
		fail("seq after the toggle", fmt.Errorf("page 1 shows seq %q, page 2 %q; want the same nonzero index", seq1, seq2))
	}

	// Off in page 2, seen in page 1.
	toggled = time.Now()
	run(pages[1], "click step-0-3", chromedp.Click(chromedp.ID("step-0-3")))
	run(pages[0], "wait for step-0-3 off", waitJS(stepOff))
	run(pages[1], "wait for step-0-3 off", waitJS(stepOff))
	t.Logf("toggle off in page 2 seen in both pages after %v", time.Since(toggled).Round(time.Millisecond))
	// Both moved on from seq1 to the toggle-off's index.
	if seq1b, seq2b := text(pages[0], "seq"), text(pages[1], "seq"); seq1b != seq2b || seq1b == seq1 {
		fail("seq after the toggle-off", fmt.Errorf("page 1 shows seq %q, page 2 %q; want the same index, not %q", seq1b, seq2b, seq1))
	}

	// The server agrees with what the pages show.
	checkStepOff(t, c.Members[2].URL(), id)

	for _, p := range pages {
		if errs := p.console.errors(); len(errs) > 0 {
			fail(p.name+": console", fmt.Errorf("the page logged errors:\n%s", strings.Join(errs, "\n")))
		}
	}

	sctx, scancel := context.WithTimeout(page2, stepTimeout)
	defer scancel()
	png, err := chromedp.Run(sctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Logf("screenshot of page 2: %v", err)
		return
	}
	path := filepath.Join(t.TempDir(), "page2.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of page 2: %s", path)
}

// stepTimeout bounds one step of the browser test.
const stepTimeout = 15 * time.Second

// waitJS waits until the JavaScript expression is true in the page. It polls
// in the page every 20ms (an expression that throws, say on an element not
// rendered yet, counts as false) until the step's context ends.
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](fmt.Sprintf(`(() => { try { return !!(%s); } catch (e) { return false; } })()`, expr),
		chromedp.WithPollingInterval(20*time.Millisecond),
		chromedp.WithPollingTimeout(stepTimeout))
}

// findChromium returns the Chromium binary to run, or skips the test when
// there is none (and fails it in CI, which must run it).
func findChromium(t *testing.T) string {
	t.Helper()
	if path := lookChromium(); path != "" {
		return path
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is required in CI; .ci/run installs it")
	}
	t.Skip("no chromium found; install Debian's chromium to run the browser test")
	return ""
}

// lookChromium returns Debian's chromium, or one on PATH, or "".
func lookChromium() string {
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	return ""
}

// newBrowser starts the allocator of a headless chromium at path under ctx,
// with the flags every browser test uses: nothing in the background, and no
// page throttled for being hidden. chromedp gives it a fresh temporary
// --user-data-dir and removes it (after killing leftover child processes)
// when the returned cancel runs.
func newBrowser(ctx context.Context, path string) (context.Context, context.CancelFunc) {
	return chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(path),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("no-default-browser-check", true),
		chromedp.Flag("mute-audio", true),
		chromedp.Flag("disable-background-timer-throttling", true),
		chromedp.Flag("disable-renderer-backgrounding", true),
		chromedp.Flag("disable-backgrounding-occluded-windows", true),
		chromedp.WindowSize(1200, 800),
	)
}

// createBrowserSession creates the test session through the node at base and
// returns its id.
func createBrowserSession(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Post(base+"/api/sessions", "application/json", strings.NewReader(browserStateJSON))
	if err != nil {
		t.Fatalf("create session: %v", err)
	}
	defer resp.Body.Close()
	var created struct{ ID string }
	if err := json.NewDecoder(resp.Body).Decode(&created); err != nil || resp.StatusCode != http.StatusCreated || created.ID == "" {
		t.Fatalf("create session: HTTP %d, id %q, %v", resp.StatusCode, created.ID, err)
	}
	return created.ID
}

// checkStepOff checks over HTTP that track-1's step 3 is off in the stored
// session (a GET may be served before the node has applied the last toggle,
// so it polls).
func checkStepOff(t *testing.T, base, id string) {
	t.Helper()
	Eventually(t, 10*time.Second, func() error {
		resp, err := http.Get(base + "/api/sessions/" + id)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var s struct {
			State struct {
				Tracks []struct {
					ID    string
					Steps []bool
				}
			}
		}
		if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
			return fmt.Errorf("GET session: HTTP %d: %w", resp.StatusCode, err)
		}
		if len(s.State.Tracks) != 1 || s.State.Tracks[0].ID != "track-1" {
			return fmt.Errorf("tracks %+v, want just track-1", s.State.Tracks)
		}
		if steps := s.State.Tracks[0].Steps; len(steps) > 3 && steps[3] {
			return errors.New("step 3 of track-1 is still on")
		}
		return nil
	})
}

// consoleLog collects what a page writes to its console.
type consoleLog struct {
	mu   sync.Mutex
	msgs []chromedp.ConsoleMessage
}

// follow reads the console of the page in ctx until ctx ends.
func (l *consoleLog) follow(ctx context.Context, wg *sync.WaitGroup) {
	msgs := chromedp.Console(ctx) // subscribes now
	wg.Add(1)
	go func() {
		defer wg.Done()
		for m, err := range msgs {
			if err != nil {
				return
			}
			l.mu.Lock()
			l.msgs = append(l.msgs, m)
			l.mu.Unlock()
		}
	}()
}

// all returns every message, one a line, with where it came from.
func (l *consoleLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, m := range l.msgs {
		out = append(out, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1))
	}
	return out
}

// errors returns the uncaught exceptions and the error messages (console.error
// calls, and the browser's own, such as a failed request or WebSocket).
func (l *consoleLog) errors() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, m := range l.msgs {
		if m.IsException() || m.Type == chromedp.ConsoleError {
			out = append(out, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line+1))
		}
	}
	return out
}

// pageDiagnostics returns the page's location, visible text and console.
func pageDiagnostics(ctx context.Context, console *consoleLog) string {
	var b strings.Builder
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	type snapshot struct {
		URL    string   `json:"url"`
		Status string   `json:"status"`
		On     []string `json:"on"`
		Body   string   `json:"body"`
	}
	s, err := chromedp.Run(dctx, chromedp.Evaluate[snapshot](
		`({url: location.href, status: document.getElementById('status')?.textContent ?? '',
		  on: [...document.querySelectorAll('#grid .step.on')].map((e) => e.id),
		  body: document.body ? document.body.innerText : ''})`))
	if err != nil {
		fmt.Fprintf(&b, "(could not read the page: %v)\n", err)
	} else {
		fmt.Fprintf(&b, "url: %s\nstatus: %s\nsteps on: %v\ntext:\n%s\n", s.URL, s.Status, s.On, s.Body)
	}
	msgs := console.all()
	fmt.Fprintf(&b, "console (%d messages):\n", len(msgs))
	for _, m := range msgs {
		fmt.Fprintf(&b, "  %s\n", m)
	}
	return b.String()
}
