package testcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"chorus/node"
)

// The deployment files, relative to this package's directory (the working
// directory of its tests).
const (
	composePath    = "../docker-compose.yml"
	envExamplePath = "../deploy/env.example"
	dockerfilePath = "../Dockerfile"
	haproxyPath    = "../deploy/haproxy.cfg"
)

// yamlValue is a node of the YAML subset docker-compose.yml is written in:
// block mappings, block sequences of scalars, and plain or quoted scalars.
type yamlValue struct {
	scalar string
	null   bool // "key:" with nothing under it
	list   []string
	keys   []string // mapping keys in file order
	m      map[string]*yamlValue
}

// get walks a path of mapping keys; nil when one is missing.
func (v *yamlValue) get(path ...string) *yamlValue {
	for _, k := range path {
		if v == nil || v.m == nil {
			return nil
		}
		v = v.m[k]
	}
	return v
}

// items returns a sequence's scalars; none when v is missing.
func (v *yamlValue) items() []string {
	if v == nil {
		return nil
	}
	return v.list
}

type yamlLine struct {
	no     int
	indent int
	text   string
}

// parseYAMLSubset parses the block-style YAML subset that
// docker-compose.yml keeps to, so the tests need no YAML library. Anything
// outside the subset (tabs, flow collections, anchors, block scalars,
// mappings inside sequences) is an error naming the line, not a guess.
func parseYAMLSubset(src string) (*yamlValue, error) {
	var lines []yamlLine
	for i, raw := range strings.Split(src, "\n") {
		if strings.Contains(raw, "\t") {
			return nil, fmt.Errorf("line %d: tab (the subset indents with spaces)", i+1)
		}
		text := strings.TrimRight(raw, " ")
		trimmed := strings.TrimLeft(text, " ")
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.Contains(trimmed, " #") {
			return nil, fmt.Errorf("line %d: comment after a value (outside the subset)", i+1)
		}
		lines = append(lines, yamlLine{no: i + 1, indent: len(text) - len(trimmed), text: trimmed})
	}
	if len(lines) == 0 {
		return nil, errors.New("empty document")
	}
	v, next, err := parseYAMLBlock(lines, 0, lines[0].indent)
	if err != nil {
		return nil, err
	}
	if next != len(lines) {
		return nil, fmt.Errorf("line %d: unexpected indentation", lines[next].no)
	}
	return v, nil
}

// parseYAMLBlock parses the block that starts at lines[i] with the given
// indentation and returns it with the index of the first line after it.
func parseYAMLBlock(lines []yamlLine, i, indent int) (*yamlValue, int, error) {
	v := &yamlValue{}
	if strings.HasPrefix(lines[i].text, "- ") || lines[i].text == "-" {
		for ; i < len(lines) && lines[i].indent == indent; i++ {
			l := lines[i]
			item, ok := strings.CutPrefix(l.text, "- ")
			if !ok {
				return nil, 0, fmt.Errorf("line %d: expected a sequence item", l.no)
			}
			s, err := yamlScalar(item, l.no)
			if err != nil {
				return nil, 0, err
			}
			if _, _, isMap := cutYAMLKey(item); isMap {
				return nil, 0, fmt.Errorf("line %d: a mapping in a sequence (outside the subset)", l.no)
			}
			v.list = append(v.list, s)
		}
		if i < len(lines) && lines[i].indent > indent {
			return nil, 0, fmt.Errorf("line %d: unexpected indentation", lines[i].no)
		}
		return v, i, nil
	}
	v.m = map[string]*yamlValue{}
	for i < len(lines) && lines[i].indent == indent {
		l := lines[i]
		key, rest, ok := cutYAMLKey(l.text)
		if !ok {
			return nil, 0, fmt.Errorf("line %d: expected key: value", l.no)
		}
		if _, dup := v.m[key]; dup {
			return nil, 0, fmt.Errorf("line %d: duplicate key %q", l.no, key)
		}
		i++
		var child *yamlValue
		switch {
		case rest != "":
			s, err := yamlScalar(rest, l.no)
			if err != nil {
				return nil, 0, err
			}
			child = &yamlValue{scalar: s}
		case i < len(lines) && lines[i].indent > indent:
			var err error
			if child, i, err = parseYAMLBlock(lines, i, lines[i].indent); err != nil {
				return nil, 0, err
			}
		default:
			child = &yamlValue{null: true}
		}
		v.keys = append(v.keys, key)
		v.m[key] = child
	}
	if i < len(lines) && lines[i].indent > indent {
		return nil, 0, fmt.Errorf("line %d: unexpected indentation", lines[i].no)
	}
	return v, i, nil
}

