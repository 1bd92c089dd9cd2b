// Package testcluster runs whole chorus clusters for tests. It is not built
// yet: it arrives in a later issue, and until then it holds only this comment
// and its TestMain.
//
// It will own in-process and multi-process clusters, fault injection
// (nemeses: kill, pause, partition), workloads, history recording and
// checkers (porcupine), and wait helpers such as Eventually.
//
// It must not be imported by fsm, node or transport. Only tests and the
// chorus chaos and bench commands use it, and it drives a cluster only
// through the public API of running nodes.
package testcluster
