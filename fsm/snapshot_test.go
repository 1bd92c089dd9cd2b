package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// updateSnapshot rewrites the golden file of the current SnapshotVersion,
// testdata/snapshot-v<SnapshotVersion>.bin, from snapGoldenScenario:
//
//	go test ./fsm -run TestSnapshotV2Golden -update-snapshot
//
// The files of earlier versions are frozen: once a later version exists, its
// file is never written again, and every later build must still restore it.
var updateSnapshot = flag.Bool("update-snapshot", false, "rewrite testdata/snapshot-v<SnapshotVersion>.bin")

// snapGoldenVersions are the versions with a golden file, oldest first.
var snapGoldenVersions = []int{1, 2}

func snapGoldenFile(version int) string { return "snapshot-v" + strconv.Itoa(version) + ".bin" }

// The golden scenario's ids.
const (
	snapGoldenMain      = "a1b2c3d4-0001-4000-8000-000000000001" // live: players, history, op window
	snapGoldenRenamed   = "a1b2c3d4-0001-4000-8000-000000000002"
	snapGoldenDeleted   = "a1b2c3d4-0001-4000-8000-000000000003"
	snapGoldenPublished = "a1b2c3d4-0001-4000-8000-000000000004"
	snapGoldenRemix     = "a1b2c3d4-0001-4000-8000-000000000005"
	snapGoldenP1        = "c0ffee00-0000-4000-8000-000000000001" // node n1, epoch 1, playing
	snapGoldenP2        = "c0ffee00-0000-4000-8000-000000000002" // node n2, epoch 1
	snapGoldenP3        = "c0ffee00-0000-4000-8000-000000000003" // node n3, epoch 2, reaped
	snapGoldenTouchedAt = 1_700_000_900_000
)

func snapGoldenOp(n byte) OpID { return OpID{0x60, 0x1d, n} }

// snapGoldenLog is the scenario behind the golden files testdata/snapshot-v*.bin:
// a bit of everything a snapshot holds. Changing it changes the current
// version's golden file (the frozen ones keep what it was).
func snapGoldenLog() genLog {
	seq := func(n int64) *int64 { return &n }
	name := func(s string) *string { return &s }
	mut := func(k Kind, player, track string) Command {
		return Command{Kind: k, Session: snapGoldenMain, Player: player, TrackID: track}
	}
	entries := []struct {
		index uint64
		cmd   Command
	}{
		{2, Command{Kind: KindNodeEpoch, Node: "n1", Epoch: 1, Addr: "127.0.0.1:8081"}},
		{3, Command{Kind: KindCreate, Session: snapGoldenMain, Name: name("Golden Jam"), State: json.RawMessage(`{"tracks":[` +
			`{"id":"kick","name":"Kick","sampleId":"kick","steps":[true,false,false,false,true],"parameterLocks":[{"pitch":5,"volume":0.8},null,null,null,{"volume":0.5,"pitch":-2}],"volume":1,"muted":false,"playbackMode":"oneshot","transpose":0,"x-color":"#ff0000"},` +
			`{"id":"bass","name":"Bass","sampleId":"synth:bass","steps":[],"parameterLocks":[],"volume":null,"soloed":null,"transpose":-3,"stepCount":32,"fmParams":{"harmonicity":2,"modulationIndex":4}}` +
			`],"tempo":97.5,"swing":33,"version":1,"x-meta":{"by":"golden","n":[1,2]}}`)}},
		{5, Command{Kind: KindCreate, Session: snapGoldenRenamed}},
		{6, Command{Kind: KindCreate, Session: snapGoldenDeleted, Name: name("Doomed")}},
		{7, Command{Kind: KindPlayerJoin, Session: snapGoldenMain, Player: snapGoldenP1, Node: "n1", Epoch: 1}},
		{8, Command{Kind: KindPlayerJoin, Session: snapGoldenMain, Player: snapGoldenP2, Node: "n2", Epoch: 1}},
		{10, Command{Kind: KindPlayerJoin, Session: snapGoldenMain, Player: snapGoldenP3, Node: "n3", Epoch: 2}},
		{11, func() Command {
			c := mut(KindToggleStep, snapGoldenP1, "kick")
			c.Step, c.ClientSeq = 8, seq(1)
			return c
		}()},
		{12, func() Command { c := mut(KindSetTempo, snapGoldenP2, ""); c.Number = 128; return c }()},
		{14, func() Command {
			c := mut(KindSetParameterLock, snapGoldenP1, "kick")
			c.Step, c.ClientSeq, c.Payload = 2, seq(2), json.RawMessage(`{"volume":0.25,"pitch":7}`)
			return c
		}()},
		{15, func() Command {
			c := mut(KindSetEffects, snapGoldenP2, "")
			c.Payload = json.RawMessage(`{"reverb":{"decay":2.5,"wet":0.3},"delay":{"time":"16t","feedback":0.99,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0.1}}`)
			return c
		}()},
		{16, func() Command {
			c := mut(KindSetFMParams, snapGoldenP1, "bass")
			c.Payload = json.RawMessage(`{"modulationIndex":30,"harmonicity":0.1}`)
			return c
		}()},
		{17, func() Command {
			c := mut(KindAddTrack, snapGoldenP2, "")
			c.Payload = json.RawMessage(`{"id":"hat","name":"Hat","sampleId":"hihat","steps":{"0":true,"2":true},"muted":null,"x-extra":{"deep":[null,true]}}`)
			return c
		}()},
		{18, func() Command { c := mut(KindMuteTrack, snapGoldenP1, "hat"); c.Flag = true; return c }()},
		{19, func() Command {
			c := mut(KindSetTrackSample, snapGoldenP2, "bass")
			c.SampleID, c.TrackName = "tone:fm-bell", "Bell"
			return c
		}()},
		{21, Command{Kind: KindPlaybackStart, Session: snapGoldenMain, Player: snapGoldenP1}},
		{22, Command{Kind: KindPublish, Session: snapGoldenMain, Target: snapGoldenPublished}},
		{23, Command{Kind: KindRemix, Session: snapGoldenMain, Target: snapGoldenRemix}},
		{24, Command{Kind: KindRename, Session: snapGoldenRenamed, Name: name("  Renamed Jam  ")}},
		{25, Command{Kind: KindDelete, Session: snapGoldenDeleted}},
		{26, Command{Kind: KindReapNode, Node: "n3", Epoch: 2}},
		{27, Command{Kind: KindTouch, Touches: []Touch{{Session: snapGoldenMain, At: snapGoldenTouchedAt}, {Session: snapGoldenDeleted, At: snapGoldenTouchedAt}}}},
		{28, func() Command { c := mut(KindSetSwing, snapGoldenP2, ""); c.Number = 50; return c }()},
	}
	log := make(genLog, len(entries))
	for i, e := range entries {
		e.cmd.Op = snapGoldenOp(byte(i + 1))
		e.cmd.At = 1_700_000_000_000 + int64(e.index)*1000
		log[i] = genEntry{Index: e.index, Cmd: e.cmd}
	}
	return log
}

