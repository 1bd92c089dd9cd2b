package fsm

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"strconv"
	"strings"

	"pgregory.net/rapid"
)

// This file draws replicated logs for the property tests (property_test.go):
// sequences of committed commands of every kind, with valid and invalid
// payloads, retries, gaps in the index and a wandering clock.
//
// The id pools are small on purpose: a mutation only does something when its
// session exists, its player has joined and its track is there, so commands
// have to keep running into each other.

var (
	// genSessions are the ids create uses.
	genSessions = []string{
		"0b1e5a2c-7d4f-4e8a-9c3b-1a2b3c4d5e01",
		"0b1e5a2c-7d4f-4e8a-9c3b-1a2b3c4d5e02",
		"0b1e5a2c-7d4f-4e8a-9c3b-1a2b3c4d5e03",
	}
	// genTargets are the ids remix and publish create: two fresh ones, and the
	// created ones (which give exists).
	genTargets = append(append([]string(nil), genSessions...),
		"0b1e5a2c-7d4f-4e8a-9c3b-1a2b3c4d5e04",
		"0b1e5a2c-7d4f-4e8a-9c3b-1a2b3c4d5e05",
	)
	// genAnySession is every id a command may name, plus one that never exists.
	genAnySession = append(append([]string(nil), genTargets...), "ffffffff-ffff-4fff-bfff-ffffffffffff")
	genNodes      = []string{"n1", "n2", "n3"}
	genPlayers    = func() []string {
		ids := make([]string, 12) // more than MaxPlayers, so a room can fill up
		for i := range ids {
			ids[i] = "9a7c3e10-0000-4000-8000-0000000000" + strconv.Itoa(10+i)
		}
		return ids
	}()
	genTrackIDs = []string{"t1", "t2", "t3", "track-1700000000000", "kick"}
)

// genEntry is one committed log entry: its raft index and its command.
type genEntry struct {
	Index uint64
	Cmd   Command
}

// genLog is a drawn log. rapid prints drawn values with %#v, so GoString
// prints one encoded command per line: a failing case reads as a log.
type genLog []genEntry

func (l genLog) GoString() string {
	var b strings.Builder
	b.WriteString("genLog{")
	for _, e := range l {
		raw, err := Encode(e.Cmd)
		if err != nil {
			raw = []byte("<" + err.Error() + ">")
		}
		b.WriteString("\n\t")
		b.WriteString(strconv.FormatUint(e.Index, 10))
		b.WriteByte(' ')
		b.Write(raw)
	}
	b.WriteString("\n}")
	return b.String()
}

// lastIndex is the index of the log's last entry, or 0.
func (l genLog) lastIndex() uint64 {
	if len(l) == 0 {
		return 0
	}
	return l[len(l)-1].Index
}

// genWeights is how often each kind is drawn; kinds not listed get 2, so a
// kind added to Kinds() is drawn without touching this file.
var genWeights = map[Kind]int{
	KindCreate:       2,
	KindDelete:       1,
	KindTouch:        1,
	KindNodeEpoch:    1,
	KindReapNode:     1,
	KindPlayerJoin:   8,
	KindToggleStep:   6,
	KindAddTrack:     5,
	KindDeleteTrack:  3,
	KindSetTempo:     3,
	KindPlayerLeave:  2,
	KindClearTrack:   2,
	KindReplaceState: 2,
}

var genKinds = func() []Kind {
	var ks []Kind
	for _, k := range Kinds() {
		w, ok := genWeights[k]
		if !ok {
			w = 2
		}
		for ; w > 0; w-- {
			ks = append(ks, k)
		}
	}
	return ks
}()

// logGen draws commands. It applies what it draws to a shadow State only to
// aim later commands at sessions, players and tracks that exist (and, less
// often, at ones that do not); the properties never trust the shadow.
type logGen struct {
	t      *rapid.T
	index  uint64
	at     int64
	opTag  byte   // first byte of every op ID, so two generators never share one
	ops    uint64 // op IDs drawn so far
	past   []Command
	shadow *State
	// retryBack is how far back a retry reaches. The clock pauses now and
	// then (see command), so a retry from far back often finds its op gone
	// from the window (OpRetention) and is refused as too old.
	retryBack int
}

