package check

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"time"

	"github.com/anishathalye/porcupine"
)

// register names one register of one session.
type register struct{ session, key string }

func (r register) String() string { return r.session + "/" + r.key }

// registerOps groups h's ops by register, in recording order, and returns the
// registers sorted so that reports are deterministic.
func registerOps(h *History) ([]register, map[register][]Op) {
	by := map[register][]Op{}
	for _, o := range h.Ops {
		k := register{o.Session, o.Key}
		by[k] = append(by[k], o)
	}
	regs := make([]register, 0, len(by))
	for k := range by {
		regs = append(regs, k)
	}
	slices.SortFunc(regs, func(a, b register) int {
		return cmp.Or(cmp.Compare(a.session, b.session), cmp.Compare(a.key, b.key))
	})
	return regs, by
}

// LostWrites checks I5: every acknowledged write is reflected in every node's
// final state.
//
// Model: registers are last-writer-wins by seq, and the seq of an ack is the
// Raft index of its entry, so the acked writes of a register are totally
// ordered by Seq. Let w be the OK write with the highest Seq. A node's final
// value must be w's value, or the value of an Unknown write that could have
// been applied after w (its seq is unknown, or known and above w's). An
// Unknown toggle could leave either boolean, so it explains any value; an OK
// toggle's Value is the state its ack reported. Failed
// writes never applied and explain nothing. OK writes without a Seq cannot be
// ordered: they are counted ("unordered") and, since they may have come
// after w, their values are accepted too.
func LostWrites(h *History) Result {
	r := newResult("lost-writes")
	finals := map[string][]NodeState{}
	for _, n := range h.Final {
		finals[n.Session] = append(finals[n.Session], n)
	}
	regs, by := registerOps(h)
	for _, reg := range regs {
		var last *Op
		for i, o := range by[reg] {
			if !o.IsWrite() || o.Outcome != OK {
				continue
			}
			if o.Seq == 0 {
				r.Counts["unordered"]++
				continue
			}
			if last == nil || o.Seq > last.Seq {
				last = &by[reg][i]
			}
		}
		if last == nil {
			continue
		}
		r.Counts["registers"]++
		allowed := map[string]bool{last.Value: true}
		wildcard := false
		for _, o := range by[reg] {
			if !o.IsWrite() || o.Outcome == Failed || (o.Seq != 0 && o.Seq < last.Seq) {
				continue
			}
			if o.Kind == KindToggleStep && o.Outcome != OK {
				wildcard = true
			} else {
				allowed[o.Value] = true
			}
		}
		nodes := finals[reg.session]
		if len(nodes) == 0 {
			r.fail("%s: no node reported a final state, so the acked write %s (seq %d) is lost", reg, describeOp(*last), last.Seq)
			continue
		}
		for _, n := range nodes {
			r.Counts["checked"]++
			v := n.Registers[reg.key]
			if allowed[v] || wildcard {
				continue
			}
			r.fail("%s: node %s has %q at index %d, but the last acked write %s (seq %d) wrote %q and no unknown write explains %q",
				reg, n.Node, v, n.Index, describeOp(*last), last.Seq, last.Value, v)
		}
	}
	return r
}

// SeqMonotonic checks I1 from each client's view: per client and session,
// over its connections in Conn order, the seq of broadcasts strictly rises
// (log order, and no broadcast twice, even across a reconnect). Only a
// snapshot may repeat the seq just seen. Deliveries with Seq 0 carry no seq
// and are ignored.
func SeqMonotonic(h *History) Result {
	r := newResult("seq-monotonic")
	for _, ds := range byClientSession(h) {
		r.Counts["clients"]++
		var seen uint64 // highest seq the client has seen so far
		prevConn := -1
		for _, d := range ds {
			r.Counts["deliveries"]++
			switch {
			case d.Conn == prevConn && (d.Seq < seen || d.Seq == seen && d.Type != TypeSnapshot):
				r.fail("client %d conn %d (node %s) session %s: %s seq %d after seq %d on the same connection",
					d.Client, d.Conn, d.Node, d.Session, d.Type, d.Seq, seen)
			case d.Conn != prevConn && (d.Seq < seen || d.Seq == seen && d.Type != TypeSnapshot):
				r.fail("client %d conn %d (node %s) session %s: %s seq %d after reconnect, but the client had seen seq %d",
					d.Client, d.Conn, d.Node, d.Session, d.Type, d.Seq, seen)
			}
			prevConn = d.Conn
			if d.Seq > seen {
				seen = d.Seq
			}
		}
	}
	return r
}