// cutYAMLKey splits "key: value" or "key:"; a colon inside a value (an
// address) does not count, since the key must be a plain word.
func cutYAMLKey(s string) (key, rest string, ok bool) {
	key, rest, ok = strings.Cut(s, ":")
	if !ok || key == "" || strings.ContainsAny(key, " \"'{}[]") {
		return "", "", false
	}
	if rest != "" && rest[0] != ' ' {
		return "", "", false
	}
	return key, strings.TrimSpace(rest), true
}

// yamlScalar reads a plain, single- or double-quoted scalar.
func yamlScalar(s string, no int) (string, error) {
	switch {
	case strings.HasPrefix(s, `"`):
		u, err := strconv.Unquote(s)
		if err != nil {
			return "", fmt.Errorf("line %d: %w", no, err)
		}
		return u, nil
	case strings.HasPrefix(s, "'"):
		if len(s) < 2 || !strings.HasSuffix(s, "'") {
			return "", fmt.Errorf("line %d: unterminated quote", no)
		}
		return strings.ReplaceAll(s[1:len(s)-1], "''", "'"), nil
	case strings.ContainsAny(s[:1], "[{&*|>!%@`"):
		return "", fmt.Errorf("line %d: %q is outside the YAML subset", no, s)
	}
	return s, nil
}