func newLogGen(t *rapid.T, opTag byte, prefix genLog) *logGen {
	g := &logGen{t: t, opTag: opTag, index: prefix.lastIndex(), at: 1_700_000_000_000, shadow: NewState(), retryBack: 90}
	for _, e := range prefix {
		g.past = append(g.past, e.Cmd)
		g.at = max(g.at, e.Cmd.At)
		g.shadow.Apply(e.Index, e.Cmd)
	}
	return g
}

// drawGenLog draws a log of 1..maxLen entries that starts from an empty state.
// It opens with one to three creates and a few joins, so that most logs have
// sessions and players to work on.
func drawGenLog(t *rapid.T, label string, maxLen int) genLog {
	return rapid.Custom(func(t *rapid.T) genLog {
		g := newLogGen(t, 1, nil)
		n := rapid.IntRange(1, maxLen).Draw(t, "n")
		log := make(genLog, 0, n)
		log = append(log, g.entry(g.command(KindCreate)))
		for len(log) < n && len(log) < 3 && g.draw("more creates?", 2) == 0 {
			log = append(log, g.entry(g.command(KindCreate)))
		}
		// Sometimes a crowd, so that rooms reach MaxPlayers.
		joins := rapid.SampledFrom([]int{0, 1, 2, 3, 4, 14}).Draw(t, "opening joins")
		for ; len(log) < n && joins > 0; joins-- {
			log = append(log, g.entry(g.command(KindPlayerJoin)))
		}
		for len(log) < n {
			log = append(log, g.next())
		}
		return log
	}).Draw(t, label)
}

// drawContinuation draws up to maxLen more entries after prefix, with op IDs
// of their own (opTag), retries of prefix commands included.
func drawContinuation(t *rapid.T, label string, prefix genLog, opTag byte, maxLen int) genLog {
	return rapid.Custom(func(t *rapid.T) genLog {
		g := newLogGen(t, opTag, prefix)
		n := rapid.IntRange(0, maxLen).Draw(t, "n")
		log := make(genLog, 0, n)
		for len(log) < n {
			log = append(log, g.next())
		}
		return log
	}).Draw(t, label)
}

// busyKinds are the commands of a busy session: mostly mutations that keep
// succeeding, so that op entries leave the window (OpRetention) and the
// history ring (HistoryLen) wraps.
var busyKinds = []Kind{
	KindToggleStep, KindToggleStep, KindToggleStep, KindToggleStep, KindSetTempo, KindSetSwing,
	KindSetParameterLock, KindAddTrack, KindAddTrack, KindAddTrack, KindDeleteTrack, KindClearTrack,
	KindSetTrackVolume, KindMuteTrack, KindSetEffects, KindPlaybackStart, KindPlaybackStop, KindPlayerJoin,
}

// drawBusyLog draws one session with a few players and about n busy commands
// (n is drawn from ns), retries of up to 150 commands back among them.
func drawBusyLog(t *rapid.T, label string, ns ...int) genLog {
	return rapid.Custom(func(t *rapid.T) genLog {
		g := newLogGen(t, 3, nil)
		g.retryBack = 150
		create := Command{Kind: KindCreate, Op: g.newOp(), At: g.at, Session: genSessions[0],
			State: json.RawMessage(`{"tracks":[{"id":"t1","steps":[true]},{"id":"t2"},{"id":"kick","parameterLocks":[{"pitch":1}]}]}`)}
		g.past = append(g.past, create)
		log := genLog{g.entry(create)}
		for i, p := range genPlayers[:3] {
			// One player per node, so that a node's new epoch leaves the room open.
			join := Command{Kind: KindPlayerJoin, Op: g.newOp(), At: g.at, Session: genSessions[0], Player: p, Node: genNodes[i]}
			g.past = append(g.past, join)
			log = append(log, g.entry(join))
		}
		n := rapid.SampledFrom(ns).Draw(t, "about n")
		for n += rapid.IntRange(0, 16).Draw(t, "n more"); n > 0; n-- {
			if rapid.IntRange(0, 7).Draw(t, "retry?") == 0 {
				back := rapid.IntRange(1, min(len(g.past), g.retryBack)).Draw(g.t, "retry of")
				log = append(log, g.entry(g.past[len(g.past)-back]))
				continue
			}
			log = append(log, g.entry(g.command(rapid.SampledFrom(busyKinds).Draw(t, "kind"))))
		}
		return log
	}).Draw(t, label)
}