// snapGoldenScenario applies snapGoldenLog and fails on any entry that does not apply.
func snapGoldenScenario(tb testing.TB) *State {
	tb.Helper()
	s := NewState()
	for _, e := range snapGoldenLog() {
		if res, _ := s.Apply(e.Index, e.Cmd); res.Status != StatusOK || res.Duplicate {
			tb.Fatalf("golden entry %d (%s): %+v", e.Index, e.Cmd.Kind, res)
		}
	}
	return s
}

func snapReadGolden(tb testing.TB, version int) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", snapGoldenFile(version)))
	if err != nil {
		tb.Fatalf("read golden snapshot (generate it with -update-snapshot): %v", err)
	}
	return b
}

func TestSnapshotV1Golden(t *testing.T) {
	golden := snapGoldenTest(t, 1)
	// v1 has no proposer times for op entries: the window is what the legacy
	// op rule of command version 1 builds, entries at 0 and no horizon.
	s := snapRestore(t, golden)
	for _, id := range s.SessionIDs() {
		sess := s.Session(id)
		w := sess.ops
		if w.len() == 0 || w.dropped || w.horizon != 0 {
			t.Fatalf("session %s: %d op entries, dropped %v, horizon %d", id, w.len(), w.dropped, w.horizon)
		}
		for i := 0; i < w.len(); i++ {
			if e := w.entry(i); e.at != 0 {
				t.Errorf("session %s: op entry %d (index %d) at %d, want 0", id, i, e.index, e.at)
			}
		}
	}
}

func TestSnapshotV2Golden(t *testing.T) {
	golden := snapGoldenTest(t, 2)
	// v2 keeps each op entry's proposer time.
	s := snapRestore(t, golden)
	ats := map[OpID]int64{}
	for _, e := range snapGoldenLog() {
		ats[e.Cmd.Op] = e.Cmd.At
	}
	for _, id := range s.SessionIDs() {
		w := s.Session(id).ops
		if w.len() == 0 || w.dropped {
			t.Fatalf("session %s: %d op entries, dropped %v", id, w.len(), w.dropped)
		}
		for i := 0; i < w.len(); i++ {
			if e := w.entry(i); e.at != ats[e.op] {
				t.Errorf("session %s: op entry %d (index %d) at %d, want %d", id, i, e.index, e.at, ats[e.op])
			}
		}
	}
}

