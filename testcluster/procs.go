package testcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"chorus/node"
)

// BuildBinary builds cmd/chorus into dir and returns the binary's path. It
// finds the module root from this source file, so tests in any package can
// call it from TestMain.
func BuildBinary(dir string) (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("build chorus: cannot locate the module root")
	}
	root := filepath.Dir(filepath.Dir(file))
	bin := filepath.Join(dir, "chorus")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/chorus")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build chorus: %w\n%s", err, out)
	}
	return bin, nil
}

// ProcOptions configure a cluster of chorus serve processes.
type ProcOptions struct {
	Binary string // the chorus binary; required
	Dir    string // data dirs and logs go here; required
	Nodes  int    // default 3
	// FirstIP is the last octet of node 1's loopback address; node i gets
	// FirstIP+i. Default 11 (127.0.0.11, .12, .13), so iptables rules can cut
	// single links.
	FirstIP int
	// HTTPPorts and PeerPorts pin the ports (one per node); default: free ports.
	HTTPPorts, PeerPorts []int
	Secret               string   // default "chorus-test-secret"
	AdminToken           string   // default "chorus-test-admin"
	ExtraArgs            []string // appended to every node's command line
}

// Proc is one chorus serve process. Its addresses stay the same across restarts.
type Proc struct {
	Index    int
	ID       string
	HTTPAddr string
	PeerAddr string
	DataDir  string
	LogPath  string // the node's stdout and stderr, appended across restarts

	mu     sync.Mutex // guards cmd, done, paused
	cmd    *exec.Cmd
	done   chan struct{} // closed when the process has exited
	err    error         // the exit status, once done
	paused bool
}

// Procs is a cluster of real node processes.
type Procs struct {
	opts  ProcOptions
	Nodes []*Proc
	http  *http.Client
	// admin has a longer timeout than http: a node answers an admin call
	// within its own 15s admin timeout.
	admin *http.Client
}

// StartProcs starts every node and waits until they agree on a leader.
func StartProcs(ctx context.Context, opts ProcOptions) (*Procs, error) {
	if opts.Binary == "" || opts.Dir == "" {
		return nil, errors.New("start procs: Binary and Dir are required")
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.FirstIP == 0 {
		opts.FirstIP = 11
	}
	if opts.Secret == "" {
		opts.Secret = "chorus-test-secret"
	}
	if opts.AdminToken == "" {
		opts.AdminToken = "chorus-test-admin"
	}
	p := &Procs{opts: opts, http: &http.Client{Timeout: 2 * time.Second}, admin: &http.Client{Timeout: 20 * time.Second}}
	var held []net.Listener // chosen ports stay taken until all are chosen, so no two are equal
	for i := 0; i < opts.Nodes; i++ {
		ip := "127.0.0." + strconv.Itoa(opts.FirstIP+i)
		port := func(pinned []int) (int, error) {
			if i < len(pinned) {
				return pinned[i], nil
			}
			ln, err := holdPort(ip)
			if err != nil {
				return 0, err
			}
			held = append(held, ln)
			return ln.Addr().(*net.TCPAddr).Port, nil
		}
		hp, err := port(opts.HTTPPorts)
		if err != nil {
			return nil, err
		}
		pp, err := port(opts.PeerPorts)
		if err != nil {
			return nil, err
		}
		id := "n" + strconv.Itoa(i+1)
		p.Nodes = append(p.Nodes, &Proc{
			Index: i, ID: id,
			HTTPAddr: net.JoinHostPort(ip, strconv.Itoa(hp)),
			PeerAddr: net.JoinHostPort(ip, strconv.Itoa(pp)),
			DataDir:  filepath.Join(opts.Dir, id),
			LogPath:  filepath.Join(opts.Dir, id+".log"),
		})
	}
	for _, ln := range held {
		ln.Close()
	}
	for i := range p.Nodes {
		if err := p.Start(i); err != nil {
			p.Close()
			return nil, err
		}
	}
	if _, err := p.WaitLeader(ctx, 15*time.Second); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// holdPort listens on a free port of ip; the caller closes it.
func holdPort(ip string) (net.Listener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return nil, fmt.Errorf("find a free port on %s: %w", ip, err)
	}
	return ln, nil
}

// AddNode adds a node that is not a member yet: the next id (n4 after a
// cluster of three) on the next loopback address, with free ports. It is not
// started; StartFresh starts it without --peers, waiting to be added (a new
// machine that replaces a dead one). It returns the node's index. Not safe
// for use concurrently with the other methods.
func (p *Procs) AddNode() (int, error) {
	i := len(p.Nodes)
	ip := "127.0.0." + strconv.Itoa(p.opts.FirstIP+i)
	hl, err := holdPort(ip)
	if err != nil {
		return 0, err
	}
	defer hl.Close()
	pl, err := holdPort(ip)
	if err != nil {
		return 0, err
	}
	defer pl.Close()
	id := "n" + strconv.Itoa(i+1)
	p.Nodes = append(p.Nodes, &Proc{
		Index: i, ID: id,
		HTTPAddr: hl.Addr().String(),
		PeerAddr: pl.Addr().String(),
		DataDir:  filepath.Join(p.opts.Dir, id),
		LogPath:  filepath.Join(p.opts.Dir, id+".log"),
	})
	return i, nil
}

// exited returns an error with the tail of the node's log if its process has
// ended by itself, else nil.
func (p *Procs) exited(i int) error {
	n := p.Nodes[i]
	n.mu.Lock()
	done, err := n.done, n.err
	n.mu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
	default:
		return nil
	}
	log, _ := os.ReadFile(n.LogPath) // best effort: the log only adds detail to the error
	if len(log) > 2000 {
		log = log[len(log)-2000:]
	}
	return fmt.Errorf("%s exited (%v); its log ends:\n%s", n.ID, err, log)
}

