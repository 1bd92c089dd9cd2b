package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"chorus/node"
)

// opsTimeout bounds each call of the operator commands; a membership change
// or a transfer waits for the leader, whose own admin timeout is 15 s.
const opsTimeout = 20 * time.Second

// opsFlags are the flags every operator command takes.
type opsFlags struct {
	addr   string
	token  string
	caCert string
	tls    *tls.Config // set by prepare: trusts --ca-cert; nil without it
}

func (o *opsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8081", "address of any node of the cluster: host:port, http://host:port or https://host:port (a bare host:port is https with --ca-cert)")
	fs.StringVar(&o.token, "admin-token", "", "the cluster's admin token")
	fs.StringVar(&o.caCert, "ca-cert", "", "CA certificate (PEM) to trust for nodes served over HTTPS (--tls-cert), such as the ca.pem of 'chorus tls init'")
}

// opsEnv is the environment the operator commands read: only the twins of
// the flags every one of them takes. On a node's host the CHORUS_* variables
// of chorus serve are often set, and CHORUS_ID or CHORUS_PEER_ADDR must not
// quietly become a member to add.
func opsEnv(getenv func(string) string) func(string) string {
	return func(name string) string {
		switch name {
		case envName("addr"), envName("admin-token"), envName("ca-cert"):
			return getenv(name)
		}
		return ""
	}
}

// prepare turns --addr into a base URL and loads --ca-cert; each command
// calls it once its flags are parsed. After it, o.addr has a scheme.
func (o *opsFlags) prepare() error {
	usage := func(err error) error { return &exitError{code: usageExitCode, err: err} }
	if !strings.Contains(o.addr, "://") {
		scheme := "http://"
		if o.caCert != "" {
			scheme = "https://"
		}
		o.addr = scheme + o.addr
	}
	u, err := url.Parse(o.addr)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || strings.Trim(u.Path, "/") != "" {
		return usage(fmt.Errorf("--addr %q: want host:port, http://host:port or https://host:port", o.addr))
	}
	o.addr = u.Scheme + "://" + u.Host
	if o.caCert != "" {
		b, err := os.ReadFile(o.caCert)
		if err != nil {
			return usage(fmt.Errorf("--ca-cert: %w", err))
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return usage(fmt.Errorf("--ca-cert %s: no PEM certificate in it", o.caCert))
		}
		o.tls = &tls.Config{RootCAs: pool}
	}
	return nil
}

// client returns an HTTP client for the cluster's nodes with the given
// overall timeout, trusting --ca-cert when set.
func (o *opsFlags) client(timeout time.Duration) *http.Client {
	if o.tls == nil {
		return &http.Client{Timeout: timeout}
	}
	return &http.Client{Timeout: timeout, Transport: &http.Transport{TLSClientConfig: o.tls.Clone()}}
}

// memberURL is where to reach a member at its HTTP address: with the
// scheme of --addr, as every node of a cluster serves the same.
func (o *opsFlags) memberURL(httpAddr string) string {
	scheme, _, _ := strings.Cut(o.addr, "://")
	return scheme + "://" + httpAddr
}

const statusAbout = `Prints the cluster as every member sees it: one row per member of the raft
configuration, with its state, the leader it follows, its term, its applied,
commit and last log indexes, and its lag (how far its applied index is behind
the leader's commit index). It asks --addr for the members, then each member
at its own HTTP address, with the scheme of --addr (https:// for a cluster
served with --tls-cert; --ca-cert trusts its CA). A member that does not
answer shows as unreachable.
Exit status: 0 when every member answered and all agree on one leader, 1
otherwise, 2 for a bad command line.`

// statusCmd prints the cluster table of every member.
func statusCmd(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("chorus status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o opsFlags
	o.register(fs)
	asJSON := fs.Bool("json", false, "print every member's /cluster/status as a JSON array instead of the table")
	if help, err := parseCommand(fs, args, opsEnv(getenv), "chorus status [flags]", statusAbout); help || err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: usageExitCode, err: fmt.Errorf("status: unexpected argument %q", fs.Arg(0))}
	}
	if err := o.prepare(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opsTimeout)
	defer cancel()
	hc := o.client(3 * time.Second)
	first, err := fetchStatus(ctx, hc, o.addr)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	views := make([]memberView, len(first.Members))
	var wg sync.WaitGroup
	for i, m := range first.Members {
		views[i].member = m
		wg.Add(1)
		go func() {
			defer wg.Done()
			if m.ID == first.ID {
				views[i].status = &first
				return
			}
			if m.HTTPAddr == "" {
				views[i].err = errors.New("no HTTP address known")
				return
			}
			st, err := fetchStatus(ctx, hc, o.memberURL(m.HTTPAddr))
			views[i].status, views[i].err = &st, err
		}()
	}
	wg.Wait()
	if *asJSON {
		var out []any
		for _, v := range views {
			if v.err != nil {
				out = append(out, map[string]string{"id": v.member.ID, "error": v.err.Error()})
			} else {
				out = append(out, v.status)
			}
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return err
		}
	} else if err := writeStatusTable(stdout, views); err != nil {
		return err
	}
	return clusterHealth(views)
}

