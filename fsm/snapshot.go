package fsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"math"
	"sort"
	"unique"
)

// Snapshot format.
//
//	magic "chorusfsm" | uvarint version | body | crc32c (4 bytes, big-endian) of all before it
//
// The body is written field by field in a fixed order with sessions, nodes and
// every other set sorted, so two states that applied the same log write the
// same bytes (invariant I4). Integers are varints, floats their IEEE-754 bits,
// strings and byte slices length-prefixed.
//
// Each session ends with its op window, oldest entry first:
//
//	uvarint n (at most OpWindowMax) | n × (op ID (16 bytes) | uvarint status | uvarint index | varint MaxAt−at)
//	| bool dropped | varint horizon (only when dropped)
//
// Versions:
//
//	v1: an entry has no at, and there is no dropped/horizon; at most 64 entries
//	    (the window was the last 64 ops).
//	v2: each entry's at, as its distance below the session's MaxAt (small
//	    and never negative in practice; MaxAt itself for a legacy entry,
//	    whose at is 0), and the window's horizon.
//
// Migrations: WriteSnapshot always writes SnapshotVersion. ReadSnapshot keeps a
// reader for every version ever released; a reader for an older version builds
// the current model, filling new fields with what they meant before they
// existed. A v1 window is rebuilt exactly as the legacy op rule of command
// version 1 (opWindow.addLegacy) builds it: entries with at = 0, not dropped,
// no horizon. So restoring a v1 snapshot taken at index i and replaying the
// version-1 entries after i gives the window of a v1 snapshot taken later, on
// every replica (I4). The first op of version 2 prunes the at = 0 entries
// (once MaxAt is past OpRetention) without raising the horizon.
// The readers are shared: d.version is consulted only where versions differ.
// testdata/snapshot-v1.bin and testdata/snapshot-v2.bin are golden files that
// every later version must still restore.
const SnapshotVersion = 2

// opWindowV1 was the count-based op window of snapshot v1.
const opWindowV1 = 64

const snapshotMagic = "chorusfsm"

// Bounds that a snapshot reader enforces, so corrupt input fails cleanly
// instead of allocating without limit.
const (
	maxSnapshotString = 1 << 20
	maxSnapshotCount  = 1 << 26
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// ErrCorruptSnapshot wraps every failure to read a snapshot.
var ErrCorruptSnapshot = errors.New("corrupt snapshot")

// WriteSnapshot writes the whole state. It only reads s, so it may run on a
// Clone while the original keeps applying.
func (s *State) WriteSnapshot(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	crc := crc32.New(crcTable)
	e := &encoder{w: io.MultiWriter(bw, crc)}
	e.raw([]byte(snapshotMagic))
	e.uvarint(SnapshotVersion)
	e.uvarint(s.index)

	nodes := make([]string, 0, len(s.nodes))
	for n := range s.nodes {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	e.uvarint(uint64(len(nodes)))
	for _, n := range nodes {
		e.str(n)
		e.uvarint(s.nodes[n].epoch)
		e.bool(s.nodes[n].reaped)
		e.str(s.nodes[n].httpAddr)
	}

	e.uvarint(uint64(len(s.tombs)))
	for i := range s.tombs {
		t := s.tombs[(s.tombNext+i)%len(s.tombs)] // oldest first
		e.str(t.session)
		e.raw(t.op[:])
		e.uvarint(t.index)
	}

	ids := s.SessionIDs()
	e.uvarint(uint64(len(ids)))
	for _, id := range ids {
		e.session(s.Session(id))
	}
	if e.err != nil {
		return fmt.Errorf("write snapshot: %w", e.err)
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	if _, err := bw.Write(sum[:]); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write snapshot: %w", err)
	}
	return nil
}

// ReadSnapshot reads a snapshot of any released version into a new State.
// Errors wrap ErrCorruptSnapshot.
func ReadSnapshot(r io.Reader) (*State, error) {
	crc := crc32.New(crcTable)
	d := &decoder{r: bufio.NewReaderSize(r, 1<<16), crc: crc}
	magic := d.raw(len(snapshotMagic))
	if d.err == nil && string(magic) != snapshotMagic {
		return nil, fmt.Errorf("%w: not a chorus snapshot", ErrCorruptSnapshot)
	}
	version := d.uvarint()
	if d.err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrCorruptSnapshot, d.err)
	}
	var s *State
	switch version {
	case 1, 2:
		d.version = version
		s = d.state()
	default:
		return nil, fmt.Errorf("%w: version %d is newer than this build reads (%d)", ErrCorruptSnapshot, version, SnapshotVersion)
	}
	if d.err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorruptSnapshot, d.err)
	}
	want := crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(d.r, sum[:]); err != nil {
		return nil, fmt.Errorf("%w: checksum: %v", ErrCorruptSnapshot, err)
	}
	if binary.BigEndian.Uint32(sum[:]) != want {
		return nil, fmt.Errorf("%w: checksum mismatch", ErrCorruptSnapshot)
	}
	if _, err := d.r.ReadByte(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data", ErrCorruptSnapshot)
	}
	return s, nil
}

