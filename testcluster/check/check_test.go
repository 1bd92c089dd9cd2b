package check

import (
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

// cleanHistory is a small run every checker accepts: one session on three
// nodes, two clients, an acked, a failed and an unknown write (the unknown one
// applied later and is the final volume), a reconnect after a 4000 close, and
// identical final states at index 11.
func cleanHistory() *History {
	op := func(client int, kind, key, value, id string, call, ret int, out Outcome, seq uint64) Op {
		return Op{Client: client, Session: "s1", Kind: kind, Key: key, Value: value, OpID: id,
			Invoke: at(call), Complete: at(ret), Outcome: out, Seq: seq}
	}
	del := func(client, conn int, node string, seq, prev uint64, typ, player string, cs uint64, ms int) Delivery {
		return Delivery{Client: client, Conn: conn, Node: node, Session: "s1", Seq: seq, PrevSeq: prev,
			Type: typ, PlayerID: player, ClientSeq: cs, At: at(ms)}
	}
	final := func(node string) NodeState {
		return NodeState{Node: node, Session: "s1", Hash: "h11", Snapshot: []byte(`{"tempo":120}`), Index: 11,
			Registers: map[string]string{"tempo": "120", "track:t1:step:0": "true", "track:t1:volume": "0.5"}}
	}
	return &History{
		Ops: []Op{
			op(0, KindSetTempo, "tempo", "120", "op-1", 0, 10, OK, 5),
			op(1, KindRead, "tempo", "120", "op-2", 12, 15, OK, 0),
			op(1, KindToggleStep, "track:t1:step:0", "true", "op-3", 20, 30, OK, 7),
			op(0, KindSetTrackVolume, "track:t1:volume", "0.5", "op-4", 40, 45, Unknown, 0),
			op(1, KindSetTrackVolume, "track:t1:volume", "0.8", "op-5", 50, 60, OK, 9),
			op(1, KindSetTempo, "tempo", "130", "op-6", 70, 80, Failed, 0),
		},
		Deliveries: []Delivery{
			del(0, 0, "n1", 3, 0, TypeSnapshot, "", 0, 0),
			del(0, 0, "n1", 5, 0, "tempo_changed", "p0", 1, 10),
			del(0, 0, "n1", 7, 5, "step_toggled", "p1", 1, 30),
			del(0, 0, "n1", 9, 7, "track_volume_set", "p1", 2, 60),
			del(0, 1, "n2", 9, 0, TypeSnapshot, "", 0, 70),
			del(0, 1, "n2", 11, 9, "track_volume_set", "p0", 2, 90),
			del(1, 0, "n3", 4, 0, TypeSnapshot, "", 0, 0),
			del(1, 0, "n3", 5, 0, "tempo_changed", "p0", 1, 10),
			del(1, 0, "n3", 7, 5, "step_toggled", "p1", 1, 30),
			del(1, 0, "n3", 9, 7, "track_volume_set", "p1", 2, 60),
			del(1, 0, "n3", 11, 9, "track_volume_set", "p0", 2, 90),
		},
		Closes:  []Close{{Client: 0, Conn: 0, Code: 4000, At: at(65)}},
		Final:   []NodeState{final("n1"), final("n2"), final("n3")},
		Initial: map[string]map[string]string{"s1": {"tempo": "100"}},
	}
}

// dropDelivery removes client's delivery of seq on conn.
func dropDelivery(h *History, client, conn int, seq uint64) {
	h.Deliveries = slices.DeleteFunc(h.Deliveries, func(d Delivery) bool {
		return d.Client == client && d.Conn == conn && d.Seq == seq
	})
}

func delivery(h *History, client, conn int, seq uint64) *Delivery {
	for i, d := range h.Deliveries {
		if d.Client == client && d.Conn == conn && d.Seq == seq {
			return &h.Deliveries[i]
		}
	}
	panic("no such delivery")
}

func TestCheckers(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(h *History)
		// want maps each checker that must fail to a substring of one of its
		// problems; every other checker must pass.
		want map[string]string
	}{
		{name: "clean", mutate: func(*History) {}},
		{name: "gap after a non-1000 close is fine", mutate: func(h *History) {
			dropDelivery(h, 0, 0, 9)
			dropDelivery(h, 0, 1, 9) // no snapshot on resume either
		}},
		{name: "unknown toggle explains any step value", mutate: func(h *History) {
			h.Ops = append(h.Ops, Op{Client: 0, Session: "s1", Kind: KindToggleStep, Key: "track:t1:step:0",
				Invoke: at(100), Complete: at(110), Outcome: Unknown})
			for i := range h.Final {
				h.Final[i].Registers["track:t1:step:0"] = "false"
			}
		}},
		{name: "unordered ack explains the final value", mutate: func(h *History) {
			h.Ops = append(h.Ops, Op{Client: 1, Session: "s1", Kind: KindHTTPPut, Key: "tempo", Value: "90",
				Invoke: at(100), Complete: at(110), Outcome: OK})
			for i := range h.Final {
				h.Final[i].Registers["tempo"] = "90"
			}
		}},
		{name: "lost toggle", mutate: func(h *History) {
			h.Final[0].Registers["track:t1:step:0"] = "false"
		}, want: map[string]string{"lost-writes": `s1/track:t1:step:0: node n1 has "false"`}},
		{name: "lost write", mutate: func(h *History) {
			h.Final[1].Registers["tempo"] = "100"
		}, want: map[string]string{"lost-writes": `s1/tempo: node n2 has "100"`}},
		{name: "lost write of the latest ack", mutate: func(h *History) {
			h.Ops = append(h.Ops, Op{Client: 1, Session: "s1", Kind: KindSetTempo, Key: "tempo",
				Value: "125", OpID: "op-7", Invoke: at(100), Complete: at(110), Outcome: OK, Seq: 12})
		}, want: map[string]string{"lost-writes": `node n1 has "120" at index 11, but the last acked write [client 1 op op-7 set_tempo "125" ok] (seq 12)`}},
		{name: "seq regression across reconnect", mutate: func(h *History) {
			h.Deliveries = append(h.Deliveries, Delivery{Client: 1, Conn: 1, Node: "n1", Session: "s1", Seq: 8, Type: TypeSnapshot, At: at(120)})
		}, want: map[string]string{"seq-monotonic": "seq 8 after reconnect, but the client had seen seq 11"}},
		{name: "repeated broadcast on one connection", mutate: func(h *History) {
			h.Deliveries = append(h.Deliveries, *delivery(h, 1, 0, 11))
		}, want: map[string]string{"seq-monotonic": "track_volume_set seq 11 after seq 11 on the same connection"}},
		{name: "divergent node", mutate: func(h *History) {
			h.Final[2].Hash = "h11-bad"
		}, want: map[string]string{"convergence": "node n3 has hash h11-bad but node n1 has h11"}},
		{name: "divergent snapshot bytes", mutate: func(h *History) {
			h.Final[1].Snapshot = []byte(`{"tempo":121}`)
		}, want: map[string]string{"convergence": "node n2 snapshot (13 bytes) differs from node n1 (13 bytes) at byte 11"}},
		{name: "node behind", mutate: func(h *History) {
			h.Final[0].Index = 10
		}, want: map[string]string{"convergence": "node n2 is at index 11 but node n1 is at 10"}},
		{name: "non-linearizable read", mutate: func(h *History) {
			h.Ops = append(h.Ops, Op{Client: 1, Session: "s1", Kind: KindRead, Key: "tempo", Value: "100",
				Invoke: at(90), Complete: at(95), Outcome: OK})
		}, want: map[string]string{"linearizable": "s1/tempo is not linearizable"}},
		{name: "non-linearizable toggle", mutate: func(h *History) {
			h.Ops = append(h.Ops, Op{Client: 0, Session: "s1", Kind: KindToggleStep, Key: "track:t1:step:0", Value: "true",
				Invoke: at(100), Complete: at(110), Outcome: OK, Seq: 13})
			for i := range h.Final {
				h.Final[i].Registers["track:t1:step:0"] = "true"
			}
		}, want: map[string]string{"linearizable": "s1/track:t1:step:0 is not linearizable"}},
		{name: "double apply", mutate: func(h *History) {
			h.Deliveries = append(h.Deliveries, Delivery{Client: 1, Conn: 0, Node: "n3", Session: "s1", Seq: 13, PrevSeq: 11,
				Type: "tempo_changed", PlayerID: "p0", ClientSeq: 1, At: at(120)})
		}, want: map[string]string{"no-double-apply": "op (player p0, clientSeq 1) applied twice: seq 5"}},
		{name: "double apply of a retried op ID", mutate: func(h *History) {
			retry := h.Ops[0]
			retry.Seq = 13
			h.Ops = append(h.Ops, retry)
		}, want: map[string]string{"no-double-apply": "op ID op-1 acked at seq 5 and again at seq 13"}},
		{name: "silent skip by prevSeq", mutate: func(h *History) {
			dropDelivery(h, 1, 0, 9)
		}, want: map[string]string{"no-silent-skip": "got seq 11 whose prevSeq is 9, but the socket last saw seq 7 on the same connection"}},
		{name: "silent skip seen on another socket", mutate: func(h *History) {
			dropDelivery(h, 1, 0, 9)
			delivery(h, 1, 0, 11).PrevSeq = 0
		}, want: map[string]string{"no-silent-skip": "went from seq 7 to seq 11 on the same connection, skipping broadcast seq 9"}},
		{name: "silent skip after a resume with since", mutate: func(h *History) {
			// Conn 1 resumed after seq 9 but got neither seq 11 nor a snapshot.
			dropDelivery(h, 0, 1, 9)
			dropDelivery(h, 0, 1, 11)
			h.Conns = append(h.Conns, Conn{Client: 0, Conn: 1, Node: "n2", Session: "s1", Since: 9, At: at(66)})
			h.Deliveries = append(h.Deliveries, Delivery{Client: 0, Conn: 1, Node: "n2", Session: "s1", Seq: 12,
				Type: "tempo_changed", PlayerID: "p1", ClientSeq: 3, At: at(95)})
		}, want: map[string]string{"no-silent-skip": "went from seq 9 to seq 12 after resuming on conn 1 with since=9, skipping broadcast seq 11"}},
		{name: "broadcast repeated by a resume", mutate: func(h *History) {
			h.Deliveries = append(h.Deliveries, Delivery{Client: 1, Conn: 1, Node: "n2", Session: "s1", Seq: 11, PrevSeq: 9,
				Type: "track_volume_set", PlayerID: "p0", ClientSeq: 2, At: at(120)})
		}, want: map[string]string{"seq-monotonic": "track_volume_set seq 11 after reconnect, but the client had seen seq 11"}},
		{name: "silent skip across a 1000 close", mutate: func(h *History) {
			dropDelivery(h, 0, 0, 9)
			dropDelivery(h, 0, 1, 9)
			h.Closes[0].Code = 1000
		}, want: map[string]string{"no-silent-skip": "after conn 0 was closed with code 1000"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := cleanHistory()
			tt.mutate(h)
			rs := CheckAll(h)
			if len(rs) != len(Checkers) {
				t.Fatalf("CheckAll returned %d results, want %d", len(rs), len(Checkers))
			}
			for _, r := range rs {
				sub, mustFail := tt.want[r.Name]
				switch {
				case !mustFail && !r.Valid:
					t.Errorf("%s: invalid, want valid: %q", r.Name, r.Problems)
				case mustFail && r.Valid:
					t.Errorf("%s: valid, want a problem containing %q", r.Name, sub)
				case mustFail && !slices.ContainsFunc(r.Problems, func(p string) bool { return strings.Contains(p, sub) }):
					t.Errorf("%s: problems %q, want one containing %q", r.Name, r.Problems, sub)
				}
			}
			if got, want := Valid(rs), len(tt.want) == 0; got != want {
				t.Errorf("Valid = %v, want %v", got, want)
			}
			if t.Failed() {
				t.Log(Summary(h, rs))
			}
		})
	}
}