// memberView is one member and what it said about itself.
type memberView struct {
	member node.Member
	status *node.Status
	err    error
}

func fetchStatus(ctx context.Context, hc *http.Client, addr string) (node.Status, error) {
	var st node.Status
	b, code, err := opsCall(ctx, hc, http.MethodGet, addr, "/cluster/status", "", nil)
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("%s: HTTP %d: %s", addr, code, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("%s: not a cluster status: %w", addr, err)
	}
	return st, nil
}

// writeStatusTable prints one row per member; lag is against the highest
// commit index a leader reported.
func writeStatusTable(w io.Writer, views []memberView) error {
	var leaderCommit uint64
	for _, v := range views {
		if v.status != nil && v.err == nil && v.status.State == "leader" {
			leaderCommit = max(leaderCommit, v.status.CommitIndex)
		}
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tVOTER\tSTATE\tLEADER\tTERM\tAPPLIED\tCOMMIT\tLAST LOG\tLAG\tHTTP")
	for _, v := range views {
		if v.err != nil {
			fmt.Fprintf(tw, "%s\t%t\tunreachable\t-\t-\t-\t-\t-\t-\t%s (%v)\n", v.member.ID, v.member.Voter, v.member.HTTPAddr, v.err)
			continue
		}
		st := v.status
		lag := "-"
		if leaderCommit > 0 {
			lag = strconv.FormatUint(leaderCommit-min(leaderCommit, st.AppliedIndex), 10)
		}
		leader := st.Leader.ID
		if leader == "" {
			leader = "(none)"
		}
		fmt.Fprintf(tw, "%s\t%t\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", v.member.ID, v.member.Voter, st.State, leader,
			st.Term, st.AppliedIndex, st.CommitIndex, st.LastLogIndex, lag, v.member.HTTPAddr)
	}
	return tw.Flush()
}

// clusterHealth returns an error (exit 1) unless every member answered and
// all follow the same leader.
func clusterHealth(views []memberView) error {
	leaders := map[string]bool{}
	var problems []string
	for _, v := range views {
		switch {
		case v.err != nil:
			problems = append(problems, v.member.ID+" is unreachable")
		case v.status.Leader.ID == "":
			problems = append(problems, v.member.ID+" sees no leader")
		default:
			leaders[v.status.Leader.ID] = true
		}
	}
	if len(leaders) > 1 {
		problems = append(problems, fmt.Sprintf("the members follow %d different leaders", len(leaders)))
	}
	if len(problems) > 0 {
		return &exitError{code: exitCode, err: fmt.Errorf("status: %s", strings.Join(problems, "; "))}
	}
	return nil
}

const membersAbout = `Changes the cluster's membership through any node (it forwards to the leader):

  chorus members add --id n4 --peer-addr 10.0.0.4:9081 --http-addr 10.0.0.4:8081 [--nonvoter]
  chorus members remove n3

A node to add must be running with an empty data dir and no --peers. Needs the
admin token (--admin-token or CHORUS_ADMIN_TOKEN). Of the environment, the
operator commands read only CHORUS_ADDR, CHORUS_ADMIN_TOKEN and CHORUS_CA_CERT,
so a node's own CHORUS_ID or CHORUS_PEER_ADDR never stand in for these flags.`

// membersCmd adds or removes a member.
func membersCmd(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	usage := func(err error) error { return &exitError{code: usageExitCode, err: fmt.Errorf("members: %w", err)} }
	if len(args) == 0 || (args[0] != "add" && args[0] != "remove" && !isHelp(args[0])) {
		_, _ = io.WriteString(stderr, "Usage: chorus members add|remove [flags]\n\n"+membersAbout+"\n")
		return usage(errors.New("want add or remove"))
	}
	if isHelp(args[0]) {
		_, err := io.WriteString(stdout, "Usage: chorus members add|remove [flags]\n\n"+membersAbout+"\n")
		return err
	}
	verb := args[0]
	fs := flag.NewFlagSet("chorus members "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o opsFlags
	o.register(fs)
	id := fs.String("id", "", "the new member's node id (add)")
	peerAddr := fs.String("peer-addr", "", "the new member's peer address, host:port (add)")
	httpAddr := fs.String("http-addr", "", "the new member's HTTP address, host:port (add)")
	nonvoter := fs.Bool("nonvoter", false, "add the member as a non-voter (add)")
	synopsis := "chorus members add [flags]"
	if verb == "remove" {
		synopsis = "chorus members remove [flags] ID"
	}
	if help, err := parseCommand(fs, args[1:], opsEnv(getenv), synopsis, membersAbout); help || err != nil {
		return err
	}
	if err := o.prepare(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opsTimeout)
	defer cancel()
	hc := o.client(opsTimeout)
	switch verb {
	case "add":
		if *id == "" || *peerAddr == "" || fs.NArg() > 0 {
			return usage(errors.New("add needs --id and --peer-addr (and should have --http-addr), and no arguments"))
		}
		body, _ := json.Marshal(map[string]any{"id": *id, "peerAddr": *peerAddr, "httpAddr": *httpAddr, "voter": !*nonvoter})
		if err := opsAdmin(ctx, hc, o, http.MethodPost, "/cluster/members", body); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "added %s (%s)\n", *id, *peerAddr)
	default:
		if fs.NArg() != 1 || *id != "" {
			return usage(errors.New("remove takes one member id, e.g. chorus members remove n3"))
		}
		if err := opsAdmin(ctx, hc, o, http.MethodDelete, "/cluster/members/"+fs.Arg(0), nil); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s\n", fs.Arg(0))
	}
	return nil
}

const leadershipAbout = `Hands leadership to another voter, through any node:

  chorus leadership transfer [--to n2]

Without --to, raft picks the most up-to-date voter. Needs the admin token.`

// leadershipCmd transfers leadership.
func leadershipCmd(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) == 0 || (args[0] != "transfer" && !isHelp(args[0])) {
		_, _ = io.WriteString(stderr, "Usage: chorus leadership transfer [flags]\n\n"+leadershipAbout+"\n")
		return &exitError{code: usageExitCode, err: errors.New("leadership: want transfer")}
	}
	if isHelp(args[0]) {
		_, err := io.WriteString(stdout, "Usage: chorus leadership transfer [flags]\n\n"+leadershipAbout+"\n")
		return err
	}
	fs := flag.NewFlagSet("chorus leadership transfer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o opsFlags
	o.register(fs)
	to := fs.String("to", "", "the voter to hand leadership to (default: any up-to-date voter)")
	if help, err := parseCommand(fs, args[1:], opsEnv(getenv), "chorus leadership transfer [flags]", leadershipAbout); help || err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: usageExitCode, err: fmt.Errorf("leadership: unexpected argument %q", fs.Arg(0))}
	}
	if err := o.prepare(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), opsTimeout)
	defer cancel()
	body, _ := json.Marshal(map[string]string{"id": *to})
	if err := opsAdmin(ctx, o.client(opsTimeout), o, http.MethodPost, "/cluster/leadership-transfer", body); err != nil {
		return err
	}
	st, err := fetchStatus(ctx, o.client(3*time.Second), o.addr)
	if err != nil {
		fmt.Fprintln(stdout, "leadership transferred")
		return nil
	}
	fmt.Fprintf(stdout, "leadership transferred; %s now sees %s as the leader\n", st.ID, st.Leader.ID)
	return nil
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }

// opsAdmin calls an admin route and turns a non-2xx answer into an error
// with the node's message.
func opsAdmin(ctx context.Context, hc *http.Client, o opsFlags, method, path string, body []byte) error {
	if o.token == "" {
		return &exitError{code: usageExitCode, err: errors.New("the admin routes need the admin token: --admin-token or CHORUS_ADMIN_TOKEN")}
	}
	b, code, err := opsCall(ctx, hc, method, o.addr, path, o.token, body)
	if err != nil {
		return err
	}
	if code/100 != 2 {
		var e struct{ Error string }
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return fmt.Errorf("%s %s via %s: HTTP %d: %s", method, path, o.addr, code, msg)
	}
	return nil
}

func opsCall(ctx context.Context, hc *http.Client, method, addr, path, token string, body []byte) ([]byte, int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s: %w", method, addr, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return b, resp.StatusCode, err
}
