package chaos

import (
	"os"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"chorus/testcluster"
)

// The chorus binary of the multi-process tests, built once by chorusBinary
// and removed when the tests end.
var built struct {
	once      sync.Once
	dir, path string
	err       error
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if built.dir != "" {
			os.RemoveAll(built.dir)
		}
		os.Exit(code)
	}))
}

// chorusBinary builds cmd/chorus on first use and returns its path.
func chorusBinary(tb testing.TB) string {
	tb.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "chorus-chaos-test-")
		if built.err == nil {
			built.path, built.err = testcluster.BuildBinary(built.dir)
		}
	})
	if built.err != nil {
		tb.Fatal(built.err)
	}
	return built.path
}
