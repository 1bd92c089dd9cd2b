// Package chaos is the chaos-test harness behind chorus chaos. It runs a
// cluster of real chorus serve processes (testcluster.Procs), drives a
// recorded workload of WebSocket and HTTP clients against it while a
// nemesis kills, pauses, partitions (iptables) and reconfigures the nodes,
// heals everything, collects every node's final state, and checks the
// history with the checkers of testcluster/check. Run does one run; the
// Report it returns renders as a Jepsen-style summary and an HTML page.
package chaos