// next draws the next entry: a retry of an earlier command (the whole command,
// as a proposer re-proposes it) or a new one.
func (g *logGen) next() genEntry {
	if len(g.past) > 0 && rapid.IntRange(0, 9).Draw(g.t, "retry?") == 0 {
		back := rapid.IntRange(1, min(len(g.past), g.retryBack)).Draw(g.t, "retry of")
		return g.entry(g.past[len(g.past)-back])
	}
	return g.entry(g.command(rapid.SampledFrom(genKinds).Draw(g.t, "kind")))
}

// entry places c at the next index. Raft's noop and configuration entries never
// reach the FSM, so the indexes the FSM sees have gaps.
func (g *logGen) entry(c Command) genEntry {
	g.index += rapid.SampledFrom([]uint64{1, 1, 1, 1, 1, 2, 3, 40}).Draw(g.t, "gap")
	g.shadow.Apply(g.index, c)
	return genEntry{Index: g.index, Cmd: c}
}

func (g *logGen) newOp() OpID {
	g.ops++
	var o OpID
	o[0] = g.opTag
	binary.BigEndian.PutUint64(o[8:], g.ops)
	return o
}

func (g *logGen) draw(label string, n int) int { return rapid.IntRange(0, n-1).Draw(g.t, label) }

func (g *logGen) oneOf(label string, opts ...string) string {
	return rapid.SampledFrom(opts).Draw(g.t, label)
}

// command draws a new command of kind k. The proposer's clock mostly moves
// forward, but clocks of different nodes disagree, so it sometimes steps back;
// now and then it jumps, as after a quiet spell, so that op entries leave the
// windows (OpRetention).
func (g *logGen) command(k Kind) Command {
	if g.draw("pause?", 10) == 0 {
		g.at += rapid.Int64Range(OpRetention/4, OpRetention).Draw(g.t, "pause")
	} else {
		g.at += rapid.Int64Range(-300, 3000).Draw(g.t, "dt")
	}
	c := Command{Kind: k, Op: g.newOp(), At: g.at}
	switch k {
	case KindCreate:
		c.Session = g.oneOf("session", genSessions...)
		c.Name = g.name()
		if g.draw("state?", 3) > 0 {
			c.State = g.stateJSON()
		}
	case KindReplaceState:
		c.Session = g.session()
		c.State = g.stateJSON()
	case KindRename:
		c.Session = g.session()
		c.Name = g.name()
	case KindRemix, KindPublish:
		c.Session = g.session()
		c.Target = g.oneOf("target", genTargets...)
		if g.draw("empty target?", 20) == 0 {
			c.Target = ""
		}
	case KindDelete:
		c.Session = g.session()
	case KindTouch:
		for n := g.draw("touches", 4); n > 0; n-- {
			c.Touches = append(c.Touches, Touch{
				Session: g.oneOf("touch session", genAnySession...),
				At:      g.at + rapid.Int64Range(-5000, 100).Draw(g.t, "touch at"),
			})
		}
	case KindPlayerJoin:
		c.Session = g.session()
		c.Player = g.newcomer(c.Session)
		c.Node = g.oneOf("node", genNodes...)
		// Mostly the node's current epoch: a newer one retires every player
		// the node had, so rooms would never fill up.
		c.Epoch = g.epoch(c.Node, rapid.SampledFrom([]int{0, 0, 0, 0, 0, 0, 0, 0, -1, 1}).Draw(g.t, "join epoch"))
	case KindPlayerLeave, KindPlaybackStart, KindPlaybackStop:
		c.Session, c.Player = g.sessionPlayer()
	case KindNodeEpoch:
		c.Node = g.node()
		c.Epoch = g.epoch(c.Node, rapid.IntRange(-1, 2).Draw(g.t, "epoch delta"))
		c.Addr = g.oneOf("addr", "127.0.0.1:8081", "10.0.0.2:80", "", "[::1]:8083")
	case KindReapNode:
		c.Node = g.node()
		c.Epoch = g.epoch(c.Node, rapid.IntRange(-1, 1).Draw(g.t, "epoch delta"))
	default:
		g.mutation(&c)
	}
	if g.draw("raw payload?", 25) == 0 {
		c.Payload = g.rawJSON() // any payload on any kind
	}
	g.past = append(g.past, c)
	return c
}