// snapGoldenTest restores the golden file of version, checks what it holds
// and, for the current version, that the scenario still writes exactly it. It
// returns the file. With -update-snapshot it first rewrites the current
// version's file; the files of earlier versions are frozen.
func snapGoldenTest(t *testing.T, version int) []byte {
	t.Helper()
	file := snapGoldenFile(version)
	if *updateSnapshot {
		if version == SnapshotVersion {
			if err := os.WriteFile(filepath.Join("testdata", file), propSnapshot(t, snapGoldenScenario(t)), 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			t.Logf("testdata/%s is frozen now that SnapshotVersion is %d: not rewritten", file, SnapshotVersion)
		}
	}
	golden := snapReadGolden(t, version)
	s, err := ReadSnapshot(bytes.NewReader(golden))
	if err != nil {
		t.Fatalf("restore v%d golden: %v", version, err)
	}

	// Values, checked whatever SnapshotVersion is: every version must restore forever.
	if s.Index() != 28 || s.Len() != 4 {
		t.Fatalf("index %d, %d sessions; want 28, 4", s.Index(), s.Len())
	}
	if ids := s.SessionIDs(); strings.Join(ids, ",") != strings.Join([]string{snapGoldenMain, snapGoldenRenamed, snapGoldenPublished, snapGoldenRemix}, ",") {
		t.Fatalf("sessions %q", ids)
	}
	for _, tt := range []struct {
		node   string
		epoch  uint64
		reaped bool
		addr   string
	}{{"n1", 1, false, "127.0.0.1:8081"}, {"n2", 1, false, ""}, {"n3", 2, true, ""}, {"n4", 0, false, ""}} {
		if e, r := s.NodeEpoch(tt.node); e != tt.epoch || r != tt.reaped || s.NodeHTTPAddr(tt.node) != tt.addr {
			t.Errorf("node %s: epoch %d, reaped %v, addr %q; want %d, %v, %q", tt.node, e, r, s.NodeHTTPAddr(tt.node), tt.epoch, tt.reaped, tt.addr)
		}
	}

	jam := s.Session(snapGoldenMain)
	if jam == nil {
		t.Fatal("main session missing")
	}
	if !jam.HasName || jam.Name != "Golden Jam" || jam.RemixCount != 1 || jam.Immutable ||
		jam.CreatedAt != 1_700_000_003_000 || jam.UpdatedAt != 1_700_000_028_000 || jam.LastAccessedAt != snapGoldenTouchedAt ||
		jam.LastSeq != 28 || jam.MaxAt != 1_700_000_028_000 {
		t.Errorf("main session record: %+v", *jam)
	}
	st := &jam.State
	if st.Tempo != 128 || st.Swing != 50 || st.Version != 1 || len(st.Tracks) != 3 {
		t.Fatalf("main state: tempo %v swing %v version %v, %d tracks", st.Tempo, st.Swing, st.Version, len(st.Tracks))
	}
	if got, want := jam.Hash(), "e1966372"; got != want {
		t.Errorf("Hash() = %s, want %s", got, want)
	}
	stateJSON := string(st.AppendJSON(nil))
	for _, want := range []string{
		`"effects":{"reverb":{"decay":2.5,"wet":0.3},"delay":{"time":"16t","feedback":0.95,"wet":0.2},"chorus":{"frequency":1.5,"depth":0.5,"wet":0},"distortion":{"amount":0.4,"wet":0.1}}`,
		`"version":1,"x-meta":{"by":"golden","n":[1,2]}}`,
	} {
		if !strings.Contains(stateJSON, want) {
			t.Errorf("state JSON lacks %s:\n%s", want, stateJSON)
		}
	}
	kick, bass, hat := &st.Tracks[0], &st.Tracks[1], &st.Tracks[2]
	if kick.ID != "kick" || bass.ID != "bass" || hat.ID != "hat" {
		t.Fatalf("track order %s, %s, %s", kick.ID, bass.ID, hat.ID)
	}
	for _, tt := range []struct {
		step int
		want string
	}{{0, `{"pitch":5,"volume":0.8}`}, {2, `{"volume":0.25,"pitch":7}`}, {4, `{"volume":0.5,"pitch":-2}`}} {
		l, ok := kick.Lock(tt.step)
		if got := string(l.AppendJSON(nil)); !ok || got != tt.want {
			t.Errorf("kick lock %d = %s (%v), want %s", tt.step, got, ok, tt.want)
		}
	}
	if !kick.Step(0) || !kick.Step(4) || !kick.Step(8) || kick.ActiveSteps() != 3 || kick.Locks() != 3 ||
		!strings.HasSuffix(string(kick.AppendJSON(nil)), `"transpose":0,"x-color":"#ff0000"}`) {
		t.Errorf("kick: %s", kick.AppendJSON(nil))
	}
	if bass.FM == nil || *bass.FM != (FMParams{Harmonicity: 0.5, ModulationIndex: 20}) ||
		bass.SampleID != "tone:fm-bell" || bass.Name != "Bell" || !bass.IsNull(FieldVolume) || !bass.IsNull(FieldSoloed) ||
		bass.Has(FieldPlaybackMode) || bass.StepCount != 32 || bass.Transpose != -3 {
		t.Errorf("bass: %s", bass.AppendJSON(nil))
	}
	if !hat.Muted || !hat.Step(0) || !hat.Step(2) || hat.ActiveSteps() != 2 || hat.Has(FieldVolume) ||
		!strings.HasSuffix(string(hat.AppendJSON(nil)), `"muted":true,"x-extra":{"deep":[null,true]}}`) {
		t.Errorf("hat: %s", hat.AppendJSON(nil))
	}

	players := jam.Players()
	if len(players) != 2 || players[0].ID != snapGoldenP1 || players[1].ID != snapGoldenP2 ||
		players[0].Node != "n1" || players[0].Epoch != 1 || players[1].Node != "n2" || players[0].ConnectedAt != 1_700_000_007_000 {
		t.Errorf("players %+v", players)
	}
	if want := NewPlayerInfo(snapGoldenP2, "n2", 1, 1_700_000_008_000); players[1] != want {
		t.Errorf("player 2 = %+v, want %+v", players[1], want)
	}
	if p := jam.PlayingPlayerIDs(); len(p) != 1 || p[0] != snapGoldenP1 {
		t.Errorf("playing %q", p)
	}

	evs, ok := jam.Since(3)
	var types []string
	for _, e := range evs {
		types = append(types, e.Type.String())
	}
	if want := "step_toggled tempo_changed parameter_lock_set effects_changed fm_params_changed track_added track_muted track_sample_set swing_changed"; !ok || strings.Join(types, " ") != want {
		t.Errorf("Since(3) = %v %q, want %s", ok, types, want)
	}
	if len(evs) > 0 {
		want := `{"type":"step_toggled","trackId":"kick","step":8,"value":true,"playerId":"` + snapGoldenP1 + `","seq":11,"prevSeq":3,"clientSeq":1}`
		if got := string(evs[0].AppendJSON(nil)); got != want || evs[0].Session != snapGoldenMain {
			t.Errorf("replayed event %s (session %s), want %s", got, evs[0].Session, want)
		}
	}
	if evs, ok := jam.Since(19); !ok || len(evs) != 1 || evs[0].Seq != 28 || evs[0].PrevSeq != 19 {
		t.Errorf("Since(19) = %v, %+v", ok, evs)
	}
	if _, ok := jam.Since(2); ok {
		t.Error("Since(2) replays, but the history starts after 3")
	}
	if evs, ok := jam.Since(28); !ok || len(evs) != 0 {
		t.Errorf("Since(28) = %v, %d events", ok, len(evs))
	}

	pub, remix, renamed := s.Session(snapGoldenPublished), s.Session(snapGoldenRemix), s.Session(snapGoldenRenamed)
	if pub == nil || !pub.Immutable || pub.Name != "Golden Jam" || pub.RemixedFrom != snapGoldenMain || pub.RemixedFromName != "Golden Jam" ||
		pub.Players() != nil || pub.LastSeq != 22 || len(pub.State.Tracks) != 3 || pub.Hash() == jam.Hash() {
		t.Errorf("published session: %+v", pub)
	}
	if remix == nil || remix.Immutable || remix.HasName || remix.RemixedFrom != snapGoldenMain || !remix.HasRemixedFromName {
		t.Errorf("remix: %+v", remix)
	}
	if renamed == nil || !renamed.HasName || renamed.Name != "Renamed Jam" || renamed.State.Tempo != DefaultTempo {
		t.Errorf("renamed session: %+v", renamed)
	}

	// The op window, tombstones and reaped epoch came back too: retries are
	// still answered from them, and the reaped incarnation stays out.
	log := snapGoldenLog()
	r := snapRestore(t, golden)                                  // s stays as restored, for the byte comparison below
	for i, want := range map[int]uint64{7: 11, 19: 25, 16: 22} { // toggle, delete, publish
		if res, evs := r.Apply(r.Index()+1, log[i].Cmd); !res.Duplicate || res.Index != want || len(evs) != 0 {
			t.Errorf("retry of entry %d (%s): %+v, %d events", log[i].Index, log[i].Cmd.Kind, res, len(evs))
		}
	}
	join := Command{Kind: KindPlayerJoin, Op: snapGoldenOp(200), Session: snapGoldenMain, Player: snapGoldenP3, Node: "n3", Epoch: 2}
	if res, _ := r.Apply(r.Index()+1, join); res.Status != StatusStaleEpoch {
		t.Errorf("join from the reaped incarnation: %+v", res)
	}

	if version != SnapshotVersion {
		return golden // a later version writes something else
	}
	if again := propSnapshot(t, s); !bytes.Equal(again, golden) {
		t.Errorf("re-encoding the restored v%d golden differs (%d / %d bytes)", version, len(again), len(golden))
	}
	if fresh := propSnapshot(t, snapGoldenScenario(t)); !bytes.Equal(fresh, golden) {
		t.Errorf("the golden scenario no longer writes testdata/%s. If the format changed, bump SnapshotVersion, "+
			"keep a reader for v%d and add a golden file for the new version; if only Apply's behaviour changed, "+
			"regenerate with -update-snapshot", file, version)
	}
	return golden
}

// snapCheckCorrupt asserts that input is refused with ErrCorruptSnapshot.
func snapCheckCorrupt(t *testing.T, what string, input []byte) {
	t.Helper()
	s, err := ReadSnapshot(bytes.NewReader(input))
	if !errors.Is(err, ErrCorruptSnapshot) || s != nil {
		t.Fatalf("%s: ReadSnapshot = %v, %v; want ErrCorruptSnapshot", what, s != nil, err)
	}
}

// snapEachGolden runs fn on the golden file of every version.
func snapEachGolden(t *testing.T, fn func(t *testing.T, version int, golden []byte)) {
	for _, v := range snapGoldenVersions {
		t.Run("v"+strconv.Itoa(v), func(t *testing.T) { fn(t, v, snapReadGolden(t, v)) })
	}
}

func TestSnapshotTruncated(t *testing.T) {
	snapEachGolden(t, func(t *testing.T, _ int, golden []byte) {
		for n := 0; n < len(golden); n++ {
			snapCheckCorrupt(t, "truncated to "+strconv.Itoa(n), golden[:n])
		}
	})
}

func TestSnapshotFlippedBytes(t *testing.T) {
	snapEachGolden(t, func(t *testing.T, _ int, golden []byte) {
		for i := range golden {
			for _, mask := range []byte{0x01, 0x80, 0xff} {
				b := bytes.Clone(golden)
				b[i] ^= mask
				snapCheckCorrupt(t, "byte "+strconv.Itoa(i)+" ^ "+strconv.Itoa(int(mask)), b)
			}
		}
	})
}

func TestSnapshotCorruptHeaderAndTail(t *testing.T) {
	snapEachGolden(t, snapCheckCorruptHeaderAndTail)
}

func snapCheckCorruptHeaderAndTail(t *testing.T, goldenVersion int, golden []byte) {
	body := golden[len(snapshotMagic)+1 : len(golden)-4] // after magic and the one-byte version, before the checksum
	withChecksum := func(b []byte) []byte {
		var sum [4]byte
		binary.BigEndian.PutUint32(sum[:], crc32.Checksum(b, crcTable))
		return append(b, sum[:]...)
	}
	version := func(v uint64) []byte {
		b := append([]byte(snapshotMagic), binary.AppendUvarint(nil, v)...)
		return withChecksum(append(b, body...))
	}
	// The helper rebuilds the golden exactly, so the cases below differ from
	// a valid snapshot only where they say.
	if !bytes.Equal(version(uint64(goldenVersion)), golden) {
		t.Fatal("test helper does not rebuild the golden snapshot")
	}
	for _, tt := range []struct {
		name  string
		input []byte
	}{
		{"empty", nil},
		{"wrong magic", append([]byte("chorusfsX"), golden[len(snapshotMagic):]...)},
		{"other file", []byte("PK\x03\x04 this is a zip file, not a snapshot")},
		{"future version", version(SnapshotVersion + 1)},
		{"far future version", version(1 << 40)},
		{"version 0", version(0)},
		{"checksum mismatch", append(bytes.Clone(golden[:len(golden)-4]), 0, 0, 0, 0)},
		{"trailing byte", append(bytes.Clone(golden), 0)},
		{"trailing snapshot", append(bytes.Clone(golden), golden...)},
		{"only magic", []byte(snapshotMagic)},
		{"varint overflow", withChecksum(append([]byte(snapshotMagic), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01))},
	} {
		t.Run(tt.name, func(t *testing.T) { snapCheckCorrupt(t, tt.name, tt.input) })
	}
}

// TestSnapshotReaders: ReadSnapshot does not depend on how the reader splits
// its input, and wraps a failing reader's error.
func TestSnapshotReaders(t *testing.T) {
	golden := snapReadGolden(t, SnapshotVersion)
	want := propSnapshot(t, snapRestore(t, golden))
	for _, tt := range []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{"one byte at a time", iotest.OneByteReader},
		{"half reads", iotest.HalfReader},
		{"EOF with the last data", iotest.DataErrReader},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ReadSnapshot(tt.wrap(bytes.NewReader(golden)))
			if err != nil {
				t.Fatalf("ReadSnapshot: %v", err)
			}
			if !bytes.Equal(propSnapshot(t, s), want) {
				t.Fatal("restore differs")
			}
		})
	}
	boom := errors.New("disk on fire")
	_, err := ReadSnapshot(iotest.ErrReader(boom))
	if !errors.Is(err, ErrCorruptSnapshot) {
		t.Errorf("failing reader: %v", err)
	}
	_, err = ReadSnapshot(iotest.TimeoutReader(bytes.NewReader(golden)))
	if !errors.Is(err, ErrCorruptSnapshot) {
		t.Errorf("timeout reader: %v", err)
	}
}

