package main

import (
	"bytes"
	"debug/elf"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The module root, from this package's directory (the tests' working directory).
const repoRoot = "../.."

// dockerInstr is one instruction of a Dockerfile.
type dockerInstr struct {
	line int
	op   string // upper case: FROM, COPY, ...
	args string
}

// parseDockerfile reads instructions, joining continued lines and dropping
// comments. A parser directive (# syntax=...) is returned as op "DIRECTIVE".
func parseDockerfile(src string) []dockerInstr {
	var out []dockerInstr
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(src, "\n") {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "#") {
			if len(out) == 0 && cur.Len() == 0 && regexp.MustCompile(`^#\s*[a-zA-Z]+\s*=`).MatchString(t) {
				out = append(out, dockerInstr{line: i + 1, op: "DIRECTIVE", args: t})
			}
			continue
		}
		if t == "" && cur.Len() == 0 {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if s, ok := strings.CutSuffix(t, `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(t)
		op, args, _ := strings.Cut(cur.String(), " ")
		out = append(out, dockerInstr{line: start, op: strings.ToUpper(op), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	return out
}

// makeStaticOutput asks make which file `make static` writes (a dry run).
func makeStaticOutput(t *testing.T, vars ...string) string {
	t.Helper()
	out, err := exec.Command("make", append([]string{"-s", "-n", "-C", repoRoot, "static"}, vars...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("make -n static: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`-o (\S+)`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("make -n static names no output file:\n%s", out)
	}
	return m[1]
}

// TestDockerfile checks that the image builds without the network and runs
// chorus as the README says: one FROM scratch, no RUN or ADD (nothing
// fetched, nothing run), the binary `make static` writes (for TARGETARCH,
// which BuildKit sets; amd64 here), a numeric non-root user, /data as the
// volume and data dir, the serve defaults' ports exposed, chorus serve as the
// entry point and command, only real serve flags' twins in ENV, and a
// .dockerignore that sends the binary and leaves secrets and data out.
func TestDockerfile(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not found (Debian package make; .ci/run installs it)")
	}
	src, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var sf serveFlags
	sf.register(fs)
	twins := map[string]bool{}
	fs.VisitAll(func(f *flag.Flag) { twins[envName(f.Name)] = true })
	port := func(name string) string {
		_, p, err := net.SplitHostPort(fs.Lookup(name).DefValue)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	args := map[string]string{}  // ARG name -> default
	got := map[string][]string{} // op -> args of each
	for _, in := range parseDockerfile(string(src)) {
		got[in.op] = append(got[in.op], in.args)
		switch in.op {
		case "DIRECTIVE":
			t.Errorf("line %d: %s: a parser directive makes BuildKit fetch its frontend image", in.line, in.args)
		case "RUN", "ADD", "ONBUILD":
			t.Errorf("line %d: %s %s: the build must run nothing and fetch nothing", in.line, in.op, in.args)
		case "FROM":
			if in.args != "scratch" {
				t.Errorf("line %d: FROM %s: a base image must be pulled; want scratch", in.line, in.args)
			}
		case "ARG":
			name, def, _ := strings.Cut(in.args, "=")
			args[name] = def
		case "COPY":
			if strings.Contains(in.args, "--from") {
				t.Errorf("line %d: COPY %s: copies from another image", in.line, in.args)
			}
		}
	}
	if len(got["FROM"]) != 1 {
		t.Errorf("%d FROM lines, want 1", len(got["FROM"]))
	}

	// The COPY source, with TARGETARCH as BuildKit sets it for an amd64
	// build, is what make static writes for ARCH=amd64.
	if len(got["COPY"]) != 1 {
		t.Fatalf("COPY lines %q, want one: the binary", got["COPY"])
	}
	cp := strings.Fields(got["COPY"][0])
	if len(cp) != 2 {
		t.Fatalf("COPY %q: want SRC DEST", got["COPY"][0])
	}
	if _, ok := args["TARGETARCH"]; !ok && strings.Contains(cp[0], "TARGETARCH") {
		t.Error("COPY uses ${TARGETARCH} without ARG TARGETARCH in the stage")
	}
	copySrc := strings.ReplaceAll(strings.ReplaceAll(cp[0], "${TARGETARCH}", "amd64"), "$TARGETARCH", "amd64")
	if made := makeStaticOutput(t, "ARCH=amd64"); copySrc != made {
		t.Errorf("the Dockerfile copies %s; make static writes %s", copySrc, made)
	}
	binary := cp[1]

	if u := got["USER"]; len(u) != 1 || !regexp.MustCompile(`^[1-9][0-9]*(:[0-9]+)?$`).MatchString(u[0]) {
		t.Errorf("USER %q: want one numeric, non-root user", u)
	}
	env := map[string]string{}
	for _, e := range got["ENV"] {
		for _, kv := range strings.Fields(e) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				t.Errorf("ENV %q: want KEY=VALUE", e)
			}
			if !twins[k] {
				t.Errorf("ENV %s is no serve flag's twin", k)
			}
			env[k] = v
		}
	}
	if env["CHORUS_DATA_DIR"] != "/data" || !strings.Contains(strings.Join(got["VOLUME"], " "), "/data") {
		t.Errorf("data dir %q, volumes %q: want /data for both", env["CHORUS_DATA_DIR"], got["VOLUME"])
	}
	if w := got["WORKDIR"]; len(w) != 1 || w[0] != "/data" {
		t.Errorf("WORKDIR %q: want /data, created owned by USER", w)
	}
	exposed := strings.Fields(strings.Join(got["EXPOSE"], " "))
	for _, p := range []string{port("http-addr"), port("peer-addr")} {
		if !strings.Contains(" "+strings.Join(exposed, " ")+" ", " "+p+" ") {
			t.Errorf("EXPOSE %v lacks %s", exposed, p)
		}
	}
	if e := got["ENTRYPOINT"]; len(e) != 1 || e[0] != `["`+binary+`"]` {
		t.Errorf("ENTRYPOINT %q: want [%q]", e, binary)
	}
	if c := got["CMD"]; len(c) != 1 || c[0] != `["serve"]` {
		t.Errorf(`CMD %q: want ["serve"]`, c)
	}

	ignore, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	if dockerignored(string(ignore), copySrc) {
		t.Errorf(".dockerignore keeps %s, the binary the image copies, out of the build", copySrc)
	}
	for p, want := range map[string]bool{
		"bin/chorus-linux-arm64":    true,
		".env":                      false,
		"data/n1/raft.db":           false,
		".git/config":               false,
		"bin/chorus":                false,
		"chaos-runs/x/history.json": false,
	} {
		if sent := !dockerignored(string(ignore), p); sent != want {
			t.Errorf(".dockerignore: %s sent to the build: %v, want %v", p, sent, want)
		}
	}
}

// dockerignored reports whether .dockerignore keeps p out of the build
// context: the last pattern that matches p or one of its parent directories
// decides, and a ! pattern brings it back.
func dockerignored(rules, p string) bool {
	ignored := false
	for _, line := range strings.Split(rules, "\n") {
		pat := strings.TrimSpace(line)
		if pat == "" || strings.HasPrefix(pat, "#") {
			continue
		}
		neg := strings.HasPrefix(pat, "!")
		pat = strings.TrimPrefix(strings.TrimPrefix(pat, "!"), "/")
		for q := p; q != "." && q != "/"; q = path.Dir(q) {
			if ok, _ := path.Match(pat, q); ok {
				ignored = !neg
				break
			}
		}
	}
	return ignored
}

// TestStaticBinary builds the binary the image holds with `make static` and
// checks that it is really static, so that it runs on scratch: no program
// interpreter (PT_INTERP), no shared libraries (DT_NEEDED), an x86-64 ELF,
// the version stamped, and it runs.
func TestStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not found (Debian package make; .ci/run installs it)")
	}
	bin := filepath.Join(t.TempDir(), "chorus-linux-amd64")
	abs, err := filepath.Abs(bin)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("make", "-s", "-C", repoRoot, "static", "ARCH=amd64", "STATIC_BIN="+abs, "VERSION=static-test")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make static: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("machine %v, type %v: want an x86-64 executable", f.Machine, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("program header %v: the binary is dynamically linked", p.Type)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		t.Fatal(err)
	}
	if len(libs) > 0 {
		t.Errorf("DT_NEEDED %v: the binary needs shared libraries", libs)
	}
	if f.Section(".interp") != nil || f.Section(".dynamic") != nil {
		t.Error("the binary has .interp or .dynamic sections")
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "chorus static-test" {
		t.Fatalf("%s version: %q, %v", bin, out, err)
	}
	if st, err := os.Stat(bin); err == nil {
		t.Logf("static binary: %s MiB", strconv.FormatFloat(float64(st.Size())/(1<<20), 'f', 1, 64))
	}
}

// TestSystemdUnit checks deploy/chorus.service and the settings file it
// reads: chorus serve with nothing on its command line, the settings file
// accepted by serve's own parsing of the environment (every variable a real
// flag's twin, the required ones set, the peers list naming this node at its
// peer address), the data dir the unit's StateDirectory, time to stop
// gracefully, and systemd-analyze verify, where it is installed.
func TestSystemdUnit(t *testing.T) {
	unit, err := os.ReadFile(filepath.Join(repoRoot, "deploy/chorus.service"))
	if err != nil {
		t.Fatal(err)
	}
	svc := map[string]string{}
	section := ""
	for _, line := range strings.Split(string(unit), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "[") {
			section = line
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && section == "[Service]" && !strings.HasPrefix(line, "#") {
			svc[k] = v
		}
	}
	exec0 := strings.Fields(svc["ExecStart"])
	if len(exec0) != 2 || exec0[1] != "serve" {
		t.Errorf("ExecStart=%s: want the binary and serve, the settings in the environment", svc["ExecStart"])
	}
	if svc["KillSignal"] != "" && svc["KillSignal"] != "SIGTERM" {
		t.Errorf("KillSignal=%s: a node stops gracefully on SIGTERM", svc["KillSignal"])
	}
	if d, err := time.ParseDuration(svc["TimeoutStopSec"]); err != nil || d <= 10*time.Second {
		t.Errorf("TimeoutStopSec=%s: a node may take 10 s to stop; give it more", svc["TimeoutStopSec"])
	}
	if n, err := strconv.Atoi(svc["LimitNOFILE"]); err != nil || n < 16384 {
		t.Errorf("LimitNOFILE=%s: every WebSocket is a file descriptor", svc["LimitNOFILE"])
	}

	envFile := filepath.Join(repoRoot, "deploy/chorus.env.example")
	if svc["EnvironmentFile"] != "/etc/chorus/chorus.env" {
		t.Errorf("EnvironmentFile=%s, which deploy/chorus.env.example does not document", svc["EnvironmentFile"])
	}
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("chorus.env.example: %q is not KEY=VALUE", line)
		}
		env[k] = v
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var f serveFlags
	f.register(fs)
	twins := map[string]bool{}
	fs.VisitAll(func(fl *flag.Flag) { twins[envName(fl.Name)] = true })
	for k := range env {
		if !twins[k] {
			t.Errorf("chorus.env.example: %s is no serve flag's twin", k)
		}
	}
	if err := parseWithEnv(fs, nil, func(k string) string { return env[k] }); err != nil {
		t.Fatalf("serve refuses chorus.env.example: %v", err)
	}
	if f.id == "" || f.secret == "" || f.adminToken == "" {
		t.Errorf("id %q, cluster secret and admin token set: %v, %v", f.id, f.secret != "", f.adminToken != "")
	}
	if f.dataDir != "/var/lib/"+svc["StateDirectory"] {
		t.Errorf("data dir %s, but the unit's StateDirectory is /var/lib/%s", f.dataDir, svc["StateDirectory"])
	}
	peers, err := parsePeers(f.peers)
	if err != nil {
		t.Fatal(err)
	}
	self := false
	for _, p := range peers {
		self = self || (p.ID == f.id && p.Addr == f.peerAddr)
	}
	if len(peers) != 3 || !self {
		t.Errorf("peers %v: want three, this node (%s) at its --peer-addr %s among them", peers, f.id, f.peerAddr)
	}
	if _, err := newLogger(f.logLevel, f.logFormat, io.Discard); err != nil {
		t.Error(err)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not found; the unit's syntax is not verified")
		return
	}
	// verify wants ExecStart's binary to exist: use this test's own.
	self0, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "chorus.service")
	if err := os.WriteFile(path, []byte(strings.Replace(string(unit), "ExecStart="+exec0[0], "ExecStart="+self0, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", path).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