// Convergence checks I4: per session, every node reports the same applied
// index, state hash and snapshot bytes. States at different indexes cannot be
// compared and count as a failure: the harness must wait for every node to
// catch up before it takes the final states. A node that reported states for
// some sessions but not for another is reported too.
func Convergence(h *History) Result {
	r := newResult("convergence")
	by := map[string][]NodeState{}
	nodes := map[string]bool{}
	for _, n := range h.Final {
		by[n.Session] = append(by[n.Session], n)
		nodes[n.Node] = true
	}
	for _, s := range slices.Sorted(maps.Keys(by)) {
		states := by[s]
		slices.SortStableFunc(states, func(a, b NodeState) int { return cmp.Compare(a.Node, b.Node) })
		r.Counts["sessions"]++
		have := map[string]bool{}
		ref := states[0]
		for _, n := range states {
			have[n.Node] = true
			r.Counts["states"]++
			switch {
			case n.Index != ref.Index:
				r.fail("session %s: node %s is at index %d but node %s is at %d: not comparable", s, n.Node, n.Index, ref.Node, ref.Index)
			case n.Hash != ref.Hash:
				r.fail("session %s at index %d: node %s has hash %s but node %s has %s", s, n.Index, n.Node, n.Hash, ref.Node, ref.Hash)
			case !bytes.Equal(n.Snapshot, ref.Snapshot):
				r.fail("session %s at index %d: node %s snapshot (%d bytes) differs from node %s (%d bytes) at byte %d",
					s, n.Index, n.Node, len(n.Snapshot), ref.Node, len(ref.Snapshot), firstDiff(n.Snapshot, ref.Snapshot))
			}
		}
		for _, n := range slices.Sorted(maps.Keys(nodes)) {
			if !have[n] {
				r.fail("session %s: node %s reported no state", s, n)
			}
		}
	}
	return r
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// LinearizableTimeout bounds the porcupine search of one register.
const LinearizableTimeout = 30 * time.Second

type regInput struct{ Kind, Value string }

type regOutput struct {
	Value string
	Known bool
}

// registerModel is a string register starting at init. Reads must return the
// current value; toggles flip "true" and "false" ("" is off) and, if their
// result is known, must report the new value; every other write sets Value.
func registerModel(init string) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return init },
		Step: func(state, input, output any) (bool, any) {
			s, in, out := state.(string), input.(regInput), output.(regOutput)
			switch in.Kind {
			case KindRead:
				return out.Value == s, s
			case KindToggleStep:
				next := "true"
				if s == "true" {
					next = "false"
				}
				return !out.Known || out.Value == next, next
			default:
				return true, in.Value
			}
		},
		DescribeOperation: func(input, output any) string {
			in, out := input.(regInput), output.(regOutput)
			switch {
			case in.Kind == KindRead:
				return fmt.Sprintf("read -> %q", out.Value)
			case !out.Known:
				return fmt.Sprintf("%s %q -> ?", in.Kind, in.Value)
			default:
				return fmt.Sprintf("%s -> %q", in.Kind, out.Value)
			}
		},
	}
}

