package fsm

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestPurity enforces what package fsm may use (STYLE.md §3, DESIGN.md I7):
// the standard library only, and none of its clocks, randomness, network,
// operating system or goroutines.
func TestPurity(t *testing.T) {
	forbidden := map[string]bool{
		"os": true, "net": true, "net/http": true, "time": true, "math/rand": true,
		"math/rand/v2": true, "crypto/rand": true, "sync": true, "syscall": true, "log": true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if strings.Contains(strings.SplitN(path, "/", 2)[0], ".") || strings.HasPrefix(path, "chorus/") {
				t.Errorf("%s imports %s: fsm may import only the standard library", name, path)
			}
			if forbidden[path] {
				t.Errorf("%s imports %s: fsm does no I/O and reads no clock or randomness", name, path)
			}
		}
		if strings.Contains(string(src), "go func") || strings.Contains(string(src), "time.Now") {
			t.Errorf("%s starts a goroutine or reads the clock", name)
		}
		checked++
	}
	if checked < 5 {
		t.Fatalf("checked only %d files; is the test running in the package directory?", checked)
	}
}
