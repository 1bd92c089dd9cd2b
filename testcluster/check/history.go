package check

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// Outcome is what a client learned about an operation it invoked.
type Outcome string

// The three outcomes, as in Jepsen: OK means the write was acknowledged (or the
// read returned), Failed means it definitely did not take effect, Unknown means
// it may or may not have (a timeout, a dropped socket, an ambiguous error). The
// harness must record any error that could follow a commit as Unknown, never
// Failed: the checkers assume a Failed write never applied.
const (
	OK      Outcome = "ok"
	Failed  Outcome = "failed"
	Unknown Outcome = "unknown"
)

// Operation kinds. Every kind except KindRead and KindToggleStep sets its Key
// to Value. KindToggleStep flips a boolean step register ("true"/"false", with
// "" meaning off); its Value is the resulting state reported by the ack, or ""
// when the outcome is not OK.
const (
	KindToggleStep       = "toggle_step"
	KindSetTempo         = "set_tempo"
	KindSetTrackVolume   = "set_track_volume"
	KindAddTrack         = "add_track"
	KindDeleteTrack      = "delete_track"
	KindSetParameterLock = "set_parameter_lock"
	KindHTTPPut          = "http_put"
	KindRename           = "rename"
	KindRead             = "read"
)

// TypeSnapshot is the Delivery.Type of a full-state message (on connect or
// resync). A snapshot is a resync point, not a broadcast: its Seq is the index
// the state was taken at, and the chain checks restart after it.
const TypeSnapshot = "snapshot"

// Op is one client operation on one register of one session. Model
// assumption: each recorded op touches exactly one register (Key), e.g.
// "tempo", "track:<id>:volume", "track:<id>:step:<n>", "track:<id>:exists".
// The workload must not generate ops whose effect spans several registers
// that it then reads or checks (an http_put of a whole state, or a
// delete_track that clears steps), or must record them as one Op per
// register with the same OpID.
type Op struct {
	Client  int       `json:"client"`
	Session string    `json:"session"`
	Kind    string    `json:"kind"`
	Key     string    `json:"key"`
	Value   string    `json:"value"`
	OpID    string    `json:"opId,omitempty"`
	Invoke  time.Time `json:"invoke"`
	// Complete is when the client got its answer or gave up; ignored for
	// Unknown ops, which may take effect at any later time.
	Complete time.Time `json:"complete"`
	Outcome  Outcome   `json:"outcome"`
	// Seq is the seq of the ack (the Raft index of the entry), 0 if none.
	Seq uint64 `json:"seq,omitempty"`
	// PlayerID and ClientSeq name a WebSocket op as its broadcast does, so
	// that ResolveUnknown can find it among the deliveries; empty for HTTP.
	PlayerID  string `json:"playerId,omitempty"`
	ClientSeq uint64 `json:"clientSeq,omitempty"`
}

// IsWrite reports whether o changes its register.
func (o Op) IsWrite() bool { return o.Kind != KindRead }

// Delivery is one message with a seq that a client's socket received.
type Delivery struct {
	Client int `json:"client"`
	// Conn numbers the client's connections 0, 1, 2 … in the order it opened
	// them.
	Conn    int    `json:"conn"`
	Node    string `json:"node"`
	Session string `json:"session"`
	Seq     uint64 `json:"seq"`
	// PrevSeq is the seq of the session's previous broadcast if the server
	// says so, else 0 (unknown).
	PrevSeq uint64 `json:"prevSeq,omitempty"`
	Type    string `json:"type"`
	// PlayerID and ClientSeq identify the client operation that produced a
	// broadcast (ClientSeq 0: none, e.g. presence).
	PlayerID  string `json:"playerId,omitempty"`
	ClientSeq uint64 `json:"clientSeq,omitempty"`
	// Value is a step_toggled broadcast's new value ("true" or "false").
	Value string    `json:"value,omitempty"`
	At    time.Time `json:"at"`
}

// Conn records that a client opened a connection. Since is the seq it asked
// the server to resume after (?since=), 0 for none.
type Conn struct {
	Client  int       `json:"client"`
	Conn    int       `json:"conn"`
	Node    string    `json:"node"`
	Session string    `json:"session"`
	Since   uint64    `json:"since,omitempty"`
	At      time.Time `json:"at"`
}

// Close records that a client's connection was closed, by either side.
type Close struct {
	Client int       `json:"client"`
	Conn   int       `json:"conn"`
	Code   int       `json:"code"`
	At     time.Time `json:"at"`
}