// Linearizable checks each register (one porcupine partition per session and
// key) against registerModel with porcupine. Failed ops and non-OK reads are
// dropped; Unknown writes get an infinitely late return, as in Jepsen, so they
// may take effect at any time after their invocation. Partitions are checked
// one by one in register order so the first non-linearizable one is named. A
// search that times out fails the check: it proved nothing.
func Linearizable(h *History) Result {
	r := newResult("linearizable")
	regs, by := registerOps(h)
	for _, reg := range regs {
		var ops []porcupine.Operation
		for _, o := range by[reg] {
			if o.Outcome == Failed || (o.Kind == KindRead && o.Outcome != OK) {
				continue
			}
			ret, known := o.Complete.UnixNano(), true
			if o.Outcome == Unknown {
				ret, known = math.MaxInt64, false
			}
			ops = append(ops, porcupine.Operation{
				ClientId: o.Client,
				Input:    regInput{o.Kind, o.Value},
				Call:     o.Invoke.UnixNano(),
				Output:   regOutput{o.Value, known},
				Return:   ret,
			})
		}
		if len(ops) == 0 {
			continue
		}
		r.Counts["registers"]++
		r.Counts["ops"] += len(ops)
		switch porcupine.CheckOperationsTimeout(registerModel(h.initial(reg.session, reg.key)), ops, LinearizableTimeout) {
		case porcupine.Ok:
		case porcupine.Illegal:
			r.fail("%s is not linearizable (initial %q): %s", reg, h.initial(reg.session, reg.key), describeOps(by[reg]))
		default:
			r.Counts["timeouts"]++
			r.fail("%s: linearizability not decided within %v (%d ops)", reg, LinearizableTimeout, len(ops))
		}
	}
	return r
}

// NoDoubleApply checks I6. Assumption: a (playerId, clientSeq) pair names one
// client operation for the whole run within a session; clients reuse a
// clientSeq only to retry the same op. Since a broadcast's seq is its log
// index (I1), one op seen at two different seqs, by any sockets, was applied
// twice. Likewise two OK acks of one OpID with different seqs.
func NoDoubleApply(h *History) Result {
	r := newResult("no-double-apply")
	type opKey struct {
		session, player string
		clientSeq       uint64
	}
	seen := map[opKey]Delivery{}
	reported := map[opKey]bool{}
	for _, d := range h.Deliveries {
		if d.ClientSeq == 0 || d.Seq == 0 || d.Type == TypeSnapshot {
			continue
		}
		k := opKey{d.Session, d.PlayerID, d.ClientSeq}
		first, ok := seen[k]
		if !ok {
			seen[k] = d
			r.Counts["ops"]++
			continue
		}
		if first.Seq != d.Seq && !reported[k] {
			reported[k] = true
			r.fail("session %s: op (player %s, clientSeq %d) applied twice: seq %d (client %d conn %d, node %s) and seq %d (client %d conn %d, node %s)",
				d.Session, d.PlayerID, d.ClientSeq, first.Seq, first.Client, first.Conn, first.Node, d.Seq, d.Client, d.Conn, d.Node)
		}
	}
	acks := map[register]Op{}
	for _, o := range h.Ops {
		if o.OpID == "" || o.Outcome != OK || o.Seq == 0 {
			continue
		}
		k := register{o.Session, o.OpID}
		first, ok := acks[k]
		if !ok {
			acks[k] = o
			continue
		}
		if first.Seq != o.Seq {
			r.fail("session %s: op ID %s acked at seq %d and again at seq %d", o.Session, o.OpID, first.Seq, o.Seq)
		}
	}
	return r
}

