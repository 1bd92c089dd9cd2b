package node

import (
	"testing"

	"go.uber.org/goleak"
)

// A node that closes while raft still holds a request it will never answer
// (hashicorp/raft#498) leaves the goroutine of await blocked on that future;
// see Node.await. Nothing else may outlive the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreAnyFunction("chorus/node.(*Node).await.func1"))
}
