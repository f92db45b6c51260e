package readmecheck

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond) // polling interval, not synchronisation
	}
}

// TestDevReloadsOnSave runs `eventfn dev` on a copy of the repository: it
// starts eventfn, and when the README's handler is saved into handlers/ it
// regenerates, rebuilds and restarts on the same data, printing the handler it
// added; a file that does not compile is shown while the last good build keeps
// serving; Ctrl-C stops it and its eventfn.
func TestDevReloadsOnSave(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a copy of the repository")
	}
	if testenv.DatabaseURL() != "" || len(testenv.KafkaBrokers()) > 0 {
		t.Skip("the dev loop runs the embedded engines: runs in the embedded pass")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	copyRepo(t, root, dir)
	run(t, dir, "go", "build", "-o", "eventfn-bin", ".")

	httpAddr := freePort(t)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EVENTFN_") {
			env = append(env, kv)
		}
	}
	env = append(env, "EVENTFN_DATA_DIR="+filepath.Join(t.TempDir(), "data"), "EVENTFN_HTTP_ADDR="+httpAddr,
		"EVENTFN_KAFKA_BROKERS="+freePort(t), "EVENTFN_LOG_LEVEL=warn")
	var out, logs testenv.LogBuffer
	dev := exec.Command(filepath.Join(dir, "eventfn-bin"), "dev")
	dev.Dir, dev.Env, dev.Stdout, dev.Stderr = dir, env, &out, &logs
	if err := dev.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- dev.Wait() }()
	t.Cleanup(func() {
		_ = dev.Process.Kill()
		<-done
	})
	saw := func(what string, re *regexp.Regexp, timeout time.Duration) []string {
		t.Helper()
		var m []string
		waitFor(t, what+"\n"+out.String()+logs.String(), timeout, func() bool {
			m = re.FindStringSubmatch(out.String())
			return m != nil
		})
		return m
	}
	saw("dev started eventfn", regexp.MustCompile(`dev: eventfn ready in \S+ with 3 handler\(s\)`), 5*time.Minute)

	base := "http://" + httpAddr
	resp, err := http.Post(base+"/orders", "application/json", strings.NewReader(`{"customer_email":"dev@example.com","items":[{"sku":"tea","quantity":1,"price_cents":300}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var order struct{ ID string }
	_ = json.NewDecoder(resp.Body).Decode(&order)
	resp.Body.Close()
	status := func() string {
		resp, err := http.Get(base + "/orders/" + order.ID)
		if err != nil {
			return err.Error()
		}
		defer resp.Body.Close()
		var o struct{ Status string }
		_ = json.NewDecoder(resp.Body).Decode(&o)
		return o.Status
	}
	waitFor(t, "the order emailed before the reload", time.Minute, func() bool { return status() == "emailed" })

	// Save the README's handler.
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	section := string(readme)[strings.Index(string(readme), "## Writing a handler"):]
	block := regexp.MustCompile("(?s)```go\n(.*?)```").FindStringSubmatch(section)[1]
	var src bytes.Buffer
	for _, line := range strings.Split(block, "\n") {
		src.WriteString(strings.TrimPrefix(line, "   ") + "\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "handlers", "refund.go"), src.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	m := saw("the reload that adds refund-payment", regexp.MustCompile(`dev: reloaded in (\S+) \(saved to ready\): added \[refund-payment\], removed \[\], changed \[\]`), 5*time.Minute)
	t.Logf("save to ready: %s", m[1])
	if s := status(); s != "emailed" {
		t.Errorf("after the reload the order is %q: the data was not kept", s)
	}

	// A file that does not compile: shown, and the running build keeps serving.
	if err := os.WriteFile(filepath.Join(dir, "handlers", "broken.go"), []byte("package handlers\n\nfunc Broken( {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	saw("the failed build reported", regexp.MustCompile(`dev: build failed; the last good build keeps running:\n(?s:.*)broken\.go`), 5*time.Minute)
	resp, err = http.Get(base + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the last good build does not serve: %v %v", err, resp)
	}
	resp.Body.Close()

	_ = dev.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("dev exited with %v\n%s", err, out.String())
		}
		done <- err
	case <-time.After(time.Minute):
		t.Fatalf("dev did not stop within a minute\n%s", out.String())
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("eventfn still answers after dev stopped")
	}
}
