package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"chorus/fsm"
	"chorus/node"
)

const snapshotAbout = `Backs the cluster's state up to a file, and restores it into a cluster:

  chorus snapshot save [--force] FILE      download a consistent backup from the leader
  chorus snapshot restore [--force] FILE   replace the state of a (fresh) cluster with FILE
  chorus snapshot inspect FILE             check FILE offline and print what it holds

save asks --addr for the leader and downloads GET /cluster/backup from it: the
state after a read barrier, so it holds every write acknowledged before the
command started. The file gets a header (index, term, length and SHA-256 of
the state); save writes a temporary FILE.*.tmp, checks the header, the checksum and that
the state decodes, syncs it and renames it to FILE. It refuses to replace an
existing FILE without --force.

restore checks FILE, then sends it to the leader (POST /cluster/restore),
which checks it again, decodes all of it and only then replaces the state.
A cluster that holds sessions is refused unless --force. Every node's
sockets are closed with 1012 and their clients reload; the players the
backup lists are dropped. A restore interrupted by a lost leadership may
have taken effect: run it again with --force (with --force it is retried by
itself). Both retry a few times while the cluster has no leader, and both
need the admin token (--admin-token or CHORUS_ADMIN_TOKEN).`

// snapshotCmd runs chorus snapshot save|restore|inspect.
func snapshotCmd(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	const synopsis = "chorus snapshot save|restore|inspect [flags] FILE"
	if len(args) == 0 || (args[0] != "save" && args[0] != "restore" && args[0] != "inspect" && !isHelp(args[0])) {
		_, _ = io.WriteString(stderr, "Usage: "+synopsis+"\n\n"+snapshotAbout+"\n")
		return &exitError{code: usageExitCode, err: errors.New("snapshot: want save, restore or inspect")}
	}
	if isHelp(args[0]) {
		_, err := io.WriteString(stdout, "Usage: "+synopsis+"\n\n"+snapshotAbout+"\n")
		return err
	}
	verb := args[0]
	flags := flag.NewFlagSet("chorus snapshot "+verb, flag.ContinueOnError)
	flags.SetOutput(stderr)
	var o opsFlags
	var force bool
	timeout := 10 * time.Minute
	if verb != "inspect" {
		o.register(flags)
		flags.DurationVar(&timeout, "timeout", timeout, "how long the whole transfer may take")
		help := "overwrite FILE if it exists"
		if verb == "restore" {
			help = "restore even though the cluster holds sessions, replacing them all"
		}
		flags.BoolVar(&force, "force", false, help)
	}
	if help, err := parseCommand(flags, args[1:], opsEnv(getenv), "chorus snapshot "+verb+" [flags] FILE", snapshotAbout); help || err != nil {
		return err
	}
	if flags.NArg() != 1 || flags.Arg(0) == "" {
		return &exitError{code: usageExitCode, err: fmt.Errorf("snapshot %s: want exactly one FILE", verb)}
	}
	file := flags.Arg(0)
	if verb != "inspect" {
		if o.token == "" {
			return &exitError{code: usageExitCode, err: errors.New("the admin routes need the admin token: --admin-token or CHORUS_ADMIN_TOKEN")}
		}
		if err := o.prepare(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	switch verb {
	case "save":
		return snapshotSave(ctx, o, file, force, stdout, stderr)
	case "restore":
		return snapshotRestore(ctx, o, file, force, stdout, stderr)
	}
	return snapshotInspect(file, stdout)
}

// snapshotSave downloads a backup into file through a temporary file beside it.
func snapshotSave(ctx context.Context, o opsFlags, file string, force bool, stdout, stderr io.Writer) error {
	if !force {
		if _, err := os.Lstat(file); err == nil {
			return fmt.Errorf("snapshot save: %s exists; --force overwrites it", file)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("snapshot save: %w", err)
		}
	}
	always := func(string) bool { return true }
	resp, leader, err := onLeader(ctx, o, stderr, always, func(hc *http.Client, addr string) (*http.Response, error) {
		return opsStream(ctx, hc, http.MethodGet, addr, "/cluster/backup", o.token, nil, 0)
	})
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("snapshot save: %w", httpError(resp, leader))
	}

	// A file of its own (mode 0600), so that two saves to one FILE never
	// write into each other.
	f, err := os.CreateTemp(filepath.Dir(file), filepath.Base(file)+".*.tmp")
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	tmp := f.Name()
	complete := false
	defer func() {
		if !complete {
			_ = f.Close()      // already failing; the file goes
			_ = os.Remove(tmp) // best effort: it is incomplete
		}
	}()
	h, err := node.ReadBackupHeader(resp.Body)
	if err != nil {
		return fmt.Errorf("snapshot save: download from %s: %w", leader, err)
	}
	hb, _ := h.MarshalBinary() // never fails
	if _, err := f.Write(hb); err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := node.CopyBackupPayload(f, resp.Body, h); err != nil {
		return fmt.Errorf("snapshot save: download from %s: %w", leader, err)
	}
	// The checksum proves the transfer; decoding proves that this build
	// can restore what it saved.
	sessions, err := decodedSessions(f, h)
	if err != nil {
		return fmt.Errorf("snapshot save: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("snapshot save: sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("snapshot save: close %s: %w", tmp, err)
	}
	complete = true // a checked backup: kept in tmp if it cannot be moved
	if err := publish(tmp, file, force); err != nil {
		return fmt.Errorf("snapshot save: %w (the checked backup is in %s)", err, tmp)
	}
	fmt.Fprintf(stdout, "saved %s: index %d, term %d, %d sessions, %d bytes\n", file, h.Index, h.Term, sessions, node.BackupHeaderSize+h.Length)
	return nil
}

// publish moves tmp to file and syncs the directory. Without force it
// links, which fails if file appeared meanwhile, instead of renaming over it.
func publish(tmp, file string, force bool) error {
	if force {
		if err := os.Rename(tmp, file); err != nil {
			return err
		}
	} else {
		if err := os.Link(tmp, file); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s appeared during the download and is left alone", file)
			}
			return err
		}
		if err := os.Remove(tmp); err != nil {
			return err
		}
	}
	d, err := os.Open(filepath.Dir(file))
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Dir(file), err)
	}
	return nil
}

