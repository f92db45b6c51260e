// Package readmecheck follows the README's "Writing a handler" steps on a copy
// of the repository: the handler shown there, added as one new file, must be
// found by `go generate ./...` and run without editing any other file.
package readmecheck

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestREADMEHandlerWorksAsWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a copy of the repository")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// The first Go block after "## Writing a handler", un-indented.
	section := string(readme)[strings.Index(string(readme), "## Writing a handler"):]
	m := regexp.MustCompile("(?s)```go\n(.*?)```").FindStringSubmatch(section)
	if m == nil {
		t.Fatal("no Go block in the README's Writing a handler section")
	}
	var src strings.Builder
	for _, line := range strings.Split(m[1], "\n") {
		src.WriteString(strings.TrimPrefix(line, "   ") + "\n")
	}

	dir := t.TempDir()
	copyRepo(t, root, dir)
	if err := os.WriteFile(filepath.Join(dir, "handlers", "refund.go"), []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, dir, "go", "generate", "./...")
	out := run(t, dir, "go", "run", ".", "handlers")
	if !strings.Contains(out, "refund-payment") || !strings.Contains(out, "refund.requested") {
		t.Fatalf("the README's handler is not registered:\n%s", out)
	}
	// The generated code compiles and the new handler passes the runtime's checks.
	run(t, dir, "go", "vet", "./handlers/", "./wiring/")

	// Step 5: the README's test of the handler passes as written.
	blocks := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(section, 2)
	if len(blocks) < 2 || !strings.Contains(blocks[1][1], "package handlers_test") {
		t.Fatal("no test of the handler in the README's Writing a handler section")
	}
	var test strings.Builder
	for _, line := range strings.Split(blocks[1][1], "\n") {
		test.WriteString(strings.TrimPrefix(line, "   ") + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "handlers", "refund_test.go"), []byte(test.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := run(t, dir, "go", "test", "-count=1", "-run", "TestRefundPayment", "-v", "./handlers/"); !strings.Contains(out, "--- PASS: TestRefundPaymentMarksTheOrderRefunded") {
		t.Fatalf("the README's test did not pass:\n%s", out)
	}
}

// copyRepo copies the files git tracks (or, outside a checkout, the tree).
func copyRepo(t *testing.T, from, to string) {
	t.Helper()
	out, err := exec.Command("git", "-C", from, "ls-files", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for _, rel := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if rel == "" || strings.HasPrefix(rel, "handlers/refund.go") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(from, rel))
		if os.IsNotExist(err) {
			continue // deleted in the work tree
		}
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(to, rel)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, buf.String())
	}
	return buf.String()
}

// TestNewHandlerCompilesAndItsTestPasses runs `eventfn new handler` on a copy
// of the repository, for a handler of new event types and one of an existing
// type: after go generate, both are registered, the code vets, and their
// generated tests pass untouched.
func TestNewHandlerCompilesAndItsTestPasses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a copy of the repository")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	copyRepo(t, root, dir)
	run(t, dir, "go", "build", "-o", "eventfn-bin", ".")
	bin := filepath.Join(dir, "eventfn-bin")
	out := run(t, dir, bin, "new", "handler", "refund-payment", "--on", "refund.requested", "--emits", "refund.completed,payment.confirmed")
	out += run(t, dir, bin, "new", "handler", "audit-order", "--on", "order.placed", "--emits", "order.audited")
	for _, f := range []string{"handlers/refund_payment.go", "handlers/refund_payment_test.go", "handlers/audit_order.go", "handlers/audit_order_test.go"} {
		if !strings.Contains(out, f) {
			t.Errorf("did not write %s:\n%s", f, out)
		}
	}
	run(t, dir, "go", "generate", "./...")
	run(t, dir, "go", "vet", "./...")
	listed := run(t, dir, "go", "run", ".", "handlers")
	for _, want := range []string{"refund-payment", "refund.requested", "audit-order", "order.audited"} {
		if !strings.Contains(listed, want) {
			t.Errorf("handlers does not list %s:\n%s", want, listed)
		}
	}
	tested := run(t, dir, "go", "test", "-count=1", "-v", "-run", "TestRefundPayment|TestAuditOrder", "./handlers/")
	for _, want := range []string{"--- PASS: TestRefundPayment", "--- PASS: TestAuditOrder"} {
		if !strings.Contains(tested, want) {
			t.Errorf("%s missing:\n%s", want, tested)
		}
	}
	// A second handler of the same name is refused, and nothing is written.
	cmd := exec.Command(bin, "new", "handler", "refund-payment", "--on", "refund.requested")
	cmd.Dir = dir
	if msg, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(msg), "exists already") {
		t.Errorf("a duplicate handler: %v %s", err, msg)
	}
}
