package transport

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// BenchmarkIdleSocketMemory measures what an idle WebSocket costs the server:
// the transport's socket (its goroutines, buffers, and the hijacked HTTP
// connection) over a Backend whose players hold nothing. The node's side of
// a player, its hub subscription, is node's BenchmarkHubSubscriberMemory.
//
// The clients are coder/websocket connections in a child process (this test
// binary, running TestIdleSocketClients), so nothing of theirs is counted.
// Each client reads, so it answers pings. After a GC, it reports per socket:
//
//	B/socket      (HeapInuse+StackInuse) after minus before
//	rss-B/socket  VmRSS after minus before, with freed memory returned to the OS
//	goroutines/socket
//
// Opt-in, with the number of sockets (10 per session):
//
//	CHORUS_IDLE_SOCKETS=2000 go test ./transport -run '^$' -bench IdleSocketMemory -benchtime 1x
func BenchmarkIdleSocketMemory(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv(envIdleSockets))
	if n <= 0 {
		b.Skipf("set %s=2000 to run", envIdleSockets)
	}
	var heap, rss, goroutines float64
	for b.Loop() {
		heap, rss, goroutines = idleSocketCost(b, n)
	}
	b.ReportMetric(heap, "B/socket")
	b.ReportMetric(rss, "rss-B/socket")
	b.ReportMetric(goroutines, "goroutines/socket")
}

const (
	envIdleSockets   = "CHORUS_IDLE_SOCKETS"
	envIdleSocketURL = "CHORUS_IDLE_SOCKETS_URL" // set for the child process only
)

func idleSocketCost(b *testing.B, n int) (heap, rss, goroutines float64) {
	be := &idleBackend{}
	api := NewAPI(APIConfig{Backend: be})
	srv := httptest.NewServer(api)
	defer srv.Close()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := api.Shutdown(ctx); err != nil {
			b.Errorf("shutdown: %v", err)
		}
	}()
	child := exec.Command(os.Args[0], "-test.run=^TestIdleSocketClients$")
	child.Env = append(os.Environ(), envIdleSockets+"="+strconv.Itoa(n), envIdleSocketURL+"=ws"+strings.TrimPrefix(srv.URL, "http"))
	var out bytes.Buffer // read once the child has exited
	child.Stdout, child.Stderr = &out, &out
	stdin, err := child.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := child.Start(); err != nil {
		b.Fatalf("start the client process: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	defer func() {
		_ = stdin.Close() // tells the child to close its sockets and exit
		if err := <-exited; err != nil {
			b.Errorf("client process: %v\n%s", err, out.Bytes())
		}
	}()
	before := memNow() // with the child's pipes and waiter in it
	if _, err := io.WriteString(stdin, "dial\n"); err != nil {
		b.Fatalf("start the clients: %v", err)
	}
	eventually(b, time.Minute, func() error {
		select {
		case err := <-exited:
			b.Fatalf("client process exited early: %v\n%s", err, out.Bytes())
		default:
		}
		if got := be.waiting.Load(); got < int64(n) {
			return fmt.Errorf("%d of %d sockets idle", got, n)
		}
		return nil
	})

	after := memNow()
	per := func(x, y uint64) float64 { return (float64(x) - float64(y)) / float64(n) }
	return per(after.heap, before.heap), per(after.rss, before.rss), per(after.goroutines, before.goroutines)
}

type memReading struct{ heap, rss, goroutines uint64 }

// memNow reads the process after a GC that returns freed memory to the OS.
func memNow() memReading {
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memReading{heap: ms.HeapInuse + ms.StackInuse, rss: vmRSS(), goroutines: uint64(runtime.NumGoroutine())}
}

// vmRSS is the resident set in bytes, or 0 where /proc is missing.
func vmRSS() uint64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(status)) {
		if kb, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(kb), "kB")), 10, 64)
			return v << 10
		}
	}
	return 0
}

