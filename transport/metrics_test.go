package transport

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricTypes: every client type decodeFrame accepts has its own label,
// every server type its own, and anything else falls under one label, so a
// client cannot grow the label sets.
func TestMetricTypes(t *testing.T) {
	if len(mutatingTypes)+len(readOnlyTypes) != recvPing {
		t.Fatalf("%d client types, %d labels for them", len(mutatingTypes)+len(readOnlyTypes), recvPing)
	}
	seen := map[string]bool{}
	for i, name := range receivedTypes {
		if name == "" || seen[name] {
			t.Fatalf("received label %d: %q is empty or repeated", i, name)
		}
		seen[name] = true
		if i < recvPing {
			if !mutatingTypes[name] && !readOnlyTypes[name] {
				t.Errorf("received label %q is no client type", name)
			}
			if got := receivedType(name); got != i {
				t.Errorf("receivedType(%q) = %d, want %d", name, got, i)
			}
		}
	}
	for _, other := range []string{"", "join", "TOGGLE_STEP", "ping", "unknown"} {
		if got := receivedType(other); got != recvUnknown {
			t.Errorf("receivedType(%q) = %s, want unknown", other, receivedTypes[got])
		}
	}

	seen = map[string]bool{}
	for i, name := range sentTypes {
		if name == "" || seen[name] {
			t.Fatalf("sent label %d: %q is empty or repeated", i, name)
		}
		seen[name] = true
		if i >= sentPong {
			continue
		}
		frame := []byte(typePrefix + name + `","seq":3}`)
		if got := sentType(frame); got != i {
			t.Errorf("sentType(%s) = %d, want %d", frame, got, i)
		}
	}
	for _, tt := range []struct {
		frame string
		want  int
	}{
		{"pong", sentPong},
		{frameTooLarge, 24}, {frameBadJSON, 24}, {frameRateLimit, 24}, {framePublished, 24},
		{`{"type":"state_hash_match"}`, 21},
		{`{"type":"novel","x":1}`, sentOther},
		{`{"type":"snapshot`, sentOther}, // no closing quote
		{`{"seq":1,"type":"snapshot"}`, sentOther},
		{"", sentOther},
		{"pongs", sentOther},
	} {
		if got := sentType([]byte(tt.frame)); got != tt.want {
			t.Errorf("sentType(%q) = %s, want %s", tt.frame, sentTypes[got], sentTypes[tt.want])
		}
	}
}

// TestMetricsNoAlloc: counting a message, sent or received, allocates
// nothing, with the metrics on or off.
func TestMetricsNoAlloc(t *testing.T) {
	frame := []byte(`{"type":"parameter_lock_set","trackId":"track-1","step":5,"lock":{"pitch":7,"volume":0.8},"playerId":"p","seq":1042,"prevSeq":1041}`)
	for name, m := range map[string]*Metrics{"on": NewMetrics(), "off": nopMetrics()} {
		if n := testing.AllocsPerRun(100, func() {
			m.sent[sentType(frame)].Inc()
			m.received[receivedType("set_parameter_lock")].Inc()
		}); n != 0 {
			t.Errorf("metrics %s: %v allocations per message", name, n)
		}
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewMetrics().Collectors()...) // a second API's metrics, in a registry of their own
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkCountSent is what the socket adds to each frame it writes:
// reading the frame's type and counting it.
//
//	go test ./transport -run '^$' -bench CountSent -benchmem
func BenchmarkCountSent(b *testing.B) {
	frame := []byte(`{"type":"step_toggled","trackId":"t1","step":3,"value":true,"playerId":"10000000-0000-4000-8000-000000000001","seq":1041,"prevSeq":1038,"clientSeq":12}`)
	for name, m := range map[string]*Metrics{"on": NewMetrics(), "off": nopMetrics()} {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				m.sent[sentType(frame)].Inc()
			}
		})
	}
}