// decodedSessions decodes the payload of the backup file f (header h) and
// returns its number of sessions.
func decodedSessions(f *os.File, h node.BackupHeader) (int, error) {
	st, err := fsm.ReadSnapshot(bufio.NewReader(io.NewSectionReader(f, node.BackupHeaderSize, int64(h.Length))))
	if err != nil {
		return 0, fmt.Errorf("%s: %w: the state does not decode: %w", f.Name(), node.ErrBadBackup, err)
	}
	return st.Len(), nil
}

// openBackup opens the backup file and checks its header, length and
// checksum; the caller closes the file.
func openBackup(file string) (*os.File, node.BackupHeader, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, node.BackupHeader{}, err
	}
	h, err := node.ReadBackupHeader(f)
	if err == nil {
		err = node.CopyBackupPayload(io.Discard, f, h)
	}
	if err != nil {
		_ = f.Close() // read only; the check's error is the one to report
		return nil, node.BackupHeader{}, fmt.Errorf("%s: %w", file, err)
	}
	return f, h, nil
}

// snapshotRestore checks file and sends it to the leader.
func snapshotRestore(ctx context.Context, o opsFlags, file string, force bool, stdout, stderr io.Writer) error {
	f, h, err := openBackup(file)
	if err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	defer f.Close()
	size := node.BackupHeaderSize + int64(h.Length)
	path := "/cluster/restore"
	if force {
		path += "?force=true"
	}
	// An interrupted restore may have taken effect: again without --force it
	// would meet the restored sessions (409). The node's message says so.
	retry := func(msg string) bool { return force || !strings.Contains(msg, "interrupted") }
	resp, leader, err := onLeader(ctx, o, stderr, retry, func(hc *http.Client, addr string) (*http.Response, error) {
		return opsStream(ctx, hc, http.MethodPost, addr, path, o.token, io.NewSectionReader(f, 0, size), size)
	})
	if err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("snapshot restore: %w", httpError(resp, leader))
	}
	var rep node.RestoreReport
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&rep); err != nil {
		return fmt.Errorf("snapshot restore: %s answered with something other than a restore report: %w", leader, err)
	}
	fmt.Fprintf(stdout, "restored %s: %d sessions from index %d (term %d); the cluster's log continues after index %d",
		file, rep.Sessions, rep.BackupIndex, rep.BackupTerm, rep.Index)
	if rep.Replaced > 0 {
		fmt.Fprintf(stdout, "; %d sessions replaced", rep.Replaced)
	}
	fmt.Fprintln(stdout)
	if rep.Warning != "" {
		fmt.Fprintf(stderr, "warning: %s\n", rep.Warning)
	}
	return nil
}

