package e2e

import (
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
)

// TestKafkaOutageLosesNothing stops the broker while the app runs: orders are
// still accepted (they wait in the outbox), and once the broker is back on the
// same address with its data, every order completes. It needs to stop and start
// the broker itself, so it runs on the embedded one.
func TestKafkaOutageLosesNothing(t *testing.T) {
	t.Parallel()
	if testenvRealKafka() {
		t.Skip("stops and restarts the broker: runs in the embedded pass")
	}
	addr := freeAddr(t)
	dataDir := filepath.Join(t.TempDir(), "kafka")
	broker, err := embedded.Start(addr, dataDir, 4)
	if err != nil {
		t.Fatal(err)
	}
	e := engines{brokers: []string{addr}, databaseURL: "sqlite://" + filepath.Join(t.TempDir(), "eventfn.db")}
	cfg := e.config(t, nil)
	a := startApp(t, cfg)
	before := a.placeOrder(t, "before@example.com")
	a.waitEmailed(t, []string{before}, 60*time.Second)

	broker.Close()
	var during []string
	var slowest time.Duration
	for i := 0; i < 5; i++ {
		start := time.Now()
		id, status, body := a.tryPlaceOrder("during@example.com")
		if status != http.StatusCreated {
			t.Fatalf("order during the outage: %d %s", status, body)
		}
		d := time.Since(start)
		slowest = max(slowest, d)
		if d > 10*time.Second {
			t.Errorf("order during the outage took %s", d)
		}
		during = append(during, id)
	}
	t.Logf("orders during the outage: slowest took %s", slowest)
	if s := a.orderStatus(t, during[0]); s != "placed" {
		t.Fatalf("order %s is %q with the broker down", during[0], s)
	}

	broker, err = embedded.Start(addr, dataDir, 4)
	if err != nil {
		t.Fatalf("restart the broker on %s: %v", addr, err)
	}
	t.Cleanup(broker.Close)
	a.waitEmailed(t, during, 120*time.Second)
	if got := count(t, cfg, `SELECT COUNT(*) FROM payments`); got != 6 {
		t.Errorf("payments = %d, want 6", got)
	}
}

func testenvRealKafka() bool { return len(testenv.KafkaBrokers()) > 0 }

// freeAddr reserves a loopback port and releases it for the broker to take.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}