// interpolate expands compose's ${VAR}, ${VAR:-default} and ${VAR:?error}
// (and $$) from env, as docker compose does with .env.
func interpolate(s string, env map[string]string) (string, error) {
	var b strings.Builder
	for {
		i := strings.IndexByte(s, '$')
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		b.WriteString(s[:i])
		s = s[i:]
		switch {
		case strings.HasPrefix(s, "$$"):
			b.WriteByte('$')
			s = s[2:]
			continue
		case !strings.HasPrefix(s, "${"):
			return "", fmt.Errorf("%q: only ${VAR} forms are used here", s)
		}
		end := strings.IndexByte(s, '}')
		if end < 0 {
			return "", fmt.Errorf("%q: unterminated ${", s)
		}
		expr := s[2:end]
		s = s[end+1:]
		name, val := expr, ""
		switch {
		case strings.Contains(expr, ":?"):
			var msg string
			name, msg, _ = strings.Cut(expr, ":?")
			if env[name] == "" {
				return "", fmt.Errorf("${%s} is unset: %s", name, msg)
			}
			val = env[name]
		case strings.Contains(expr, ":-"):
			var def string
			name, def, _ = strings.Cut(expr, ":-")
			val = env[name]
			if val == "" {
				val = def
			}
		default:
			val = env[name]
		}
		if !regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`).MatchString(name) {
			return "", fmt.Errorf("${%s}: not a variable name", expr)
		}
		b.WriteString(val)
	}
}

// readEnvFile reads KEY=VALUE lines, as compose reads .env.
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, fmt.Errorf("%s:%d: not KEY=VALUE", path, i+1)
		}
		env[k] = v
	}
	return env, nil
}

// dockerfileEnv returns the ENV KEY=VALUE settings of the Dockerfile, the
// environment every container of the image starts with.
func dockerfileEnv(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ENV ")
		if !ok {
			continue
		}
		for _, kv := range strings.Fields(rest) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return nil, fmt.Errorf("Dockerfile: ENV %q: want KEY=VALUE", rest)
			}
			env[k] = v
		}
	}
	return env, nil
}

// composeNode is one chorus node of docker-compose.yml.
type composeNode struct {
	service string
	args    []string          // after "serve"
	env     map[string]string // the image's ENV, then the service's environment
}

// composeFile is what the tests read from docker-compose.yml.
type composeFile struct {
	doc   *yamlValue
	nodes []composeNode
}

// loadCompose parses docker-compose.yml and, with deploy/env.example as its
// .env, returns the services that run chorus serve.
func loadCompose(tb testing.TB) composeFile {
	tb.Helper()
	src, err := os.ReadFile(composePath)
	if err != nil {
		tb.Fatal(err)
	}
	doc, err := parseYAMLSubset(string(src))
	if err != nil {
		tb.Fatalf("docker-compose.yml: %v", err)
	}
	dotenv, err := readEnvFile(envExamplePath)
	if err != nil {
		tb.Fatal(err)
	}
	imageEnv, err := dockerfileEnv(dockerfilePath)
	if err != nil {
		tb.Fatal(err)
	}
	services := doc.get("services")
	if services == nil || services.m == nil {
		tb.Fatal("docker-compose.yml: no services")
	}
	cf := composeFile{doc: doc}
	for _, name := range services.keys {
		svc := services.m[name]
		cmd := svc.get("command")
		if cmd == nil || len(cmd.list) == 0 || cmd.list[0] != "serve" {
			continue
		}
		n := composeNode{service: name, env: map[string]string{}}
		for k, v := range imageEnv {
			n.env[k] = v
		}
		for _, a := range cmd.list[1:] {
			s, err := interpolate(a, dotenv)
			if err != nil {
				tb.Fatalf("docker-compose.yml: %s: command: %v", name, err)
			}
			n.args = append(n.args, s)
		}
		if e := svc.get("environment"); e != nil {
			if e.m == nil {
				tb.Fatalf("docker-compose.yml: %s: environment must be a mapping", name)
			}
			for k, v := range e.m {
				s, err := interpolate(v.scalar, dotenv)
				if err != nil {
					tb.Fatalf("docker-compose.yml: %s: environment: %v", name, err)
				}
				n.env[k] = s
			}
		}
		cf.nodes = append(cf.nodes, n)
	}
	return cf
}

// flagValue returns the value of --name=value (or --name value) in args.
func flagValue(args []string, name string) (string, bool) {
	for i, a := range args {
		a = "-" + strings.TrimLeft(a, "-")
		if v, ok := strings.CutPrefix(a, "-"+name+"="); ok {
			return v, true
		}
		if a == "-"+name && i+1 < len(args) {
			return args[i+1], true
		}
	}
	return "", false
}

// perNodeFlags are the serve flags that name one node and its addresses;
// testcluster.StartProcs sets them itself.
var perNodeFlags = []string{"id", "http-addr", "peer-addr", "advertise-addr", "peers", "data-dir"}

// sharedFlags returns node n's flags other than perNodeFlags, in the
// --name=value form the compose file uses: what every node runs with.
func (n composeNode) sharedFlags(tb testing.TB) []string {
	tb.Helper()
	var out []string
	for _, a := range n.args {
		name, _, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok || !strings.HasPrefix(a, "--") {
			tb.Fatalf("docker-compose.yml: %s: write %q as --name=value", n.service, a)
		}
		if !slices.Contains(perNodeFlags, name) {
			out = append(out, a)
		}
	}
	return out
}

// TestComposeFile checks what docker-compose.yml promises without running
// it: three nodes, each with its own id, data volume, restart policy and the
// secrets from .env; the proxy in front with deploy/haproxy.cfg, whose
// servers are the nodes' HTTP addresses and whose bind is the published port.
func TestComposeFile(t *testing.T) {
	cf := loadCompose(t)
	if len(cf.nodes) != 3 {
		t.Fatalf("docker-compose.yml runs %d chorus nodes, want 3", len(cf.nodes))
	}
	cfg, err := os.ReadFile(haproxyPath)
	if err != nil {
		t.Fatal(err)
	}
	servers := haproxyServers(string(cfg))
	ids := map[string]bool{}
	var httpAddrs []string
	for _, n := range cf.nodes {
		svc := cf.doc.get("services", n.service)
		id, _ := flagValue(n.args, "id")
		if id == "" || ids[id] {
			t.Errorf("%s: --id %q is missing or not unique", n.service, id)
		}
		ids[id] = true
		for _, key := range []string{"CHORUS_CLUSTER_SECRET", "CHORUS_ADMIN_TOKEN"} {
			if n.env[key] == "" {
				t.Errorf("%s: %s is not set", n.service, key)
			}
		}
		for _, key := range []string{"CHORUS_ID", "CHORUS_HTTP_ADDR", "CHORUS_PEER_ADDR", "CHORUS_ADVERTISE_ADDR"} {
			if _, ok := n.env[key]; ok {
				t.Errorf("%s: %s is set; give it as a flag (the operator commands read the same variable)", n.service, key)
			}
		}
		if r := svc.get("restart"); r == nil || (r.scalar != "unless-stopped" && r.scalar != "always") {
			t.Errorf("%s: restart policy %v, want unless-stopped or always", n.service, r)
		}
		if n.env["CHORUS_DATA_DIR"] != "/data" {
			t.Errorf("%s: data dir %q, want /data (the image's volume)", n.service, n.env["CHORUS_DATA_DIR"])
		}
		vols := svc.get("volumes").items()
		var vol string
		for _, v := range vols {
			if name, ok := strings.CutSuffix(v, ":/data"); ok {
				vol = name
			}
		}
		if vol == "" || cf.doc.get("volumes", vol) == nil {
			t.Errorf("%s: no named volume at /data (volumes %v)", n.service, vols)
		}
		addr, _ := flagValue(n.args, "http-addr")
		httpAddrs = append(httpAddrs, addr)
		if host, _, _ := strings.Cut(addr, ":"); host != n.service {
			t.Errorf("%s: --http-addr %q: bind the service's own name, so that the address it announces is one the others can reach", n.service, addr)
		}
		if mc, _ := flagValue(n.args, "max-conns-per-ip"); mc != "0" {
			t.Errorf("%s: --max-conns-per-ip %q behind the proxy, want 0 (the proxy applies it)", n.service, mc)
		}
		if cr, _ := flagValue(n.args, "create-rate"); cr != "0" {
			t.Errorf("%s: --create-rate %q behind the proxy, want 0 (the proxy applies it)", n.service, cr)
		}
	}
	slices.Sort(httpAddrs)
	slices.Sort(servers)
	if !slices.Equal(httpAddrs, servers) {
		t.Errorf("deploy/haproxy.cfg sends to %v, the nodes listen on %v", servers, httpAddrs)
	}

	proxy := cf.doc.get("services", "proxy")
	if proxy == nil {
		t.Fatal("docker-compose.yml: no proxy service")
	}
	mounted := false
	for _, v := range proxy.get("volumes").items() {
		if strings.HasPrefix(v, "./deploy/haproxy.cfg:") {
			mounted = true
		}
	}
	if !mounted {
		t.Error("proxy: deploy/haproxy.cfg is not mounted")
	}
	bind := haproxyBindPort(string(cfg))
	published := false
	for _, p := range proxy.get("ports").items() {
		if strings.HasSuffix(p, ":"+bind) {
			published = true
		}
	}
	if !published {
		t.Errorf("proxy: haproxy binds port %s, which is not published (%v)", bind, proxy.get("ports").items())
	}
}

// haproxyServers returns the addresses of the server lines of backend nodes.
func haproxyServers(cfg string) []string {
	var out []string
	for _, line := range strings.Split(cfg, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "server" {
			out = append(out, f[2])
		}
	}
	return out
}

// haproxyBindPort returns the port of the public frontend's bind line.
func haproxyBindPort(cfg string) string {
	for _, line := range strings.Split(cfg, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "bind" {
			_, port, _ := strings.Cut(f[1], ":")
			return port
		}
	}
	return ""
}

// hostPort matches host:port in a flag or variable value.
var hostPort = regexp.MustCompile(`([A-Za-z0-9.\-]+):([0-9]{2,5})`)

// TestComposeNodes starts the three nodes of docker-compose.yml as compose
// would: the image's ENV, then each service's environment with
// deploy/env.example as .env, and its command, through chorus's own flag
// parsing. Each service name becomes one loopback address of this test
// (127.0.0.86 to .88), 0.0.0.0 the node's own, and /data a temporary
// directory; nothing else changes. They must form one cluster that announces
// the addresses the compose file gives, and `chorus status` run with a node's
// environment (docker compose exec n1 /chorus status) must see all three.
func TestComposeNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	cf := loadCompose(t)
	bin, err := BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ipOf := map[string]string{}
	for i, n := range cf.nodes {
		ipOf[n.service] = "127.0.0." + strconv.Itoa(86+i)
	}
	mapped := map[string]string{} // service:port -> loopback ip:port
	var held []net.Listener
	render := func(self, s string) string {
		return hostPort.ReplaceAllStringFunc(s, func(hp string) string {
			m := hostPort.FindStringSubmatch(hp)
			host := m[1]
			if host == "0.0.0.0" {
				host = self
			}
			ip, ok := ipOf[host]
			if !ok {
				return hp
			}
			key := host + ":" + m[2]
			if a, ok := mapped[key]; ok {
				return a
			}
			ln, err := holdPort(ip)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, ln)
			mapped[key] = ln.Addr().String()
			return mapped[key]
		})
	}
	type proc struct {
		id, httpAddr, peerAddr string
		args, env              []string
		log                    string
		exited                 chan struct{} // closed when the process has ended
	}
	var procs []proc
	for _, n := range cf.nodes {
		p := proc{log: filepath.Join(dir, n.service+".log")}
		for _, a := range n.args {
			p.args = append(p.args, render(n.service, a))
		}
		for k, v := range n.env {
			if v == "/data" {
				v = filepath.Join(dir, n.service)
			}
			p.env = append(p.env, k+"="+render(n.service, v))
		}
		slices.Sort(p.env)
		for _, s := range append(slices.Clone(p.args), p.env...) {
			if strings.Contains(s, "0.0.0.0") || strings.Contains(s, "=/data") {
				t.Fatalf("%s: %q was not rendered", n.service, s)
			}
			for svc := range ipOf {
				if strings.Contains(s, svc+":") {
					t.Fatalf("%s: %q still names %s", n.service, s, svc)
				}
			}
		}
		p.id, _ = flagValue(p.args, "id")
		p.httpAddr, _ = flagValue(p.args, "http-addr")
		p.peerAddr, _ = flagValue(p.args, "advertise-addr")
		procs = append(procs, p)
	}
	for _, ln := range held {
		ln.Close()
	}
	for i := range procs {
		p := &procs[i]
		t.Logf("%s: chorus serve %s", p.id, strings.Join(p.args, " "))
		logf, err := os.Create(p.log)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, append([]string{"serve"}, p.args...)...)
		cmd.Env = p.env // nothing from this process's environment
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			t.Fatal(err)
		}
		p.exited = make(chan struct{})
		go func() { _ = cmd.Wait(); logf.Close(); close(p.exited) }() // an early exit is reported with the log
		t.Cleanup(func() {
			_ = cmd.Process.Kill() // it may have exited already
			<-p.exited
			if t.Failed() {
				b, _ := os.ReadFile(p.log) // best effort: only adds detail to a failure
				t.Logf("%s log:\n%s", p.id, tail(b, 3000))
			}
		})
	}

	ctx := Context(t, 60*time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	want := map[string]proc{}
	for _, p := range procs {
		want[p.id] = p
	}
	Eventually(t, 30*time.Second, func() error {
		leader := ""
		for _, p := range procs {
			select {
			case <-p.exited:
				t.Fatalf("%s exited: its flags or environment were refused", p.id)
			default:
			}
			st, err := statusOf(ctx, hc, p.httpAddr)
			if err != nil {
				return err
			}
			if st.Leader.ID == "" || (leader != "" && st.Leader.ID != leader) {
				return fmt.Errorf("%s follows %q, others %q", p.id, st.Leader.ID, leader)
			}
			leader = st.Leader.ID
			if len(st.Members) != len(procs) {
				return fmt.Errorf("%s lists %d members", p.id, len(st.Members))
			}
			for _, m := range st.Members {
				w, ok := want[m.ID]
				if !ok || m.PeerAddr != w.peerAddr || m.HTTPAddr != w.httpAddr || !m.Voter {
					return fmt.Errorf("%s lists member %+v; the compose file gives %s peer %s http %s", p.id, m, m.ID, w.peerAddr, w.httpAddr)
				}
			}
		}
		return nil
	})

	// docker compose exec n1 /chorus status: the container's environment
	// (CHORUS_ADDR, CHORUS_ADMIN_TOKEN) is all it needs.
	st := exec.CommandContext(ctx, bin, "status")
	st.Env = procs[0].env
	var out strings.Builder
	st.Stdout, st.Stderr = &out, &out
	if err := Poll(20*time.Second, func() error {
		out.Reset()
		return st.Run()
	}); err != nil {
		t.Fatalf("chorus status with %s's environment: %v\n%s", procs[0].id, err, out.String())
	}
	for _, p := range procs {
		if !strings.Contains(out.String(), p.id) {
			t.Errorf("chorus status does not mention %s:\n%s", p.id, out.String())
		}
	}
}

// statusOf fetches GET /cluster/status from addr.
func statusOf(ctx context.Context, hc *http.Client, addr string) (node.Status, error) {
	var st node.Status
	body, code, err := HTTPDo(ctx, hc, http.MethodGet, "http://"+addr+"/cluster/status", "", nil)
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("%s: /cluster/status HTTP %d", addr, code)
	}
	return st, json.Unmarshal(body, &st)
}

// tail returns about the last n bytes of b, from a line start.
func tail(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	b = b[len(b)-n:]
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	}
	return string(b)
}

// TestYAMLSubset: the compose reader reads the subset and refuses what lies
// outside it, so an edit to docker-compose.yml cannot be misread silently.
func TestYAMLSubset(t *testing.T) {
	doc, err := parseYAMLSubset("# c\na:\n  b: \"x y\"\n  c:\n    - serve\n    - --id=n1\n  d:\ne: 'it''s'\n")
	if err != nil {
		t.Fatal(err)
	}
	if doc.get("a", "b").scalar != "x y" || !slices.Equal(doc.get("a", "c").list, []string{"serve", "--id=n1"}) ||
		!doc.get("a", "d").null || doc.get("e").scalar != "it's" || doc.get("a", "x") != nil {
		t.Errorf("parsed %+v", doc)
	}
	for _, bad := range []string{
		"a: [x, y]\n", "a:\n\t- x\n", "a:\n  - b: c\n", "a: &x y\n", "a: |\n  text\n", "a: x # note\n",
		"a: x\na: y\n", "a:\n    b: x\n  c: y\n", "- x\n  - y\n",
	} {
		if _, err := parseYAMLSubset(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	env := map[string]string{"S": "secret", "E": ""}
	for in, want := range map[string]string{
		"${S:?unset}": "secret", "${E:-text}": "text", "${S:-text}": "secret", "a$$b": "a$b", "x${S}y": "xsecrety",
	} {
		if got, err := interpolate(in, env); err != nil || got != want {
			t.Errorf("interpolate(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"${E:?set E in .env}", "${S", "$S", "${1x}"} {
		if _, err := interpolate(bad, env); err == nil {
			t.Errorf("interpolate(%q): no error", bad)
		}
	}
}