// NoSilentSkip checks I3: a socket never misses a broadcast of its session
// without being closed with a non-1000 code.
//
// A skip is seen two ways: the server's PrevSeq of a delivery is above the
// seq the socket saw last, or some broadcast of the session (any delivery or
// OK ack with that seq, on any socket) falls strictly between two consecutive
// deliveries. Assumption: the harness records as deliveries with a Seq only
// broadcasts that go to every socket of the session (and snapshots, typed
// TypeSnapshot, which restart the chain). Within one connection any gap is a
// skip. Across a reconnect a gap is a skip if the client resumed with
// ?since= at the last seq it had seen (History.Conns), whatever ended the
// earlier connection: the server must replay or send a snapshot. Without
// such a resume, a gap is a skip only if the earlier connection was not
// closed with a non-1000 code: such a close tells the client to resume, and
// what follows is the client's business.
func NoSilentSkip(h *History) Result {
	r := newResult("no-silent-skip")
	known := map[string][]uint64{}
	for _, d := range h.Deliveries {
		if d.Seq != 0 && d.Type != TypeSnapshot {
			known[d.Session] = append(known[d.Session], d.Seq)
		}
	}
	for _, o := range h.Ops {
		if o.IsWrite() && o.Outcome == OK && o.Seq != 0 {
			known[o.Session] = append(known[o.Session], o.Seq)
		}
	}
	for s, seqs := range known {
		slices.Sort(seqs)
		known[s] = slices.Compact(seqs)
	}
	// missing returns a broadcast of session strictly between lo and hi.
	missing := func(session string, lo, hi uint64) (uint64, bool) {
		seqs := known[session]
		i, _ := slices.BinarySearch(seqs, lo+1)
		if i < len(seqs) && seqs[i] < hi {
			return seqs[i], true
		}
		return 0, false
	}
	type connKey struct{ client, conn int }
	closes := map[connKey]Close{}
	for _, c := range h.Closes {
		closes[connKey{c.Client, c.Conn}] = c
	}
	since := map[connKey]uint64{}
	for _, c := range h.Conns {
		since[connKey{c.Client, c.Conn}] = c.Since
	}
	for _, ds := range byClientSession(h) {
		for i, d := range ds {
			r.Counts["deliveries"]++
			if i == 0 || d.Type == TypeSnapshot {
				continue
			}
			prev := ds[i-1]
			where := "on the same connection"
			if d.Conn != prev.Conn {
				c, closed := closes[connKey{prev.Client, prev.Conn}]
				switch s := since[connKey{d.Client, d.Conn}]; {
				case s != 0 && s >= prev.Seq:
					where = fmt.Sprintf("after resuming on conn %d with since=%d", d.Conn, s)
				case closed && c.Code != 1000:
					continue
				case closed:
					where = fmt.Sprintf("after conn %d was closed with code 1000", prev.Conn)
				default:
					where = fmt.Sprintf("after conn %d ended without a non-1000 close", prev.Conn)
				}
			}
			if d.PrevSeq > prev.Seq {
				r.fail("client %d conn %d (node %s) session %s: got seq %d whose prevSeq is %d, but the socket last saw seq %d %s",
					d.Client, d.Conn, d.Node, d.Session, d.Seq, d.PrevSeq, prev.Seq, where)
				continue
			}
			if m, ok := missing(d.Session, prev.Seq, d.Seq); ok {
				r.fail("client %d conn %d (node %s) session %s: went from seq %d to seq %d %s, skipping broadcast seq %d",
					d.Client, d.Conn, d.Node, d.Session, prev.Seq, d.Seq, where, m)
			}
		}
	}
	return r
}

func describeOp(o Op) string {
	id := o.OpID
	if id == "" {
		id = "-"
	}
	return fmt.Sprintf("[client %d op %s %s %q %s]", o.Client, id, o.Kind, o.Value, o.Outcome)
}

// describeOps lists up to 8 ops of one register with their times relative to
// the first invocation.
func describeOps(ops []Op) string {
	if len(ops) == 0 {
		return ""
	}
	t0 := ops[0].Invoke
	for _, o := range ops {
		if o.Invoke.Before(t0) {
			t0 = o.Invoke
		}
	}
	var b bytes.Buffer
	for i, o := range ops {
		if i == 8 {
			fmt.Fprintf(&b, " … %d more", len(ops)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		end := "∞"
		if o.Outcome != Unknown {
			end = o.Complete.Sub(t0).String()
		}
		fmt.Fprintf(&b, "client %d %s %q %s [%v, %s]", o.Client, o.Kind, o.Value, o.Outcome, o.Invoke.Sub(t0), end)
	}
	return b.String()
}

// byClientSession groups the deliveries that carry a seq by client and
// session, in first-seen order, each group sorted by connection (stably, so
// deliveries keep their order within a connection).
func byClientSession(h *History) [][]Delivery {
	type cs struct {
		client  int
		session string
	}
	index := map[cs]int{}
	var groups [][]Delivery
	for _, d := range h.Deliveries {
		if d.Seq == 0 {
			continue
		}
		k := cs{d.Client, d.Session}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], d)
	}
	for _, ds := range groups {
		sort.SliceStable(ds, func(i, j int) bool { return ds[i].Conn < ds[j].Conn })
	}
	return groups
}