// snapshotInspect checks a backup file offline: header, checksum, decode.
func snapshotInspect(file string, stdout io.Writer) error {
	f, h, err := openBackup(file)
	if err != nil {
		return fmt.Errorf("snapshot inspect: %w", err)
	}
	defer f.Close()
	sessions, err := decodedSessions(f, h)
	if err != nil {
		return fmt.Errorf("snapshot inspect: %w", err)
	}
	fmt.Fprintf(stdout, "%s: chorus backup v%d, index %d, term %d, FSM snapshot v%d, %d sessions, %d bytes of state, sha256 %x\n",
		file, h.Version, h.Index, h.Term, h.FSMVersion, sessions, h.Length, h.SHA256)
	return nil
}

// errNoLeaderKnown: the node asked knows no leader, or not its address.
var errNoLeaderKnown = errors.New("knows no leader (or not its HTTP address)")

// leaderTries bounds how often onLeader calls the leader.
const leaderTries = 5

// onLeader finds the leader through --addr's /cluster/status and calls do
// with its HTTP address; do must be safe to call again. While there is no
// leader, or the leader answers 503 with a message that retry accepts, it
// tries again (waiting as Retry-After says, within ctx) up to leaderTries
// times, saying so on stderr. It returns the last response, whose body is
// still to be read, and the address that gave it.
func onLeader(ctx context.Context, o opsFlags, stderr io.Writer, retry func(msg string) bool,
	do func(hc *http.Client, addr string) (*http.Response, error)) (*http.Response, string, error) {
	for try := 1; ; try++ {
		resp, addr, err := leaderOnce(ctx, o, do)
		wait := time.Second
		switch {
		case errors.Is(err, errNoLeaderKnown):
		case err != nil:
			return nil, "", err
		case resp.StatusCode != http.StatusServiceUnavailable:
			return resp, addr, nil
		default:
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10)) // a short read leaves a shorter message
			resp.Body.Close()
			resp.Body = io.NopCloser(bytes.NewReader(b))
			msg := errorText(b)
			if !retry(msg) || try == leaderTries {
				return resp, addr, nil
			}
			if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
				wait = min(time.Duration(s)*time.Second, 10*time.Second)
			}
			err = fmt.Errorf("%s: HTTP 503: %s", addr, msg)
		}
		if try == leaderTries {
			return nil, "", err
		}
		fmt.Fprintf(stderr, "%v; trying again in %v\n", err, wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, "", fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// leaderOnce finds the leader through --addr and calls do with its address,
// following a 307 (leadership moved) to the leader it names, a few times.
func leaderOnce(ctx context.Context, o opsFlags, do func(hc *http.Client, addr string) (*http.Response, error)) (*http.Response, string, error) {
	st, err := fetchStatus(ctx, o.client(5*time.Second), o.addr)
	if err != nil {
		return nil, "", err
	}
	if st.Leader.HTTPAddr == "" {
		return nil, "", fmt.Errorf("%s %w; see chorus status", o.addr, errNoLeaderKnown)
	}
	addr := o.memberURL(st.Leader.HTTPAddr)
	hc := o.client(0) // the transfer is bounded by ctx
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	defer hc.CloseIdleConnections()
	for range 3 {
		resp, err := do(hc, addr)
		if err != nil {
			return nil, "", err
		}
		if resp.StatusCode != http.StatusTemporaryRedirect {
			return resp, addr, nil
		}
		resp.Body.Close()
		u, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || u.Host == "" {
			return nil, "", fmt.Errorf("%s redirected to %q, not a node", addr, resp.Header.Get("Location"))
		}
		addr = o.memberURL(u.Host) // every node serves the scheme of --addr
	}
	return nil, "", errors.New("leadership keeps moving; try again")
}

// opsStream sends a request to the node at base (a URL with its scheme)
// whose body, when not nil, is streamed (size bytes) and returns the
// response for the caller to read and close.
func opsStream(ctx context.Context, hc *http.Client, method, base, path, token string, body io.Reader, size int64) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, base+path, nil)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Body, req.ContentLength = io.NopCloser(body), size
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, base, err)
	}
	return resp, nil
}

// httpError turns a non-2xx answer into an error with the node's message.
func httpError(resp *http.Response, addr string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10)) // the status alone still says enough
	return fmt.Errorf("%s %s via %s: HTTP %d: %s", resp.Request.Method, resp.Request.URL.Path, addr, resp.StatusCode, errorText(b))
}

// errorText is the message of an error body: its "error", or the body.
func errorText(b []byte) string {
	var e struct{ Error string }
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return e.Error
	}
	return strings.TrimSpace(string(b))
}
