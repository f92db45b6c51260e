package wiring_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestWireGenIsFresh fails when wire_gen.go does not match wire.go and the
// providers: run `go generate ./...`. It runs the Wire version pinned in go.mod.
func TestWireGenIsFresh(t *testing.T) {
	out, err := exec.Command("go", "tool", "wire", "diff", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("wiring/wire_gen.go is stale or Wire failed; run `go generate ./...`:\n%s", out)
	}
	if strings.TrimSpace(string(out)) != "" {
		t.Fatalf("wire diff reported differences:\n%s", out)
	}
}
