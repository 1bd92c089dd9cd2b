package node

import (
	"testing"
	"time"
)

// TestSubmitTimeoutBelowOpRetention: Submit retries an op until SubmitTimeout,
// and the FSM remembers an op for fsm.OpRetention, so a config whose timeout
// reaches the retention is refused.
func TestSubmitTimeoutBelowOpRetention(t *testing.T) {
	base := Config{ID: "n1", DataDir: t.TempDir(), PeerAddr: "127.0.0.1:0", ClusterSecret: []byte("s")}
	if err := base.withDefaults().Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if def := base.withDefaults().SubmitTimeout; def*4 > opRetention {
		t.Errorf("default submit timeout %v is not well below the op retention %v", def, opRetention)
	}
	for _, tt := range []struct {
		timeout time.Duration
		ok      bool
	}{
		{30 * time.Second, true},
		{opRetention - time.Millisecond, true},
		{opRetention, false},
		{2 * time.Minute, false},
		{-time.Second, false},
	} {
		cfg := base
		cfg.SubmitTimeout = tt.timeout
		err := cfg.withDefaults().Validate()
		if (err == nil) != tt.ok {
			t.Errorf("submit timeout %v: Validate() = %v, want ok %v", tt.timeout, err, tt.ok)
		}
	}
}