// Args returns the command line node i runs with.
func (p *Procs) Args(i int) []string { return p.args(i, true) }

// args returns node i's command line, with the --peers list that bootstraps
// an empty data dir or without it (the node then waits to be added).
func (p *Procs) args(i int, bootstrap bool) []string {
	n := p.Nodes[i]
	args := []string{"serve",
		"--id", n.ID, "--data-dir", n.DataDir,
		"--http-addr", n.HTTPAddr, "--peer-addr", n.PeerAddr,
		"--cluster-secret", p.opts.Secret, "--admin-token", p.opts.AdminToken,
	}
	if bootstrap {
		var peers []string
		for _, o := range p.Nodes {
			peers = append(peers, o.ID+"="+o.PeerAddr)
		}
		args = append(args, "--peers", strings.Join(peers, ","))
	}
	return append(args, p.opts.ExtraArgs...)
}

// Start starts node i (first start or restart on the same data dir). A node
// whose process has exited by itself counts as not running.
func (p *Procs) Start(i int) error { return p.start(i, false) }

// StartFresh wipes node i's data dir and starts it without --peers, so that
// it waits to be added by the cluster (AddMember): a replaced machine. The
// node must not be running.
func (p *Procs) StartFresh(i int) error { return p.start(i, true) }

func (p *Procs) start(i int, fresh bool) error {
	n := p.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd != nil {
		select {
		case <-n.done: // exited by itself: its waiter has finished, start anew
		default:
			return fmt.Errorf("start %s: already running", n.ID)
		}
	}
	if fresh {
		if err := os.RemoveAll(n.DataDir); err != nil {
			return fmt.Errorf("start %s: wipe data dir: %w", n.ID, err)
		}
	}
	if err := os.MkdirAll(filepath.Dir(n.LogPath), 0o750); err != nil {
		return fmt.Errorf("start %s: %w", n.ID, err)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("start %s: %w", n.ID, err)
	}
	cmd := exec.Command(p.opts.Binary, p.args(i, !fresh)...)
	// A process group of its own: a Ctrl-C in the terminal reaches the
	// harness, which decides what happens to its nodes, and not the nodes.
	// Pdeathsig kills the node when the harness dies without its cleanup
	// (SIGKILL, SIGQUIT), instead of leaving it running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "CHORUS_CLUSTER_SECRET=", "CHORUS_ADMIN_TOKEN=")
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", n.ID, err)
	}
	done := make(chan struct{})
	n.cmd, n.done, n.paused = cmd, done, false
	go func() {
		err := cmd.Wait()
		logf.Close()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(done)
	}()
	return nil
}

// signal sends sig to node i and, for terminating signals, waits for it to exit.
func (p *Procs) signal(i int, sig syscall.Signal, wait bool) error {
	n := p.Nodes[i]
	n.mu.Lock()
	cmd, done, paused := n.cmd, n.done, n.paused
	n.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("%s is not running", n.ID)
	}
	if wait && paused {
		_ = cmd.Process.Signal(syscall.SIGCONT) // a stopped process cannot act on SIGTERM; it may already be gone
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", n.ID, err)
	}
	if !wait {
		return nil
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill() // it ignored the signal; the error below says so
		<-done
		return fmt.Errorf("%s did not exit within 20s of %v", n.ID, sig)
	}
	n.mu.Lock()
	n.cmd, n.paused = nil, false
	n.mu.Unlock()
	return nil
}

// Kill sends SIGKILL to node i and waits for it to exit.
func (p *Procs) Kill(i int) error { return p.signal(i, syscall.SIGKILL, true) }

// Stop sends SIGTERM to node i and waits for its graceful exit.
func (p *Procs) Stop(i int) error { return p.signal(i, syscall.SIGTERM, true) }

