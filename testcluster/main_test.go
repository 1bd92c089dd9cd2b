package testcluster

import (
	"testing"

	"go.uber.org/goleak"
)

// See node's TestMain: a node closed under load may leave the waiter of a
// raft future that raft never answers (hashicorp/raft#498).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("chorus/node.(*Node).await.func1"))
}
