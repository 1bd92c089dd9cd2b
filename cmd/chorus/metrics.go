package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"chorus/node"
	"chorus/transport"
)

// metricsHandler serves GET /metrics from a registry of the node's own:
// its raft state and indexes, sockets, sessions and snapshot pauses, read
// when Prometheus scrapes; what the node and its API record on the write
// path (nm, tm); and Go's process and runtime metrics.
func metricsHandler(n *node.Node, api *transport.API, nm *node.Metrics, tm *transport.Metrics) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&nodeCollector{n: n, api: api},
	)
	reg.MustRegister(nm.Collectors()...)
	reg.MustRegister(tm.Collectors()...)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// nodeCollector reads the node's figures at scrape time, from one Status so
// that the indexes agree with each other.
type nodeCollector struct {
	n   *node.Node
	api *transport.API
}

var (
	descState     = prometheus.NewDesc("chorus_raft_state", "1 for the node's raft state (leader, follower, candidate, shutdown), 0 for the others.", []string{"state"}, nil)
	descTerm      = prometheus.NewDesc("chorus_raft_term", "The node's current raft term.", nil, nil)
	descApplied   = prometheus.NewDesc("chorus_raft_applied_index", "The last log index the node's state machine applied.", nil, nil)
	descCommit    = prometheus.NewDesc("chorus_raft_commit_index", "The last log index the node knows to be committed.", nil, nil)
	descLastLog   = prometheus.NewDesc("chorus_raft_last_log_index", "The last index in the node's log.", nil, nil)
	descMembers   = prometheus.NewDesc("chorus_raft_members", "Members of the raft configuration, by voter or nonvoter.", []string{"suffrage"}, nil)
	descHasLeader = prometheus.NewDesc("chorus_raft_has_leader", "1 when the node knows a leader.", nil, nil)
	descSockets   = prometheus.NewDesc("chorus_sockets", "Open WebSockets on this node.", nil, nil)
	descSessions  = prometheus.NewDesc("chorus_sessions", "Sessions in the node's state.", nil, nil)
	descPause     = prometheus.NewDesc("chorus_snapshot_pause_seconds", "How long the last raft snapshot held up the state machine (last) and the longest since start (max).", []string{"which"}, nil)
)

func (c *nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descTerm, descApplied, descCommit, descLastLog, descMembers, descHasLeader, descSockets, descSessions, descPause} {
		ch <- d
	}
}

func (c *nodeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.n.Status()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	for _, s := range []string{"leader", "follower", "candidate", "shutdown"} {
		gauge(descState, boolFloat(st.State == s), s)
	}
	gauge(descTerm, float64(st.Term))
	gauge(descApplied, float64(st.AppliedIndex))
	gauge(descCommit, float64(st.CommitIndex))
	gauge(descLastLog, float64(st.LastLogIndex))
	voters := 0
	for _, m := range st.Members {
		if m.Voter {
			voters++
		}
	}
	gauge(descMembers, float64(voters), "voter")
	gauge(descMembers, float64(len(st.Members)-voters), "nonvoter")
	gauge(descHasLeader, boolFloat(st.Leader.ID != ""))
	gauge(descSockets, float64(c.api.Sockets()))
	gauge(descSessions, float64(c.n.API().SessionCount()))
	last, longest := c.n.SnapshotPauses()
	gauge(descPause, last.Seconds(), "last")
	gauge(descPause, longest.Seconds(), "max")
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