// TestIdleSocketClients is the client process of BenchmarkIdleSocketMemory:
// given a line on stdin it opens the sockets, reads until they close, and
// closes them when its stdin does. Run on its own, it skips.
func TestIdleSocketClients(t *testing.T) {
	url := os.Getenv(envIdleSocketURL)
	if url == "" {
		t.Skip("the client process of BenchmarkIdleSocketMemory")
	}
	n, _ := strconv.Atoi(os.Getenv(envIdleSockets))
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		t.Fatalf("wait for the benchmark: %v", err)
	}
	var wg sync.WaitGroup
	var conns []*websocket.Conn
	defer func() {
		for _, c := range conns {
			_ = c.CloseNow() // the process is done with it; the server sees the socket go
		}
		wg.Wait()
	}()
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, _, err := websocket.Dial(ctx, url+"/api/sessions/"+idleSessionID(i/10)+"/ws", nil)
		cancel()
		if err != nil {
			t.Fatalf("dial socket %d: %v", i, err)
		}
		conns = append(conns, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if _, _, err := c.Read(context.Background()); err != nil {
					return
				}
			}
		}()
	}
	_, _ = io.Copy(io.Discard, stdin) // until the benchmark closes it
}

func idleSessionID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// idleBackend joins every socket with a player that holds nothing and sends
// nothing after its snapshot.
type idleBackend struct {
	Backend
	joined  atomic.Int64
	waiting atomic.Int64 // players whose socket registered its wake-up: idle sockets
}

func (be *idleBackend) Members() []string { return nil }

func (be *idleBackend) Join(context.Context, JoinRequest) (Player, error) {
	return &idlePlayer{be: be, id: strconv.FormatInt(be.joined.Add(1), 10)}, nil
}

type idlePlayer struct {
	be *idleBackend
	id string
}

func (p *idlePlayer) ID() string      { return p.id }
func (p *idlePlayer) Immutable() bool { return false }
func (p *idlePlayer) First() [][]byte { return [][]byte{[]byte(`{"type":"snapshot"}`)} }
func (p *idlePlayer) Touch()          {}
func (p *idlePlayer) Leave()          {}

func (p *idlePlayer) Next() ([]byte, bool, error) { return nil, false, nil }

// SetWake marks the socket idle: it has sent its first frame and waits.
func (p *idlePlayer) SetWake(func()) { p.be.waiting.Add(1) }

func (p *idlePlayer) Handle(context.Context, string, *int64, []byte) ([][]byte, error) {
	return nil, nil
}

// TestIdleSocketPing: the writer pings an idle socket every PingInterval. A
// client that answers keeps its socket; one that does not is closed with
// 1001.
func TestIdleSocketPing(t *testing.T) {
	api := NewAPI(APIConfig{Backend: &idleBackend{}, PingInterval: 20 * time.Millisecond})
	srv := httptest.NewServer(api)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := api.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		srv.Close()
	})
	url := "ws" + strings.TrimPrefix(srv.URL, "http") + "/api/sessions/" + idleSessionID(0) + "/ws"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(answer bool) (pings <-chan struct{}, closed <-chan error) {
		pinged, readErr := make(chan struct{}, 1), make(chan error, 1)
		c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{OnPingReceived: func(context.Context, []byte) bool {
			select {
			case pinged <- struct{}{}:
			default:
			}
			return answer
		}})
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		t.Cleanup(func() { _ = c.CloseNow() }) // gone already, or going at the end
		go func() {
			for {
				if _, _, err := c.Read(ctx); err != nil {
					readErr <- err
					return
				}
			}
		}()
		return pinged, readErr
	}

	answering, answeringClosed := dial(true)
	mutePings, muteClosed := dial(false)
	if err := <-muteClosed; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Fatalf("the socket that answers no ping: %v, want a close with 1001", err)
	}
	select {
	case <-mutePings:
	default:
		t.Fatal("closed without a ping")
	}
	for range 3 {
		select {
		case <-answering:
		case err := <-answeringClosed:
			t.Fatalf("the socket that answers pings closed: %v", err)
		}
	}
	eventually(t, 10*time.Second, func() error {
		if n := api.Sockets(); n != 1 {
			return fmt.Errorf("%d sockets open, want the one that answers", n)
		}
		return nil
	})
}