// AppendSnapshot appends the session's snapshot encoding (the bytes it
// takes inside WriteSnapshot's body) to b. Nodes that applied the same log
// append the same bytes (invariant I4), so harnesses compare sessions with it.
func (s *Session) AppendSnapshot(b []byte) []byte {
	buf := bytes.NewBuffer(b)
	e := &encoder{w: buf}
	e.session(s)
	return buf.Bytes() // a bytes.Buffer never fails a write
}

type encoder struct {
	w   io.Writer
	buf [binary.MaxVarintLen64]byte
	err error
}

func (e *encoder) raw(b []byte) {
	if e.err == nil {
		_, e.err = e.w.Write(b)
	}
}

func (e *encoder) uvarint(v uint64) { e.raw(e.buf[:binary.PutUvarint(e.buf[:], v)]) }
func (e *encoder) varint(v int64)   { e.raw(e.buf[:binary.PutVarint(e.buf[:], v)]) }

func (e *encoder) f64(v float64) {
	binary.LittleEndian.PutUint64(e.buf[:8], math.Float64bits(v))
	e.raw(e.buf[:8])
}

func (e *encoder) bool(v bool) {
	if v {
		e.raw([]byte{1})
	} else {
		e.raw([]byte{0})
	}
}

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.raw([]byte(s))
}

func (e *encoder) bytes(b []byte) {
	e.uvarint(uint64(len(b)))
	e.raw(b)
}

func (e *encoder) members(m *members) {
	if m == nil {
		e.uvarint(0)
		return
	}
	e.uvarint(uint64(len(*m)))
	for _, x := range *m {
		e.str(x.key)
		e.bytes(x.raw)
	}
}

func (e *encoder) session(s *Session) {
	e.str(s.ID)
	e.bool(s.HasName)
	e.str(s.Name)
	e.str(s.RemixedFrom)
	e.bool(s.HasRemixedFromName)
	e.str(s.RemixedFromName)
	e.varint(s.CreatedAt)
	e.varint(s.UpdatedAt)
	e.varint(s.LastAccessedAt)
	e.varint(s.RemixCount)
	e.bool(s.Immutable)
	e.uvarint(s.LastSeq)
	e.varint(s.MaxAt)
	e.state(&s.State)

	e.bool(s.live != nil)
	if s.live != nil {
		e.uvarint(uint64(len(s.live.players)))
		for _, p := range s.live.players {
			e.player(&p)
		}
		e.uvarint(uint64(len(s.live.playing)))
		for _, id := range s.live.playing {
			e.str(id)
		}
		h := &s.live.history
		e.uvarint(uint64(h.len()))
		for i := 0; i < h.len(); i++ {
			e.event(h.at(i))
		}
	}

	w := s.ops
	e.uvarint(uint64(w.len()))
	for i := 0; i < w.len(); i++ {
		o := w.entry(i) // oldest first
		e.raw(o.op[:])
		e.uvarint(uint64(o.status))
		e.uvarint(o.index)
		e.varint(s.MaxAt - o.at) // wraps on absurd values; the reader undoes it exactly
	}
	dropped := w != nil && w.dropped
	e.bool(dropped)
	if dropped {
		e.varint(w.horizon)
	}
}

