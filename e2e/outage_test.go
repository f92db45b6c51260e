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
	broker, e := startStoppableBroker(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)
	before := a.placeOrder(t, "before@example.com")
	a.waitEmailed(t, []string{before}, 60*time.Second)

	broker.stop()
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

	broker.restart(t)
	a.waitEmailed(t, during, 120*time.Second)
	if got := count(t, cfg, `SELECT COUNT(*) FROM payments`); got != 6 {
		t.Errorf("payments = %d, want 6", got)
	}
}

// stoppableBroker is an embedded broker a test stops and starts again on the
// same address with the same data, as an outage does to a real one.
type stoppableBroker struct {
	addr, dataDir string
	broker        *embedded.Broker
}

// startStoppableBroker starts the broker and names engines that use it with
// a SQLite database of the test's own.
func startStoppableBroker(t *testing.T) (*stoppableBroker, engines) {
	t.Helper()
	b := &stoppableBroker{addr: freeAddr(t), dataDir: filepath.Join(t.TempDir(), "kafka")}
	b.restart(t)
	return b, engines{brokers: []string{b.addr}, databaseURL: "sqlite://" + filepath.Join(t.TempDir(), "eventfn.db")}
}

func (b *stoppableBroker) stop() { b.broker.Close() }

func (b *stoppableBroker) restart(t *testing.T) {
	t.Helper()
	broker, err := embedded.Start(b.addr, b.dataDir, 4)
	if err != nil {
		t.Fatalf("start the broker on %s: %v", b.addr, err)
	}
	b.broker = broker
	t.Cleanup(broker.Close)
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