func (g *logGen) mutation(c *Command) {
	c.Session, c.Player = g.sessionPlayer()
	c.TrackID = g.trackID(c.Session)
	if g.draw("clientSeq?", 2) == 0 {
		n := rapid.Int64Range(-1, 1000).Draw(g.t, "clientSeq")
		c.ClientSeq = &n
	}
	switch c.Kind {
	case KindToggleStep:
		c.Step = rapid.IntRange(-1, 130).Draw(g.t, "step")
	case KindSetParameterLock:
		c.Step = rapid.IntRange(-1, 130).Draw(g.t, "step")
		c.Payload = g.lockJSON(true)
	case KindSetTempo:
		c.Number = g.number(MinTempo, MaxTempo)
	case KindSetSwing:
		c.Number = g.number(MinSwing, MaxSwing)
	case KindSetTrackVolume:
		c.Number = g.number(0, 1)
	case KindSetTrackTranspose:
		c.Number = g.number(MinTranspose, MaxTranspose)
	case KindSetTrackStepCount:
		c.Number = g.stepCount()
	case KindMuteTrack, KindSoloTrack:
		c.Flag = rapid.Bool().Draw(g.t, "flag")
	case KindAddTrack:
		c.TrackID = ""
		c.Payload = g.trackJSON()
	case KindSetTrackSample:
		c.SampleID = g.oneOf("sampleId", "kick", "snare", "synth:bass", "", "tone:fm-bell")
		c.TrackName = g.oneOf("trackName", "Kick", "", "Bass ♪", "x\u2028y")
	case KindSetEffects:
		c.Payload = g.effectsJSON()
	case KindSetFMParams:
		c.Payload = g.fmJSON()
	}
}

// session mostly picks a session that exists.
func (g *logGen) session() string {
	ids := g.shadow.SessionIDs()
	if len(ids) == 0 || g.draw("any session?", 5) == 0 {
		return g.oneOf("session", genAnySession...)
	}
	return rapid.SampledFrom(ids).Draw(g.t, "existing session")
}