func (e *encoder) state(st *SessionState) {
	e.f64(st.Tempo)
	e.f64(st.Swing)
	e.f64(st.Version)
	e.effects(st.Effects)
	e.members(st.extra)
	e.uvarint(uint64(len(st.Tracks)))
	for i := range st.Tracks {
		e.track(&st.Tracks[i])
	}
}

func (e *encoder) effects(fx *EffectsState) {
	e.bool(fx != nil)
	if fx == nil {
		return
	}
	e.f64(fx.ReverbDecay)
	e.f64(fx.ReverbWet)
	e.str(fx.DelayTime)
	e.f64(fx.DelayFeedback)
	e.f64(fx.DelayWet)
	e.f64(fx.ChorusFrequency)
	e.f64(fx.ChorusDepth)
	e.f64(fx.ChorusWet)
	e.f64(fx.DistortionAmount)
	e.f64(fx.DistortionWet)
}

func (e *encoder) fm(fm *FMParams) {
	e.bool(fm != nil)
	if fm != nil {
		e.f64(fm.Harmonicity)
		e.f64(fm.ModulationIndex)
	}
}

func (e *encoder) lock(l *ParameterLock) {
	e.bool(l != nil)
	if l != nil {
		e.uvarint(uint64(l.flags))
		e.f64(l.Pitch)
		e.f64(l.Volume)
	}
}

func (e *encoder) track(t *SessionTrack) {
	e.str(t.ID)
	e.uvarint(uint64(t.has))
	e.uvarint(uint64(t.null))
	e.str(t.Name)
	e.str(t.SampleID)
	e.f64(t.Volume)
	e.f64(t.Transpose)
	e.uvarint(uint64(t.StepCount))
	e.uvarint(uint64(t.Mode))
	e.bool(t.Muted)
	e.bool(t.Soloed)
	e.uvarint(t.steps[0])
	e.uvarint(t.steps[1])
	e.uvarint(uint64(len(t.locks)))
	for i := range t.locks {
		e.uvarint(uint64(t.locks[i].step))
		e.lock(&t.locks[i].lock)
	}
	e.fm(t.FM)
	e.members(t.extra)
}

func (e *encoder) player(p *PlayerInfo) {
	e.str(p.ID)
	e.str(p.Node)
	e.uvarint(p.Epoch)
	e.varint(p.ConnectedAt)
}

func (e *encoder) event(ev *Event) {
	e.uvarint(uint64(ev.Type))
	e.uvarint(ev.Seq)
	e.uvarint(ev.PrevSeq)
	e.bool(ev.HasClientSeq)
	e.varint(ev.ClientSeq)
	e.str(ev.Player)
	e.bool(ev.Others)
	e.str(ev.TrackID)
	e.varint(int64(ev.Step))
	e.bool(ev.Flag)
	e.f64(ev.Number)
	e.str(ev.Text)
	e.str(ev.Text2)
	e.lock(ev.Lock)
	e.bytes(ev.Track)
	e.effects(ev.Effects)
	e.fm(ev.FM)
	e.varint(ev.At)
	e.f64(ev.Tempo)
}

type decoder struct {
	r       *bufio.Reader
	crc     hash.Hash32
	err     error
	version uint64 // of the snapshot being read
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) raw(n int) []byte {
	if d.err != nil {
		return nil
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		d.fail(err)
		return nil
	}
	d.crc.Write(b) // hash writes never fail
	return b
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	c, err := d.r.ReadByte()
	if err != nil {
		d.fail(err)
		return 0
	}
	d.crc.Write([]byte{c})
	return c
}

func (d *decoder) uvarint() uint64 {
	var x uint64
	var s uint
	for i := 0; i < binary.MaxVarintLen64; i++ {
		c := d.byte()
		if d.err != nil {
			return 0
		}
		if c < 0x80 {
			if i == binary.MaxVarintLen64-1 && c > 1 {
				d.fail(errors.New("varint overflows"))
				return 0
			}
			return x | uint64(c)<<s
		}
		x |= uint64(c&0x7f) << s
		s += 7
	}
	d.fail(errors.New("varint overflows"))
	return 0
}