func snapRestore(tb propTB, b []byte) *State {
	tb.Helper()
	s, err := ReadSnapshot(bytes.NewReader(b))
	if err != nil {
		tb.Fatalf("ReadSnapshot: %v", err)
	}
	return s
}

// TestSnapshotTombstoneRing fills the delete tombstones past tombLen, so the
// ring wraps, and checks that a restored state answers retried deletes exactly
// as the original: the newest tombLen as duplicates, older ones as new deletes.
func TestSnapshotTombstoneRing(t *testing.T) {
	s := NewState()
	id := func(i int) string { return "d0000000-0000-4000-8000-" + strconv.Itoa(100000000000+i) }
	del := func(i int) Command {
		return Command{Kind: KindDelete, Op: OpID{0xde, byte(i >> 8), byte(i)}, Session: id(i)}
	}
	index := uint64(0)
	const n = tombLen + 100
	for i := 0; i < n; i++ {
		index++
		s.Apply(index, Command{Kind: KindCreate, Op: OpID{0xc1, byte(i >> 8), byte(i)}, Session: id(i)})
		index++
		if res, _ := s.Apply(index, del(i)); res.Status != StatusOK {
			t.Fatalf("delete %d: %+v", i, res)
		}
	}
	b := propSnapshot(t, s)
	r := snapRestore(t, b)
	if !bytes.Equal(propSnapshot(t, r), b) {
		t.Fatal("snapshot round trip differs")
	}
	// More deletes on both, so each evicts what it thinks is oldest.
	const more = 50
	for i := n; i < n+more; i++ {
		for _, st := range []*State{s, r} {
			st.Apply(index+1, Command{Kind: KindCreate, Op: OpID{0xc1, byte(i >> 8), byte(i)}, Session: id(i)})
			st.Apply(index+2, del(i))
		}
		index += 2
	}
	for _, i := range []int{0, 99, 100, 149, 150, 151, n / 2, n + more - 1} {
		index++
		rs, _ := s.Apply(index, del(i))
		rr, _ := r.Apply(index, del(i))
		evicted := i < n+more-tombLen
		if rs != rr || rs.Duplicate == evicted {
			t.Errorf("retried delete %d (evicted %v): original %+v, restored %+v", i, evicted, rs, rr)
		}
		if !evicted && rs.Index != uint64(2*i+2) {
			t.Errorf("retried delete %d answers index %d, want %d", i, rs.Index, 2*i+2)
		}
	}
	if !bytes.Equal(propSnapshot(t, s), propSnapshot(t, r)) {
		t.Fatal("original and restored diverged")
	}
}