// NodeState is one node's final state of one session, taken after healing.
type NodeState struct {
	Node    string `json:"node"`
	Session string `json:"session"`
	Hash    string `json:"hash"`
	// Snapshot is the FSM snapshot bytes or the session JSON.
	Snapshot []byte `json:"snapshot"`
	// Index is the node's applied index when the state was taken.
	Index uint64 `json:"index"`
	// Registers is the state as register values, keyed like Op.Key, derived
	// from Snapshot by the harness. A missing key means "" (absent).
	Registers map[string]string `json:"registers,omitempty"`
}

// History is everything one run recorded. The slices are in recording order;
// within one (Client, Conn), Deliveries must be in the order they arrived.
type History struct {
	Ops        []Op        `json:"ops"`
	Deliveries []Delivery  `json:"deliveries"`
	Conns      []Conn      `json:"conns,omitempty"`
	Closes     []Close     `json:"closes"`
	Final      []NodeState `json:"final"`
	// Initial is each session's register values before the run (session ->
	// key -> value); a missing key starts as "".
	Initial map[string]map[string]string `json:"initial,omitempty"`
}

// Marshal encodes h as indented JSON.
func (h *History) Marshal() ([]byte, error) {
	return json.MarshalIndent(h, "", " ")
}

// Unmarshal decodes a History written by Marshal.
func Unmarshal(data []byte) (*History, error) {
	var h History
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, fmt.Errorf("check: decode history: %w", err)
	}
	return &h, nil
}

// ResolveUnknown turns an Unknown WebSocket op into an OK one when some
// socket received its broadcast (same session, PlayerID and ClientSeq): the
// broadcast proves the op was applied, at the broadcast's seq and before the
// earliest time a socket got it, which becomes its Complete. A toggle takes
// the value the broadcast carries. It returns how many ops it resolved.
func (h *History) ResolveUnknown() int {
	type key struct {
		session, player string
		clientSeq       uint64
	}
	first := map[key]Delivery{}
	for _, d := range h.Deliveries {
		if d.ClientSeq == 0 || d.Seq == 0 || d.Type == TypeSnapshot {
			continue
		}
		k := key{d.Session, d.PlayerID, d.ClientSeq}
		if f, ok := first[k]; !ok || d.At.Before(f.At) {
			first[k] = d
		}
	}
	n := 0
	for i := range h.Ops {
		o := &h.Ops[i]
		if o.Outcome != Unknown || o.PlayerID == "" || o.ClientSeq == 0 {
			continue
		}
		d, ok := first[key{o.Session, o.PlayerID, o.ClientSeq}]
		if !ok {
			continue
		}
		o.Outcome, o.Seq, o.Complete = OK, d.Seq, d.At
		if o.Kind == KindToggleStep {
			o.Value = d.Value
		}
		n++
	}
	return n
}

func (h *History) initial(session, key string) string {
	return h.Initial[session][key]
}

// Recorder collects a History from the goroutines of a workload. Its methods
// are safe for concurrent use.
type Recorder struct {
	mu sync.Mutex // guards h
	h  History
}

// Op records an operation once its outcome is known.
func (r *Recorder) Op(o Op) {
	r.mu.Lock()
	r.h.Ops = append(r.h.Ops, o)
	r.mu.Unlock()
}

// Delivery records a broadcast a socket received.
func (r *Recorder) Delivery(d Delivery) {
	r.mu.Lock()
	r.h.Deliveries = append(r.h.Deliveries, d)
	r.mu.Unlock()
}

// Opened records a socket that joined.
func (r *Recorder) Opened(c Conn) {
	r.mu.Lock()
	r.h.Conns = append(r.h.Conns, c)
	r.mu.Unlock()
}

// Closed records a socket that ended.
func (r *Recorder) Closed(c Close) {
	r.mu.Lock()
	r.h.Closes = append(r.h.Closes, c)
	r.mu.Unlock()
}

// Initial records a session's register values before the workload.
func (r *Recorder) Initial(session string, regs map[string]string) {
	r.mu.Lock()
	if r.h.Initial == nil {
		r.h.Initial = map[string]map[string]string{}
	}
	r.h.Initial[session] = regs
	r.mu.Unlock()
}

// History returns a copy of what was recorded so far; Final is left to the
// caller.
func (r *Recorder) History() History {
	r.mu.Lock()
	defer r.mu.Unlock()
	return History{Ops: slices.Clone(r.h.Ops), Deliveries: slices.Clone(r.h.Deliveries),
		Conns: slices.Clone(r.h.Conns), Closes: slices.Clone(r.h.Closes), Initial: maps.Clone(r.h.Initial)}
}
