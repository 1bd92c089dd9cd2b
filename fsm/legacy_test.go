package fsm

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"reflect"
	"strconv"
	"testing"
)

// The op rule of command version 1 (opWindow.addLegacy) and the v1 snapshot
// reader that matches it: an upgraded replica must build the same windows
// whether it replays version-1 entries or restores a snapshot taken after
// them (I4, I7).

func legacyV1(c Command) Command {
	c.Version = commandVersionLegacy
	return c
}

// legacyLog is a log of version-1 commands on rigSID: create, join and n
// set_tempo ops whose At steps forward, back and past OpRetention, with
// retries of ops 10 back (in the window) and 70 back (gone from it).
func legacyLog(n int) []Command {
	op := func(i int) OpID { return OpID{0x1e, byte(i >> 8), byte(i)} }
	at := rigAt(1)
	log := []Command{
		legacyV1(Command{Kind: KindCreate, Session: rigSID, Target: rigSID, State: json.RawMessage(rigBaseState), Op: op(0), At: at}),
		legacyV1(Command{Kind: KindPlayerJoin, Session: rigSID, Player: rigPlayer, Node: rigNode, Epoch: rigEpoch, Op: op(1), At: at}),
	}
	for i := 2; len(log) < n+2; i++ {
		switch {
		case i%17 == 0 && len(log) > 80:
			log = append(log, log[len(log)-70])
			continue
		case i%11 == 0 && len(log) > 12:
			log = append(log, log[len(log)-10])
			continue
		case i%7 == 3:
			at -= 5000
		case i%7 == 5:
			at += 2 * OpRetention
		default:
			at += 700
		}
		log = append(log, legacyV1(rigMut(KindSetTempo, Command{Number: float64(60 + i%100), Op: op(i), At: at})))
	}
	return log
}

func legacyApply(tb testing.TB, s *State, from uint64, log []Command) {
	tb.Helper()
	for i, c := range log {
		s.Apply(from+uint64(i), c)
	}
}

