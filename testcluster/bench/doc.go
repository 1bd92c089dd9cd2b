// Package bench is the load generator behind chorus bench: it starts real
// chorus serve processes (or targets a running cluster), drives WebSocket
// players against them and measures throughput, end-to-end latency, fan-out,
// join and resume costs, memory, failover and restart, next to baselines
// measured in the same run (bare hashicorp/raft on the same stores, and one
// chorus node without replication).
package bench