func (d *decoder) varint() int64 {
	ux := d.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (d *decoder) small(max uint64, what string) uint64 {
	v := d.uvarint()
	if v > max {
		d.fail(fmt.Errorf("%s %d out of range", what, v))
		return 0
	}
	return v
}

func (d *decoder) count(what string) int { return int(d.small(maxSnapshotCount, what+" count")) }

func (d *decoder) f64() float64 {
	b := d.raw(8)
	if b == nil {
		return 0
	}
	return math.Float64frombits(binary.LittleEndian.Uint64(b))
}

func (d *decoder) bool() bool {
	switch d.byte() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail(errors.New("bad bool"))
	return false
}

func (d *decoder) str() string { return string(d.bytes()) }

func (d *decoder) bytes() []byte {
	n := d.small(maxSnapshotString, "string length")
	if d.err != nil || n == 0 {
		return nil
	}
	return d.raw(int(n))
}

func (d *decoder) members() *members {
	n := d.count("members")
	if n == 0 || d.err != nil {
		return nil
	}
	m := make(members, 0, min(n, 64))
	for i := 0; i < n && d.err == nil; i++ {
		m = append(m, member{key: d.str(), raw: d.bytes()})
	}
	return &m
}

func (d *decoder) state() *State {
	s := NewState()
	s.index = d.uvarint()
	for n := d.count("nodes"); n > 0 && d.err == nil; n-- {
		node := d.str()
		s.nodes[node] = nodeState{epoch: d.uvarint(), reaped: d.bool(), httpAddr: d.str()}
	}
	nt := d.small(tombLen, "tombstones")
	for i := uint64(0); i < nt && d.err == nil; i++ {
		t := tomb{session: d.str()}
		copy(t.op[:], d.raw(len(t.op)))
		t.index = d.uvarint()
		s.tombs = append(s.tombs, t)
	}
	prev := ""
	for n := d.count("sessions"); n > 0 && d.err == nil; n-- {
		sess := d.session()
		if d.err != nil {
			break
		}
		if sess.ID <= prev {
			d.fail(fmt.Errorf("session %q out of order", sess.ID))
			break
		}
		prev = sess.ID
		s.put(sess)
	}
	return s
}

func (d *decoder) session() *Session {
	s := &Session{ID: d.str()}
	s.HasName = d.bool()
	s.Name = d.str()
	s.RemixedFrom = d.str()
	s.HasRemixedFromName = d.bool()
	s.RemixedFromName = d.str()
	s.CreatedAt = d.varint()
	s.UpdatedAt = d.varint()
	s.LastAccessedAt = d.varint()
	s.RemixCount = d.varint()
	s.Immutable = d.bool()
	s.LastSeq = d.uvarint()
	s.MaxAt = d.varint()
	s.State = d.sessionState()

	if d.bool() {
		r := &room{}
		for n := d.small(MaxPlayers, "players"); n > 0 && d.err == nil; n-- {
			r.players = append(r.players, d.player())
		}
		for n := d.small(MaxPlayers, "playing"); n > 0 && d.err == nil; n-- {
			r.playing = append(r.playing, d.str())
		}
		for n := d.small(HistoryLen, "history"); n > 0 && d.err == nil; n-- {
			ev := d.event()
			ev.Session = s.ID
			r.history.push(ev)
		}
		s.live = r
	}
	s.ops = d.opWindow(s.MaxAt)
	return s
}

// opWindow reads a session's op window; maxAt is the session's MaxAt.
func (d *decoder) opWindow(maxAt int64) *opWindow {
	limit := uint64(OpWindowMax)
	if d.version == 1 {
		limit = opWindowV1
	}
	n := int(d.small(limit, "ops"))
	w := &opWindow{}
	if n > 0 && d.err == nil {
		w.ring = make([]opEntry, opWindowCap(n))
	}
	for ; w.n < n && d.err == nil; w.n++ {
		o := &w.ring[w.n]
		copy(o.op[:], d.raw(len(o.op)))
		o.status = Status(d.small(255, "status"))
		o.index = d.uvarint()
		if d.version >= 2 {
			o.at = maxAt - d.varint()
		} // v1: at 0, as opWindow.addLegacy records it
	}
	// v1 had no horizon: a window built by the legacy rule (addLegacy) never
	// drops one, full or not.
	if d.version >= 2 && d.bool() {
		w.dropped, w.horizon = true, d.varint()
	}
	if w.n == 0 && !w.dropped {
		return nil
	}
	w.reindex()
	return w
}

func (d *decoder) sessionState() SessionState {
	st := SessionState{Tempo: d.f64(), Swing: d.f64(), Version: d.f64()}
	st.Effects = d.effects()
	st.extra = d.members()
	n := d.count("tracks")
	if n > 0 && d.err == nil {
		st.Tracks = make([]SessionTrack, 0, min(n, MaxTracks))
		for ; n > 0 && d.err == nil; n-- {
			st.Tracks = append(st.Tracks, d.track())
		}
	}
	return st
}

func (d *decoder) effects() *EffectsState {
	if !d.bool() {
		return nil
	}
	fx := &EffectsState{ReverbDecay: d.f64(), ReverbWet: d.f64(), DelayTime: d.str()}
	fx.DelayFeedback, fx.DelayWet = d.f64(), d.f64()
	fx.ChorusFrequency, fx.ChorusDepth, fx.ChorusWet = d.f64(), d.f64(), d.f64()
	fx.DistortionAmount, fx.DistortionWet = d.f64(), d.f64()
	return fx
}

func (d *decoder) fm() *FMParams {
	if !d.bool() {
		return nil
	}
	return &FMParams{Harmonicity: d.f64(), ModulationIndex: d.f64()}
}

func (d *decoder) lock() *ParameterLock {
	if !d.bool() {
		return nil
	}
	return &ParameterLock{flags: uint8(d.small(7, "lock flags")), Pitch: d.f64(), Volume: d.f64()}
}

func (d *decoder) track() SessionTrack {
	t := SessionTrack{ID: d.str()}
	t.has = Field(d.small(math.MaxUint16, "track fields"))
	t.null = Field(d.small(math.MaxUint16, "track nulls"))
	t.Name = unique.Make(d.str()).Value() // shared across sessions, as parseTrack does
	t.SampleID = unique.Make(d.str()).Value()
	t.Volume = d.f64()
	t.Transpose = d.f64()
	t.StepCount = uint8(d.small(MaxSteps, "stepCount"))
	t.Mode = uint8(d.small(uint64(ModeGate), "playbackMode"))
	t.Muted = d.bool()
	t.Soloed = d.bool()
	t.steps[0] = d.uvarint()
	t.steps[1] = d.uvarint()
	n := d.small(MaxSteps, "locks")
	if n > 0 && d.err == nil {
		t.locks = make([]lockAt, 0, n)
		last := -1
		for ; n > 0 && d.err == nil; n-- {
			step := int(d.small(MaxSteps-1, "lock step"))
			l := d.lock()
			if l == nil || step <= last {
				d.fail(errors.New("bad parameter lock"))
				break
			}
			last = step
			t.locks = append(t.locks, lockAt{step: uint8(step), lock: *l})
		}
	}
	t.FM = d.fm()
	t.extra = d.members()
	return t
}

func (d *decoder) player() PlayerInfo {
	id, node := d.str(), d.str()
	epoch := d.uvarint()
	return NewPlayerInfo(id, node, epoch, d.varint())
}

func (d *decoder) event() *Event {
	ev := &Event{Type: EventType(d.small(uint64(eventEnd-1), "event type"))}
	ev.Seq = d.uvarint()
	ev.PrevSeq = d.uvarint()
	ev.HasClientSeq = d.bool()
	ev.ClientSeq = d.varint()
	ev.Player = d.str()
	ev.Others = d.bool()
	ev.TrackID = d.str()
	ev.Step = int(d.varint())
	ev.Flag = d.bool()
	ev.Number = d.f64()
	ev.Text = d.str()
	ev.Text2 = d.str()
	ev.Lock = d.lock()
	ev.Track = d.bytes()
	ev.Effects = d.effects()
	ev.FM = d.fm()
	ev.At = d.varint()
	ev.Tempo = d.f64()
	// The history holds mutating broadcasts only, each with its payload.
	switch {
	case !ev.Type.IsMutation():
		d.fail(fmt.Errorf("history event type %d", ev.Type))
	case ev.Type == EventEffectsChanged && ev.Effects == nil,
		ev.Type == EventFMParamsChanged && ev.FM == nil,
		ev.Type == EventTrackAdded && len(ev.Track) == 0:
		d.fail(fmt.Errorf("history event %s without its payload", ev.Type))
	}
	return ev
}