// Pause sends SIGSTOP to node i.
func (p *Procs) Pause(i int) error {
	if err := p.signal(i, syscall.SIGSTOP, false); err != nil {
		return err
	}
	p.Nodes[i].mu.Lock()
	p.Nodes[i].paused = true
	p.Nodes[i].mu.Unlock()
	return nil
}

// Resume sends SIGCONT to node i.
func (p *Procs) Resume(i int) error {
	if err := p.signal(i, syscall.SIGCONT, false); err != nil {
		return err
	}
	p.Nodes[i].mu.Lock()
	p.Nodes[i].paused = false
	p.Nodes[i].mu.Unlock()
	return nil
}

// Running reports whether node i has a live process (paused counts); a
// process that has exited by itself does not.
func (p *Procs) Running(i int) bool {
	n := p.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.done:
		return false
	default:
		return true
	}
}

// PID returns node i's process id, or 0 when it has never been started.
func (p *Procs) PID(i int) int {
	n := p.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// Close kills every node.
func (p *Procs) Close() {
	for i := range p.Nodes {
		if p.Running(i) {
			_ = p.Kill(i) // best effort at teardown; Kill waits for the exit
		}
	}
}

// Status fetches node i's /cluster/status.
func (p *Procs) Status(ctx context.Context, i int) (node.Status, error) {
	var st node.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.Nodes[i].HTTPAddr+"/cluster/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s status: HTTP %d", p.Nodes[i].ID, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("%s status: %w", p.Nodes[i].ID, err)
	}
	return st, nil
}

// WaitLeader waits until the running, unpaused nodes agree on a leader that
// is one of them, and returns its index.
func (p *Procs) WaitLeader(ctx context.Context, within time.Duration) (int, error) {
	leader := -1
	err := Poll(within, func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		leader = -1
		agreed := ""
		for i, n := range p.Nodes {
			n.mu.Lock()
			up := n.cmd != nil && !n.paused
			n.mu.Unlock()
			if !up {
				continue
			}
			if err := p.exited(i); err != nil {
				return err
			}
			st, err := p.Status(ctx, i)
			if err != nil {
				return err
			}
			if st.Leader.ID == "" {
				return fmt.Errorf("%s sees no leader", n.ID)
			}
			if agreed != "" && st.Leader.ID != agreed {
				return fmt.Errorf("%s follows %s, others %s", n.ID, st.Leader.ID, agreed)
			}
			agreed = st.Leader.ID
			if st.State == "leader" {
				leader = i
			}
		}
		if leader < 0 {
			return fmt.Errorf("leader %q is not a running node", agreed)
		}
		return nil
	})
	return leader, err
}

// AdminToken returns the bearer token of the admin routes.
func (p *Procs) AdminToken() string { return p.opts.AdminToken }

// Admin calls an admin route (DESIGN.md §7) on node i with the admin token
// and a JSON body (nil: none). Any node forwards it to the leader. A non-2xx
// answer is an error with the status and the body's text.
func (p *Procs) Admin(ctx context.Context, i int, method, path string, body any) error {
	return p.AdminJSON(ctx, i, method, path, body, nil)
}

// AdminJSON is Admin that also decodes a 2xx answer's JSON body into out,
// unless out is nil.
func (p *Procs) AdminJSON(ctx context.Context, i int, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	n := p.Nodes[i]
	req, err := http.NewRequestWithContext(ctx, method, "http://"+n.HTTPAddr+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+p.opts.AdminToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.admin.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s via %s: %w", method, path, n.ID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		text, _ := io.ReadAll(io.LimitReader(resp.Body, 4096)) // best effort: the text only adds detail to the error
		return fmt.Errorf("%s %s via %s: HTTP %d: %s", method, path, n.ID, resp.StatusCode, bytes.TrimSpace(text))
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s via %s: decode the answer: %w", method, path, n.ID, err)
	}
	return nil
}

// AddMember adds node i back to the cluster as a voter, through node via.
func (p *Procs) AddMember(ctx context.Context, via, i int) error {
	n := p.Nodes[i]
	return p.Admin(ctx, via, http.MethodPost, "/cluster/members",
		map[string]any{"id": n.ID, "peerAddr": n.PeerAddr, "httpAddr": n.HTTPAddr, "voter": true})
}

// RemoveMember removes node i from the cluster, through node via.
func (p *Procs) RemoveMember(ctx context.Context, via, i int) error {
	return p.Admin(ctx, via, http.MethodDelete, "/cluster/members/"+p.Nodes[i].ID, nil)
}

// TransferLeadership asks the leader, through node via, to hand leadership
// to the node with id target, or to any up-to-date voter when target is "".
func (p *Procs) TransferLeadership(ctx context.Context, via int, target string) error {
	return p.Admin(ctx, via, http.MethodPost, "/cluster/leadership-transfer", map[string]string{"id": target})
}
