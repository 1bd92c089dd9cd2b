package transport

import (
	"bytes"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts what crosses the client API: WebSocket messages in and out
// by type, write timeouts, and what each limit refused. NewMetrics makes one
// to register with a prometheus registry; an APIConfig without one keeps no
// figures, at the cost of a call to an empty method per figure.
//
// Every labelled child is resolved when the Metrics is made, so counting a
// message never looks up a label or allocates, and the label sets are fixed:
// a client cannot add one. Safe for concurrent use.
type Metrics struct {
	received      [numReceivedTypes]counter
	sent          [numSentTypes]counter
	rateLimited   counter
	writeTimeouts counter
	connCap       counter
	createLimited counter

	collectors []prometheus.Collector // nil for the no-op Metrics
}

// counter is what the API counts through: prometheus's counters satisfy it,
// and so does nop.
type counter interface{ Inc() }

// nop counts nothing.
type nop struct{}

func (nop) Inc() {}

// receivedTypes label chorus_ws_messages_received_total: the 21 client
// message types (PROTOCOL.md §3.2), then what is not one of them.
var receivedTypes = [numReceivedTypes]string{
	"toggle_step", "set_tempo", "set_swing", "mute_track", "solo_track", "set_parameter_lock",
	"add_track", "delete_track", "clear_track", "set_track_sample", "set_track_volume",
	"set_track_transpose", "set_track_step_count", "set_effects", "set_fm_params",
	"play", "stop", "state_hash", "request_snapshot", "clock_sync_request", "cursor_move",
	recvPing:     "ping",      // the text keepalive
	recvUnknown:  "unknown",   // JSON with no type, an unknown type, or not an object: ignored
	recvInvalid:  "invalid",   // not JSON
	recvTooLarge: "too_large", // over MaxBody
}

const (
	recvPing = iota + 21
	recvUnknown
	recvInvalid
	recvTooLarge
	numReceivedTypes
)

// receivedType is t's index in receivedTypes; t is a type decodeFrame
// returned, or anything else (unknown).
func receivedType(t string) int {
	switch t {
	case "toggle_step":
		return 0
	case "set_tempo":
		return 1
	case "set_swing":
		return 2
	case "mute_track":
		return 3
	case "solo_track":
		return 4
	case "set_parameter_lock":
		return 5
	case "add_track":
		return 6
	case "delete_track":
		return 7
	case "clear_track":
		return 8
	case "set_track_sample":
		return 9
	case "set_track_volume":
		return 10
	case "set_track_transpose":
		return 11
	case "set_track_step_count":
		return 12
	case "set_effects":
		return 13
	case "set_fm_params":
		return 14
	case "play":
		return 15
	case "stop":
		return 16
	case "state_hash":
		return 17
	case "request_snapshot":
		return 18
	case "clock_sync_request":
		return 19
	case "cursor_move":
		return 20
	}
	return recvUnknown
}

// sentTypes label chorus_ws_messages_sent_total: the 25 server message types
// (PROTOCOL.md §3.3), resume (a reconnect with ?since=), the text pong, and
// other for anything else.
var sentTypes = [numSentTypes]string{
	"snapshot", "step_toggled", "tempo_changed", "swing_changed", "track_muted", "track_soloed",
	"parameter_lock_set", "track_added", "track_deleted", "track_cleared", "track_sample_set",
	"track_volume_set", "track_transpose_set", "track_step_count_set", "effects_changed",
	"fm_params_changed", "playback_started", "playback_stopped", "player_joined", "player_left",
	"state_mismatch", "state_hash_match", "clock_sync_response", "cursor_moved", "error",
	sentResume: "resume",
	sentPong:   "pong",
	sentOther:  "other",
}

const (
	sentResume = iota + 25
	sentPong
	sentOther
	numSentTypes
)

// typePrefix starts every JSON frame the server sends.
const typePrefix = `{"type":"`

// sentType is the index in sentTypes of the frame's type, read from the
// frame's start without decoding it.
func sentType(frame []byte) int {
	if !bytes.HasPrefix(frame, []byte(typePrefix)) {
		if string(frame) == "pong" {
			return sentPong
		}
		return sentOther
	}
	rest := frame[len(typePrefix):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 {
		return sentOther
	}
	switch string(rest[:end]) {
	case "snapshot":
		return 0
	case "step_toggled":
		return 1
	case "tempo_changed":
		return 2
	case "swing_changed":
		return 3
	case "track_muted":
		return 4
	case "track_soloed":
		return 5
	case "parameter_lock_set":
		return 6
	case "track_added":
		return 7
	case "track_deleted":
		return 8
	case "track_cleared":
		return 9
	case "track_sample_set":
		return 10
	case "track_volume_set":
		return 11
	case "track_transpose_set":
		return 12
	case "track_step_count_set":
		return 13
	case "effects_changed":
		return 14
	case "fm_params_changed":
		return 15
	case "playback_started":
		return 16
	case "playback_stopped":
		return 17
	case "player_joined":
		return 18
	case "player_left":
		return 19
	case "state_mismatch":
		return 20
	case "state_hash_match":
		return 21
	case "clock_sync_response":
		return 22
	case "cursor_moved":
		return 23
	case "error":
		return 24
	case "resume":
		return sentResume
	}
	return sentOther
}

// NewMetrics makes the client API's metrics, ready to register with a
// prometheus registry through Collectors. Give each API its own.
func NewMetrics() *Metrics {
	m := &Metrics{}
	received := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chorus_ws_messages_received_total",
		Help: "Client WebSocket messages read, by type: one of the 21 protocol types, ping (the text keepalive), unknown (ignored), invalid (not JSON) or too_large. Messages refused by the rate limit are counted in chorus_ws_rate_limited_messages_total instead.",
	}, []string{"type"})
	for i, t := range receivedTypes {
		m.received[i] = received.WithLabelValues(t)
	}
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "chorus_ws_messages_sent_total",
		Help: "WebSocket messages written to clients, by type: one of the 25 protocol types, resume, pong (the text keepalive's answer) or other. A broadcast counts once per socket.",
	}, []string{"type"})
	for i, t := range sentTypes {
		m.sent[i] = sent.WithLabelValues(t)
	}
	rate := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chorus_ws_rate_limited_messages_total",
		Help: "Client WebSocket messages refused by the per-socket rate limit (--ws-rate): the first in 5 s is answered with an error, the next closes the socket with 1008.",
	})
	m.rateLimited = rate
	timeouts := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chorus_ws_write_timeouts_total",
		Help: "WebSocket frames that could not be written within the write timeout: a client that stopped reading. Each closes its socket.",
	})
	m.writeTimeouts = timeouts
	connCap := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chorus_ws_conn_cap_refused_total",
		Help: "WebSocket upgrades refused with 429 by the per-IP connection cap (--max-conns-per-ip).",
	})
	m.connCap = connCap
	create := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "chorus_create_rate_limited_total",
		Help: "Session creates (POST /api/sessions) refused with 429 by the per-IP create rate limit (--create-rate).",
	})
	m.createLimited = create
	m.collectors = []prometheus.Collector{received, sent, rate, timeouts, connCap, create}
	return m
}

// nopMetrics counts nothing: what an API without APIConfig.Metrics uses.
func nopMetrics() *Metrics {
	m := &Metrics{rateLimited: nop{}, writeTimeouts: nop{}, connCap: nop{}, createLimited: nop{}}
	for i := range m.received {
		m.received[i] = nop{}
	}
	for i := range m.sent {
		m.sent[i] = nop{}
	}
	return m
}

// Collectors returns the metrics, to register with a prometheus registry.
func (m *Metrics) Collectors() []prometheus.Collector { return m.collectors }
