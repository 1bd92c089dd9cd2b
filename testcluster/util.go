package testcluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// LockAddrs takes an exclusive lock per loopback address 127.0.0.first to
// 127.0.0.(first+n-1), so that two runs of the chaos harness or the load
// generator never share addresses: iptables rules cut addresses, and one
// run's partitions or load would silently hit the other's cluster. The locks
// are released by unlock, or when the process ends.
func LockAddrs(first, n int) (unlock func(), err error) {
	var files []*os.File
	unlock = func() {
		for _, f := range files {
			f.Close() // closing releases the lock
		}
	}
	for i := range n {
		ip := "127.0.0." + strconv.Itoa(first+i)
		f, err := os.OpenFile(filepath.Join(os.TempDir(), "chorus-"+ip+".lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			unlock()
			return nil, fmt.Errorf("lock %s: %w", ip, err)
		}
		files = append(files, f)
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			unlock()
			return nil, fmt.Errorf("%s is in use by another chaos or bench run (%w); give another --first-ip", ip, err)
		}
	}
	return unlock, nil
}

// HTTPDo sends one request with an optional JSON body and bearer token and
// returns the answer's body and status.
func HTTPDo(ctx context.Context, hc *http.Client, method, url, token string, body []byte) ([]byte, int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
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
		return nil, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return b, resp.StatusCode, err
}

// Hold waits for d or until ctx ends, and reports whether d passed with ctx
// still live. The chaos harness and the load generator use it to hold a
// phase for its length; tests poll instead.
func Hold(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