func TestCheckersNamed(t *testing.T) {
	var names []string
	for _, r := range CheckAll(&History{}) {
		if !r.Valid {
			t.Errorf("%s: empty history invalid: %q", r.Name, r.Problems)
		}
		names = append(names, r.Name)
	}
	want := []string{"lost-writes", "seq-monotonic", "convergence", "linearizable", "no-double-apply", "no-silent-skip"}
	if !slices.Equal(names, want) {
		t.Errorf("names = %q, want %q", names, want)
	}
}

func TestHistoryJSONRoundTrip(t *testing.T) {
	h := cleanHistory()
	data, err := h.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(data)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Errorf("round trip differs:\n got %+v\nwant %+v", got, h)
	}
	if a, b := CheckAll(got), CheckAll(h); !reflect.DeepEqual(a, b) {
		t.Errorf("results after round trip differ:\n got %+v\nwant %+v", a, b)
	}
	if _, err := Unmarshal([]byte("{")); err == nil {
		t.Error("Unmarshal of truncated JSON: no error")
	}
}

func TestSummary(t *testing.T) {
	h := cleanHistory()
	s := Summary(h, CheckAll(h))
	for _, want := range []string{":lost-writes {:valid? true", ":linearizable {:valid? true", ":ops {:ok 4, :failed 1, :unknown 1}", ":valid? true}"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
	h.Final[0].Hash = "x"
	s = Summary(h, CheckAll(h))
	for _, want := range []string{":convergence {:valid? false", ":problems [", ":valid? false}"} {
		if !strings.Contains(s, want) {
			t.Errorf("summary lacks %q:\n%s", want, s)
		}
	}
}

// TestResolveUnknown: an unknown op whose broadcast some socket received
// becomes OK, with the broadcast's seq, time and toggle value; one that no
// socket saw stays unknown.
func TestResolveUnknown(t *testing.T) {
	h := &History{
		Ops: []Op{
			{Client: 0, Session: "s1", Kind: KindToggleStep, Key: "k", Invoke: at(0), Complete: at(5000), Outcome: Unknown, PlayerID: "p0", ClientSeq: 4},
			{Client: 0, Session: "s1", Kind: KindSetTempo, Key: "tempo", Value: "90", Invoke: at(10), Complete: at(5010), Outcome: Unknown, PlayerID: "p0", ClientSeq: 5},
			{Client: 1, Session: "s1", Kind: KindSetTempo, Key: "tempo", Value: "91", Invoke: at(10), Complete: at(20), Outcome: Unknown, PlayerID: "p1", ClientSeq: 4},
		},
		Deliveries: []Delivery{
			{Client: 1, Session: "s1", Seq: 7, Type: "step_toggled", PlayerID: "p0", ClientSeq: 4, Value: "true", At: at(40)},
			{Client: 2, Session: "s1", Seq: 7, Type: "step_toggled", PlayerID: "p0", ClientSeq: 4, Value: "true", At: at(30)},
			{Client: 2, Session: "s2", Seq: 8, Type: "tempo_changed", PlayerID: "p0", ClientSeq: 5, At: at(30)},
		},
	}
	if n := h.ResolveUnknown(); n != 1 {
		t.Fatalf("resolved %d ops, want 1", n)
	}
	if o := h.Ops[0]; o.Outcome != OK || o.Seq != 7 || o.Value != "true" || !o.Complete.Equal(at(30)) {
		t.Errorf("toggle resolved to %+v, want OK at seq 7, value true, complete at the earliest delivery", o)
	}
	for _, o := range h.Ops[1:] {
		if o.Outcome != Unknown {
			t.Errorf("op %s %s resolved from another session's or player's broadcast: %+v", o.PlayerID, o.Value, o)
		}
	}
}

// TestRecorder: records from many goroutines all arrive, and History is a
// copy that later records do not change.
func TestRecorder(t *testing.T) {
	var r Recorder
	done := make(chan struct{})
	for g := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 100 {
				r.Op(Op{Client: g, Key: "k", Value: strconv.Itoa(i), Outcome: OK})
				r.Delivery(Delivery{Client: g, Seq: uint64(i)})
				r.Opened(Conn{Client: g})
				r.Closed(Close{Client: g})
			}
		}()
	}
	for range 8 {
		<-done
	}
	r.Initial("s", map[string]string{"k": ""})
	h := r.History()
	if len(h.Ops) != 800 || len(h.Deliveries) != 800 || len(h.Conns) != 800 || len(h.Closes) != 800 || h.Initial["s"] == nil {
		t.Fatalf("recorded %d ops, %d deliveries, %d conns, %d closes, initial %v; want 800 each and s",
			len(h.Ops), len(h.Deliveries), len(h.Conns), len(h.Closes), h.Initial)
	}
	r.Op(Op{Client: 9})
	r.Initial("t", nil)
	if len(h.Ops) != 800 || len(h.Initial) != 1 {
		t.Fatalf("a later record changed the copy: %d ops, initial %v", len(h.Ops), h.Initial)
	}
}