// TestSessionAppendSnapshot: a session's bytes survive a snapshot round trip,
// are a slice of the whole snapshot, and change when the session does.
func TestSessionAppendSnapshot(t *testing.T) {
	s := snapGoldenScenario(t)
	whole := propSnapshot(t, s)
	back, err := ReadSnapshot(bytes.NewReader(whole))
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range s.SessionIDs() {
		a, b := s.Session(id).AppendSnapshot(nil), back.Session(id).AppendSnapshot([]byte("x"))
		if !bytes.Equal(a, b[1:]) || b[0] != 'x' {
			t.Fatalf("session %s: %d bytes before the round trip, %d after (or the prefix was lost)", id, len(a), len(b)-1)
		}
		if !bytes.Contains(whole, a) {
			t.Fatalf("session %s: its bytes are not in the whole snapshot", id)
		}
	}
	before := s.Session(snapGoldenMain).AppendSnapshot(nil)
	renamed := "Renamed Jam"
	if res, _ := s.Apply(s.Index()+1, Command{Kind: KindRename, Session: snapGoldenMain, Op: snapGoldenOp(99), Name: &renamed}); res.Status != StatusOK {
		t.Fatalf("rename: %+v", res)
	}
	if bytes.Equal(before, s.Session(snapGoldenMain).AppendSnapshot(nil)) {
		t.Fatal("a rename left the session's bytes unchanged")
	}
}