// newcomer mostly picks a player who is not in the session yet.
func (g *logGen) newcomer(session string) string {
	switch g.draw("newcomer form", 30) {
	case 0:
		return ""
	case 1, 2, 3:
		return g.oneOf("player", genPlayers...)
	}
	var out []string
	for _, p := range genPlayers {
		if sess := g.shadow.Session(session); sess == nil {
			out = append(out, p)
		} else if _, in := sess.Player(p); !in {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return g.oneOf("player", genPlayers...)
	}
	return rapid.SampledFrom(out).Draw(g.t, "newcomer")
}

func (g *logGen) node() string {
	if g.draw("no node?", 20) == 0 {
		return ""
	}
	return g.oneOf("node", genNodes...)
}

// sessionPlayer mostly picks a player who is in the session.
func (g *logGen) sessionPlayer() (string, string) {
	var pairs [][2]string
	for _, id := range g.shadow.SessionIDs() {
		for _, p := range g.shadow.Session(id).Players() {
			pairs = append(pairs, [2]string{id, p.ID})
		}
	}
	if len(pairs) > 0 && g.draw("joined pair?", 8) > 0 {
		p := rapid.SampledFrom(pairs).Draw(g.t, "pair")
		return p[0], p[1]
	}
	return g.session(), g.oneOf("player", genPlayers...)
}

// trackID mostly picks a track of the session.
func (g *logGen) trackID(session string) string {
	if g.draw("unknown track?", 12) == 0 {
		return "no-such-track"
	}
	if sess := g.shadow.Session(session); sess != nil && len(sess.State.Tracks) > 0 && g.draw("pool track?", 5) > 0 {
		return sess.State.Tracks[g.draw("track", len(sess.State.Tracks))].ID
	}
	return g.oneOf("trackId", genTrackIDs...)
}

// epoch is delta away from the node's replicated epoch (one past it if that
// incarnation was reaped).
func (g *logGen) epoch(node string, delta int) uint64 {
	e, reaped := g.shadow.NodeEpoch(node)
	if reaped {
		e++
	}
	return uint64(max(int64(e)+int64(delta), 0))
}

func (g *logGen) name() *string {
	if g.draw("name nil?", 4) == 0 {
		return nil
	}
	n := g.oneOf("name", "Jam", "", "  Night Drive  ", "🎵 Beat ♪", "<script>x", "\u00a0\u2028",
		strings.Repeat("a", 99)+"🎵", strings.Repeat("é", 130))
	return &n
}

// number draws a finite float near [lo, hi], the edges and far outside. It
// never draws NaN or ±Inf: the log is JSON, which has neither.
func (g *logGen) number(lo, hi float64) float64 {
	switch g.draw("number form", 4) {
	case 0:
		return rapid.Float64Range(lo-50, hi+50).Draw(g.t, "number")
	case 1:
		return float64(rapid.IntRange(int(lo)-5, int(hi)+5).Draw(g.t, "int number"))
	case 2:
		return rapid.SampledFrom([]float64{lo, hi, lo - 1e-9, hi + 1e-9, (lo + hi) / 2,
			-2.5, 2.5, 0.5, 1e308, -1e308, 5e-324, math.Copysign(0, -1)}).Draw(g.t, "edge number")
	default:
		return rapid.Float64Range(lo, hi).Draw(g.t, "in-range number")
	}
}

func (g *logGen) stepCount() float64 {
	return rapid.SampledFrom([]float64{4, 8, 12, 16, 24, 32, 64, 96, 128, 0, 1, 7.5, 15, 127, 129, 200, -16}).
		Draw(g.t, "stepCount")
}

// jsonNum writes a finite float as JSON.
func jsonNum(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func jsonStr(s string) string {
	b, err := json.Marshal(s)
	if err != nil {
		panic(err) // a string always marshals
	}
	return string(b)
}

// jsonObject writes the members in the given order; keys may repeat.
func jsonObject(members [][2]string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, m := range members {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(jsonStr(m[0]))
		b.WriteByte(':')
		b.WriteString(m[1])
	}
	b.WriteByte('}')
	return b.String()
}

// wrongJSON is a value of some type, usually the wrong one for the key it lands on.
func (g *logGen) wrongJSON() string {
	return g.oneOf("wrong value", `"str"`, `""`, `5`, `-0`, `true`, `false`, `[]`, `{}`, `[1,"a",null]`, `{"k":"v"}`, `"16"`)
}

// rawJSON is a whole payload of a random shape.
func (g *logGen) rawJSON() json.RawMessage {
	return json.RawMessage(g.oneOf("raw payload", `null`, `5`, `"x"`, `[]`, `{}`, `true`, `[{"id":"t1"}]`, `{"id":""}`, `{"id":"t1"}`, ` { "pitch" : 1 } `))
}

// field adds key to members: absent, null, of the wrong type, or valid().
func (g *logGen) field(members *[][2]string, key string, valid func() string) {
	switch g.draw(key+" form", 10) {
	case 0, 1:
	case 2:
		*members = append(*members, [2]string{key, "null"})
	case 3:
		*members = append(*members, [2]string{key, g.wrongJSON()})
	default:
		*members = append(*members, [2]string{key, valid()})
	}
}

// shuffled returns the members in a drawn order, sometimes with one key
// repeated (JSON.parse keeps the last).
func (g *logGen) shuffled(members [][2]string) string {
	members = rapid.Permutation(members).Draw(g.t, "order")
	if len(members) > 0 && g.draw("duplicate key?", 10) == 0 {
		dup := members[g.draw("duplicate", len(members))]
		members = append(members, [2]string{dup[0], g.wrongJSON()})
	}
	return jsonObject(members)
}

// trackJSON is a track as add_track carries it. Its id is mostly one of
// genTrackIDs (so that it collides with tracks that exist), sometimes one of
// twenty more (so that sessions can fill up to 16 tracks), sometimes missing,
// empty or of the wrong type.
func (g *logGen) trackJSON() json.RawMessage {
	switch g.draw("id form", 12) {
	case 0:
		return g.trackJSONWithID("")
	case 1:
		return g.trackJSONWithID(`""`)
	case 2:
		return g.trackJSONWithID(g.wrongJSON())
	case 3, 4, 5:
		return g.trackJSONWithID(jsonStr("t" + strconv.Itoa(rapid.IntRange(4, 24).Draw(g.t, "more id"))))
	default:
		return g.trackJSONWithID(jsonStr(g.oneOf("id", genTrackIDs...)))
	}
}

// trackJSONWithID is a track with the given raw JSON id ("" leaves it out).
func (g *logGen) trackJSONWithID(id string) json.RawMessage {
	var m [][2]string
	if id != "" {
		m = append(m, [2]string{"id", id})
	}
	g.field(&m, "name", func() string { return jsonStr(g.oneOf("track name", "Kick", "", "Café ♪ 🎵 <&>")) })
	g.field(&m, "sampleId", func() string { return jsonStr(g.oneOf("sample", "kick", "snare", "synth:bass", "sampled:piano")) })
	g.field(&m, "steps", g.stepsJSON)
	g.field(&m, "parameterLocks", g.locksJSON)
	g.field(&m, "volume", func() string { return jsonNum(g.number(0, 1)) })
	g.field(&m, "muted", func() string { return strconv.FormatBool(rapid.Bool().Draw(g.t, "muted")) })
	g.field(&m, "soloed", func() string { return strconv.FormatBool(rapid.Bool().Draw(g.t, "soloed")) })
	g.field(&m, "playbackMode", func() string { return jsonStr(g.oneOf("mode", "oneshot", "gate", "loop")) })
	g.field(&m, "transpose", func() string { return jsonNum(g.number(MinTranspose, MaxTranspose)) })
	g.field(&m, "stepCount", func() string { return jsonNum(g.stepCount()) })
	g.field(&m, "fmParams", func() string { return string(g.fmJSON()) })
	if g.draw("extra key?", 3) == 0 {
		m = append(m, [2]string{g.oneOf("extra key", "x-color", "swingOverride", "__proto__"), `{"a":[1,2.5,"b"],"n":null}`})
	}
	return json.RawMessage(g.shuffled(m))
}

// stepsJSON is an array of 0..130 entries (mostly booleans, some truthy or
// falsy values of other types), or an object with numeric keys.
func (g *logGen) stepsJSON() string {
	if g.draw("steps as object?", 8) == 0 {
		return `{"0":true,"4":1,"x":true,"127":"on","200":true,"03":true}`
	}
	n := rapid.SampledFrom([]int{0, 4, 16, 64, 128, 130}).Draw(g.t, "steps len")
	bits := rapid.Uint64().Draw(g.t, "steps bits")
	odd := g.draw("odd step values?", 4) == 0
	vals := make([]string, n)
	for i := range vals {
		on := bits&(1<<(uint(i*7)%64)) != 0
		switch {
		case odd && i%5 == 1:
			vals[i] = g.oneOf("step value", `1`, `0`, `"x"`, `""`, `null`, `{}`)
		default:
			vals[i] = strconv.FormatBool(on)
		}
	}
	return "[" + strings.Join(vals, ",") + "]"
}

// locksJSON is a parameterLocks array of 0..130 entries with a few locks, or an
// object with numeric keys.
func (g *logGen) locksJSON() string {
	if g.draw("locks as object?", 8) == 0 {
		return `{"3":{"pitch":2},"5":{"volume":0.5,"pitch":-1},"x":{"pitch":1}}`
	}
	n := rapid.SampledFrom([]int{0, 16, 128, 130}).Draw(g.t, "locks len")
	vals := make([]string, n)
	for i := range vals {
		vals[i] = "null"
	}
	for k := g.draw("locks", 4); k > 0 && n > 0; k-- {
		vals[g.draw("lock at", n)] = string(g.lockJSON(false))
	}
	return "[" + strings.Join(vals, ",") + "]"
}

// lockJSON is a parameter lock: both keys in either order, one key, none,
// a stray key (strict set_parameter_lock refuses it), a wrong type, or null.
func (g *logGen) lockJSON(allowNull bool) json.RawMessage {
	p := jsonNum(g.number(-24, 24))
	v := jsonNum(g.number(0, 1))
	forms := []string{
		`{"pitch":` + p + `,"volume":` + v + `}`,
		`{"volume":` + v + `,"pitch":` + p + `}`,
		`{"pitch":` + p + `}`,
		`{"volume":` + v + `}`,
		`{}`,
		`{"pitch":` + p + `,"extra":1}`,
		`{"pitch":"3"}`,
		`{"volume":` + v + `,"volume":0.25}`,
		`5`,
		`[]`,
	}
	if allowNull {
		forms = append(forms, `null`, `null`)
	}
	return json.RawMessage(g.oneOf("lock", forms...))
}

func (g *logGen) fmJSON() json.RawMessage {
	h := jsonNum(g.number(0.5, 10))
	m := jsonNum(g.number(0, 20))
	return json.RawMessage(g.oneOf("fm",
		`{"harmonicity":`+h+`,"modulationIndex":`+m+`}`,
		`{"modulationIndex":`+m+`,"harmonicity":`+h+`}`,
		`{"harmonicity":`+h+`}`,
		`{"harmonicity":"2","modulationIndex":`+m+`}`,
		`{"harmonicity":`+h+`,"modulationIndex":`+m+`,"extra":true}`,
		`[]`, `null`, `7`,
	))
}

func (g *logGen) effectsJSON() json.RawMessage {
	if g.draw("effects garbage?", 10) == 0 {
		return g.rawJSON()
	}
	wet := func(label string) string {
		switch g.draw(label+" wet form", 8) {
		case 0:
			return "" // missing: set_effects is then ignored
		case 1:
			return `"wet":"0.5"`
		default:
			return `"wet":` + jsonNum(g.number(0, 1))
		}
	}
	section := func(key string, fields ...string) [2]string {
		var parts []string
		for _, f := range fields {
			if f != "" && g.draw(key+" field?", 5) > 0 {
				parts = append(parts, f)
			}
		}
		if w := wet(key); w != "" {
			parts = append(parts, w)
		}
		parts = rapid.Permutation(parts).Draw(g.t, key+" order")
		return [2]string{key, "{" + strings.Join(parts, ",") + "}"}
	}
	m := [][2]string{
		section("reverb", `"decay":`+jsonNum(g.number(0.1, 10))),
		section("delay", `"time":`+jsonStr(g.oneOf("delay time", "8n", "16t", "4m", "3n", "")), `"feedback":`+jsonNum(g.number(0, 0.95))),
		section("chorus", `"frequency":`+jsonNum(g.number(0.1, 10)), `"depth":`+jsonNum(g.number(0, 1))),
		section("distortion", `"amount":`+jsonNum(g.number(0, 1))),
	}
	return json.RawMessage(jsonObject(rapid.Permutation(m).Draw(g.t, "effects order")))
}

// stateJSON is a state object as create and replace_state carry it: usually
// a few tracks, sometimes more than 16 (which ValidateState would refuse, but
// the FSM must still survive), and every top-level field absent, null, of the
// wrong type or valid.
func (g *logGen) stateJSON() json.RawMessage {
	if g.draw("state garbage?", 15) == 0 {
		return json.RawMessage(g.oneOf("state garbage", `null`, `[]`, `"state"`, `5`, `{}`))
	}
	var m [][2]string
	tracks := func() string {
		n := g.draw("tracks", 5)
		many := g.draw("many tracks?", 8) == 0
		if many {
			// 16 is the interesting edge: full, but not beyond.
			n = rapid.SampledFrom([]int{14, 15, 16, 16, 16, 17, 18}).Draw(g.t, "many")
		}
		ts := make([]string, n)
		for i := range ts {
			switch {
			case g.draw("track not object?", 20) == 0:
				ts[i] = g.wrongJSON()
			case many && g.draw("distinct id?", 8) > 0:
				ts[i] = string(g.trackJSONWithID(jsonStr("m" + strconv.Itoa(i))))
			default:
				ts[i] = string(g.trackJSON())
			}
		}
		return "[" + strings.Join(ts, ",") + "]"
	}
	if g.draw("tracks form", 4) > 0 {
		m = append(m, [2]string{"tracks", tracks()})
	} else {
		g.field(&m, "tracks", tracks)
	}
	g.field(&m, "tempo", func() string { return jsonNum(g.number(MinTempo, MaxTempo)) })
	g.field(&m, "swing", func() string { return jsonNum(g.number(MinSwing, MaxSwing)) })
	g.field(&m, "version", func() string { return g.oneOf("version", "1", "2", "0.5") })
	g.field(&m, "effects", func() string { return string(g.effectsJSON()) })
	if g.draw("extra key?", 3) == 0 {
		m = append(m, [2]string{"x-meta", `{"by":"test","tags":["a","b"]}`})
	}
	return json.RawMessage(g.shuffled(m))
}