func legacySnapshot(tb testing.TB, s *State) []byte {
	tb.Helper()
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// legacyV1Ops encodes w as a v1 snapshot stores a window: entries without
// times, no horizon.
func legacyV1Ops(w *opWindow) []byte {
	b := binary.AppendUvarint(nil, uint64(w.len()))
	for i := 0; i < w.len(); i++ {
		e := w.entry(i)
		b = append(b, e.op[:]...)
		b = binary.AppendUvarint(b, uint64(e.status))
		b = binary.AppendUvarint(b, e.index)
	}
	return b
}

// TestLegacyRestoreThenReplay: applying version-1 commands continuously, or up
// to some index, then through a snapshot (v2, or the v1 reader over what a
// v1 snapshot would hold there), then the rest, writes identical snapshots.
func TestLegacyRestoreThenReplay(t *testing.T) {
	log := legacyLog(200)
	whole := NewState()
	legacyApply(t, whole, 1, log)
	want := legacySnapshot(t, whole)
	if w := whole.Session(rigSID).ops; w.len() != opWindowV1 || w.dropped || w.horizon != 0 {
		t.Fatalf("legacy window: %d entries, dropped %v, horizon %d; want %d, none dropped", w.len(), w.dropped, w.horizon, opWindowV1)
	}

	for _, cut := range []int{2, 40, 63, 64, 65, 66, 100, 150, len(log) - 1} {
		t.Run(strconv.Itoa(cut), func(t *testing.T) {
			head := NewState()
			legacyApply(t, head, 1, log[:cut])

			// What a v1 snapshot at cut holds, read back by the v1 reader, is
			// the window the legacy rule built.
			sess := head.Session(rigSID)
			v1, err := snapReadOps(1, legacyV1Ops(sess.ops), sess.MaxAt)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal((&Session{ops: v1}).AppendSnapshot(nil), (&Session{ops: sess.ops}).AppendSnapshot(nil)) {
				t.Fatal("the v1 reader does not rebuild the legacy window")
			}

			for _, viaV1 := range []bool{false, true} {
				s := snapRestore(t, legacySnapshot(t, head))
				if viaV1 {
					s.writable(rigSID).ops = v1.clone()
				}
				legacyApply(t, s, uint64(cut)+1, log[cut:])
				if got := legacySnapshot(t, s); !bytes.Equal(got, want) {
					t.Fatalf("restore at %d (v1 reader %v) and replay differs from continuous apply", cut, viaV1)
				}
			}
		})
	}
}

// TestLegacyRetry: under the version-1 rule a retry within the last 64 ops of
// the session is a duplicate; an older one is not refused (the rule had no
// horizon) and applies again, as the previous release applied it.
func TestLegacyRetry(t *testing.T) {
	r := newCmdRig(t)
	r.must(StatusOK, legacyV1(Command{Kind: KindCreate, Session: rigSID, Target: rigSID, State: json.RawMessage(rigBaseState), At: rigAt(1)}))
	r.must(StatusOK, legacyV1(Command{Kind: KindPlayerJoin, Session: rigSID, Player: rigPlayer, Node: rigNode, Epoch: rigEpoch, At: rigAt(2)}))
	x := legacyV1(rigToggleX(rigAt(3)))
	first, _ := r.apply(x)
	for i := 0; i < opWindowV1-3; i++ { // the window then holds create, join, x and these
		at := rigAt(4) + int64(i)*2*OpRetention // far apart: times do not matter
		r.must(StatusOK, legacyV1(rigMut(KindSetTempo, Command{Number: float64(60 + i), At: at})))
	}
	r.dupOf(x, first)
	w := r.sess(rigSID).ops
	if w.len() != opWindowV1 || w.dropped || w.horizon != 0 {
		t.Fatalf("window: %d entries, dropped %v, horizon %d", w.len(), w.dropped, w.horizon)
	}
	for i := 0; i < w.len(); i++ {
		if e := w.entry(i); e.at != 0 {
			t.Fatalf("legacy entry %d at %d, want 0", i, e.at)
		}
	}

	for i := 0; i < 3; i++ { // create, join, then x leave
		r.must(StatusOK, legacyV1(rigMut(KindSetTempo, Command{Number: float64(200 + i), At: rigAt(5)})))
	}
	if _, ok := r.sess(rigSID).ops.find(x.Op); ok {
		t.Fatal("x is still in the window after 64 later ops")
	}
	if res, _ := r.apply(x); res != (Result{Status: StatusOK, Index: r.index}) {
		t.Fatalf("retry of x after it left the legacy window: %+v, want applied as new", res)
	}
}

// TestLegacyThenCurrent: the first version-2 op after version-1 history
// prunes the legacy entries (at 0) without a horizon, so no op is refused
// because of them, however old its At.
func TestLegacyThenCurrent(t *testing.T) {
	r := newCmdRig(t)
	r.must(StatusOK, legacyV1(Command{Kind: KindCreate, Session: rigSID, Target: rigSID, State: json.RawMessage(rigBaseState), At: rigAt(1)}))
	r.must(StatusOK, legacyV1(Command{Kind: KindPlayerJoin, Session: rigSID, Player: rigPlayer, Node: rigNode, Epoch: rigEpoch, At: rigAt(2)}))
	var ops []Command
	for i := 0; i < 70; i++ {
		c := legacyV1(rigMut(KindSetTempo, Command{Number: float64(60 + i), Op: r.nextOp(), At: rigAt(uint64(3 + i))}))
		r.must(StatusOK, c)
		ops = append(ops, c)
	}

	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 99, At: rigAt(r.index + 1)}))
	w := r.sess(rigSID).ops
	if w.len() != 1 || w.dropped || w.horizon != 0 {
		t.Fatalf("after the first v2 op: %d entries, dropped %v, horizon %d; want 1, none dropped", w.len(), w.dropped, w.horizon)
	}
	for _, at := range []int64{1, rigAt(1) - 1, rigAt(3)} {
		r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 100, At: at}))
	}
	// A legacy op retried as version 2, with its first At: its record is
	// gone, and no horizon came from it.
	retry := ops[len(ops)-1]
	retry.Version = 0
	r.must(StatusOK, retry)
	if w := r.sess(rigSID).ops; w.dropped {
		t.Fatalf("horizon %d from legacy entries", w.horizon)
	}
}

// TestCommandVersions: Encode writes CommandVersion; Decode reads versions 1
// and 2 alike and records which.
func TestCommandVersions(t *testing.T) {
	if CommandVersion != 2 {
		t.Fatalf("CommandVersion = %d", CommandVersion)
	}
	c := rigMut(KindSetTempo, Command{Op: OpID{7}, At: 1_700_000_000_000, Number: 90})
	for _, v := range []uint8{0, 1, 2} {
		c.Version = v
		b, err := Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte(`{"v":2,`)) {
			t.Fatalf("Encode(version %d) = %s, want version 2", v, b)
		}
	}
	b, _ := Encode(c)
	for _, v := range []int{1, 2} {
		got, err := Decode(goldenAsVersion(t, b, CommandVersion, v))
		if err != nil {
			t.Fatal(err)
		}
		want := c
		want.Version = uint8(v)
		if !reflect.DeepEqual(got, want) || got.Version != uint8(v) || got.legacy() != (v == 1) {
			t.Fatalf("Decode(v%d) = %+v, want %+v", v, got, want)
		}
	}
}