// TestSnapshotOpWindowRoundTrip: a snapshot keeps every op entry with its
// proposer time, in apply order (not At order), and the horizon; the restored
// state answers retries, too-old ops and new ones exactly as the original, and
// evicts the same entries later.
func TestSnapshotOpWindowRoundTrip(t *testing.T) {
	r := newJoinedRig(t, "")
	t0 := rigAt(r.index + 1)
	x := rigToggleX(t0)
	r.apply(x)
	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 90, At: t0 + 50}))
	lagging := rigMut(KindSetTempo, Command{Number: 80, At: t0 - 100, Op: OpID{0xab}})
	r.apply(lagging)
	r.must(StatusOK, rigMut(KindSetTempo, Command{Number: 91, At: t0 + OpRetention + 1})) // x leaves
	recent := rigMut(KindSetSwing, Command{Number: 5, At: t0 + OpRetention + 2, Op: OpID{0xac}})
	r.apply(recent)

	b := propSnapshot(t, r.s)
	back := snapRestore(t, b)
	if !bytes.Equal(propSnapshot(t, back), b) {
		t.Fatal("snapshot round trip differs")
	}
	w, wb := r.sess(rigSID).ops, back.Session(rigSID).ops
	if !w.dropped || w.horizon != t0 || w.len() != 4 {
		t.Fatalf("original window: %d entries, dropped %v, horizon %d", w.len(), w.dropped, w.horizon)
	}
	if wb.len() != w.len() || wb.dropped != w.dropped || wb.horizon != w.horizon {
		t.Fatalf("restored window: %d entries, dropped %v, horizon %d; want %d, %v, %d", wb.len(), wb.dropped, wb.horizon, w.len(), w.dropped, w.horizon)
	}
	for i := 0; i < w.len(); i++ {
		if w.entry(i) != wb.entry(i) {
			t.Errorf("entry %d: %+v restored as %+v", i, w.entry(i), wb.entry(i))
		}
	}
	if e := wb.entry(1); e.op != lagging.Op || e.at != lagging.At {
		t.Errorf("entry 1 is %+v, want the lagging op at %d", e, lagging.At)
	}

	for _, tt := range []struct {
		c         Command
		want      Status
		duplicate bool
	}{
		{x, StatusTooOld, false},
		{lagging, StatusOK, true},
		{recent, StatusOK, true},
		{rigMut(KindSetTempo, Command{Number: 70, At: t0}), StatusTooOld, false},
		{rigMut(KindSetTempo, Command{Number: 71, At: t0 + 1}), StatusOK, false},
		{rigMut(KindSetTempo, Command{Number: 72, At: t0 + 2*OpRetention + 60}), StatusOK, false}, // the rest expire
		{lagging, StatusTooOld, false},
		{recent, StatusTooOld, false},
	} {
		c := tt.c
		if c.Op.IsZero() {
			c.Op = r.nextOp()
		}
		r.index++
		rs, es := r.s.Apply(r.index, c)
		rb, eb := back.Apply(r.index, c)
		if rs != rb || propEventsJSON(es) != propEventsJSON(eb) {
			t.Fatalf("%s at %d: original %+v, restored %+v", c.Kind, r.index, rs, rb)
		}
		if rs.Status != tt.want || rs.Duplicate != tt.duplicate {
			t.Fatalf("%s (At %d) at %d: %+v, want %s (duplicate %v)", c.Kind, c.At, r.index, rs, tt.want, tt.duplicate)
		}
	}
	if !bytes.Equal(propSnapshot(t, r.s), propSnapshot(t, back)) {
		t.Fatal("original and restored diverged")
	}
	if w := back.Session(rigSID).ops; w.len() != 1 || w.horizon != t0+OpRetention+2 {
		t.Fatalf("after the last op: %d entries, horizon %d", w.len(), w.horizon)
	}
}

