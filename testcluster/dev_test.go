package testcluster

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevCommand runs `chorus dev` as a user would: it prints the three URLs,
// serves a session through all of them, stops on SIGINT, and keeps the
// session when started again on the same data dir.
func TestDevCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	bin, err := BuildBinary(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	const host = "127.0.0.91"
	hl, err := holdPort(host)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := holdPort(host)
	if err != nil {
		t.Fatal(err)
	}
	httpPort, peerPort := hl.Addr().(*net.TCPAddr).Port, pl.Addr().(*net.TCPAddr).Port
	hl.Close()
	pl.Close()
	// n2 and n3 take the next two ports; make sure they are free too.
	for _, p := range []int{httpPort + 1, httpPort + 2, peerPort + 1, peerPort + 2} {
		if ln, err := net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(p))); err != nil {
			t.Skipf("port %d on %s is taken: %v", p, host, err)
		} else {
			ln.Close()
		}
	}
	start := func() (*exec.Cmd, []string) {
		cmd := exec.Command(bin, "dev", "--host", host, "--data-dir", data,
			"--http-port", fmt.Sprint(httpPort), "--peer-port", fmt.Sprint(peerPort), "--log-level", "warn")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = io.Discard
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }) // a no-op once it exited
		var urls []string
		sc := bufio.NewScanner(out)
		for sc.Scan() && len(urls) < 3 {
			if f := strings.Fields(sc.Text()); len(f) == 2 && strings.HasPrefix(f[1], "http://") {
				urls = append(urls, strings.TrimSuffix(f[1], "/"))
			}
		}
		go func() { _, _ = io.Copy(io.Discard, out) }() // keep draining; ends when the process exits
		if len(urls) != 3 {
			t.Fatalf("chorus dev printed %d URLs, want 3", len(urls))
		}
		return cmd, urls
	}
	stop := func(cmd *exec.Cmd) {
		if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("chorus dev exited with %v after SIGINT", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("chorus dev did not stop within 20s of SIGINT")
		}
	}

	cmd, urls := start()
	var id string
	Eventually(t, 15*time.Second, func() error {
		resp, err := http.Post(urls[0]+"/api/sessions", "application/json", strings.NewReader(`{"state":{"tracks":[],"tempo":133,"swing":0,"version":1}}`))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			return fmt.Errorf("create: HTTP %d", resp.StatusCode)
		}
		var c struct{ ID string }
		if err := json.NewDecoder(resp.Body).Decode(&c); err != nil {
			return err
		}
		id = c.ID
		return nil
	})
	for _, u := range urls {
		if tempo := getTempo(t, u, id); tempo != 133 {
			t.Fatalf("%s: tempo %v, want 133", u, tempo)
		}
	}
	stop(cmd)

	cmd, urls = start()
	Eventually(t, 15*time.Second, func() error {
		if tempo := getTempo(t, urls[2], id); tempo != 133 {
			return fmt.Errorf("after restart: tempo %v", tempo)
		}
		return nil
	})
	stop(cmd)
}

func getTempo(t *testing.T, base, id string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/api/sessions/" + id)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var s struct{ State struct{ Tempo float64 } }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&s) != nil {
		return -1
	}
	return s.State.Tempo
}
