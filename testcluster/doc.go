// Package testcluster runs whole chorus clusters for tests: in-process
// clusters of real nodes (real peer transport on their own 127.0.0.x
// addresses, real bolt files), with kill, graceful stop, restart on the same
// data, a start on an emptied data dir (a replaced machine that is added back),
// and partitions through the peer port's fault hook; clusters of real
// `chorus serve` processes with SIGKILL, SIGTERM and SIGSTOP/SIGCONT; and
// wait helpers such as Eventually.
//
// It must not be imported by fsm, node or transport. Only tests and the
// chorus chaos and bench commands use it, and it drives a cluster only
// through the public API of running nodes.
package testcluster