// snapOpsSection encodes an op window section of a session as version writes
// it: n entries, each with MaxAt−at = delta (v2), and for v2 the horizon.
func snapOpsSection(version, n int, delta int64, dropped bool, horizon int64) []byte {
	b := binary.AppendUvarint(nil, uint64(n))
	for i := 0; i < n; i++ {
		b = append(b, 0x5e, byte(i>>8), byte(i))
		b = append(b, make([]byte, 13)...)         // the rest of the op ID
		b = binary.AppendUvarint(b, uint64(i%3))   // status
		b = binary.AppendUvarint(b, uint64(100+i)) // index
		if version >= 2 {
			b = binary.AppendVarint(b, delta)
		}
	}
	if version >= 2 {
		if dropped {
			b = append(b, 1)
			b = binary.AppendVarint(b, horizon)
		} else {
			b = append(b, 0)
		}
	}
	return b
}

// snapReadOps runs the op window reader of version over b.
func snapReadOps(version int, b []byte, maxAt int64) (*opWindow, error) {
	d := &decoder{r: bufio.NewReader(bytes.NewReader(b)), crc: crc32.New(crcTable), version: uint64(version)}
	w := d.opWindow(maxAt)
	if d.err == nil {
		if _, err := d.r.ReadByte(); err != io.EOF {
			return nil, errors.New("the reader left bytes")
		}
	}
	return w, d.err
}

// TestSnapshotOpWindowVersions: the op window reader of each version, its
// migration of v1 (to what the legacy op rule builds) and its bounds.
func TestSnapshotOpWindowVersions(t *testing.T) {
	const maxAt = 1_700_000_123_456
	for _, tt := range []struct {
		name        string
		version, n  int
		delta       int64
		dropped     bool
		horizon     int64
		wantErr     bool
		wantDropped bool
		wantHorizon int64
		wantAt      int64
	}{
		{name: "v1 empty", version: 1, n: 0},
		{name: "v1 partial: legacy entries", version: 1, n: 5},
		{name: "v1 full: legacy entries, no horizon", version: 1, n: opWindowV1},
		{name: "v1 over its bound", version: 1, n: opWindowV1 + 1, wantErr: true},
		{name: "v2", version: 2, n: 5, delta: 1234, wantAt: maxAt - 1234},
		{name: "v2 horizon", version: 2, n: 3, delta: 7, dropped: true, horizon: maxAt - OpRetention - 1, wantAt: maxAt - 7, wantDropped: true, wantHorizon: maxAt - OpRetention - 1},
		{name: "v2 horizon only", version: 2, n: 0, dropped: true, horizon: 42, wantDropped: true, wantHorizon: 42},
		{name: "v2 full", version: 2, n: OpWindowMax, wantAt: maxAt},
		{name: "v2 over its bound", version: 2, n: OpWindowMax + 1, wantErr: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w, err := snapReadOps(tt.version, snapOpsSection(tt.version, tt.n, tt.delta, tt.dropped, tt.horizon), maxAt)
			if tt.wantErr {
				if err == nil {
					t.Fatal("read without error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if w.len() != tt.n || (w != nil && (w.dropped != tt.wantDropped || w.horizon != tt.wantHorizon)) || (w == nil && tt.wantDropped) {
				t.Fatalf("window %+v, want %d entries, dropped %v, horizon %d", w, tt.n, tt.wantDropped, tt.wantHorizon)
			}
			for i := 0; i < w.len(); i++ {
				if e := w.entry(i); e.at != tt.wantAt || e.index != uint64(100+i) || e.op[1] != byte(i>>8) || e.op[2] != byte(i) {
					t.Fatalf("entry %d: %+v, want at %d", i, e, tt.wantAt)
				}
			}
			if w.len() > 0 && len(w.ring) != opWindowCap(w.len()) {
				t.Fatalf("ring of %d for %d entries", len(w.ring), w.len())
			}
		})
	}
}
