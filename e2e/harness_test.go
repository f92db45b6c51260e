// Package e2e is eventfn's end-to-end suite. It runs the real binary's wiring
// against the engines the environment names: real Apache Kafka and PostgreSQL
// when EVENTFN_TEST_KAFKA_BROKERS / EVENTFN_TEST_DATABASE_URL are set, the
// embedded engines (kfake, SQLite) otherwise. The tests are the same either way.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/store"
	"github.com/eventfn/eventfn/wiring"
)

// engines are the Kafka and database one test uses.
type engines struct {
	brokers     []string
	databaseURL string // postgres://... or sqlite://...
	realKafka   bool
	realDB      bool
}

// newEngines names real engines from the environment or starts embedded ones
// that live as long as the test (and so survive an app restart within it).
func newEngines(t *testing.T) engines {
	t.Helper()
	e := engines{brokers: testenv.KafkaBrokers()}
	if len(e.brokers) > 0 {
		e.realKafka = true
	} else {
		b, err := embedded.Start("127.0.0.1:0", "", 4)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		e.brokers = []string{b.Addr()}
	}
	if u := testenv.DatabaseURL(); u != "" {
		e.realDB = true
		e.databaseURL = testenv.PostgresSchema(t, u)
	} else {
		e.databaseURL = "sqlite://" + filepath.Join(t.TempDir(), "eventfn.db")
	}
	return e
}

// kafkaNodes counts the brokers of the cluster.
func (e engines) kafkaNodes(t *testing.T, cfg configs.Config) int {
	t.Helper()
	return len(kafkaClient(t, cfg).Brokers())
}

// config is the test profile pointed at e, with topics and groups of its own.
func (e engines) config(t *testing.T, edit func(*configs.Config)) configs.Config {
	t.Helper()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = t.TempDir()
	cfg.Kafka.Embedded = false
	cfg.Kafka.Brokers = e.brokers
	cfg.Kafka.TopicPrefix = testenv.UniqueName("t") + "."
	testenv.DeleteTopicsAtCleanup(t, cfg.Kafka.TopicPrefix) // after the app stops: cleanups run last first
	if e.realKafka {
		// One node or the three of `ci/services.sh up --cluster` (min ISR 2).
		cfg.Kafka.ReplicationFactor = min(3, e.kafkaNodes(t, cfg)) // cfg.Kafka.Brokers is set above
	}
	cfg.Database.URL = e.databaseURL
	// Fast retries keep failure tests short; the policy logic is the same.
	fast := configs.HandlerPolicy{InitialBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond}
	cfg.Handlers = map[string]configs.HandlerPolicy{"charge-payment": fast, "send-confirmation": fast, "mark-order-emailed": fast}
	if edit != nil {
		edit(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// app is one running eventfn process inside the test.
type app struct {
	*wiring.App
	base    string // http://host:port
	cancel  context.CancelFunc
	done    chan error
	cleanup func()
	logs    *testenv.LogBuffer
}

// startApp builds the app through Wire, runs it, and waits until /readyz says ready.
func startApp(t *testing.T, cfg configs.Config) *app {
	t.Helper()
	return startAppBuiltBy(t, cfg, wiring.BuildApp)
}

// startAppBuiltBy is startApp with another Wire injector of the same shape.
func startAppBuiltBy(t *testing.T, cfg configs.Config, build func(context.Context, wiring.BaseConfig, *slog.Logger) (*wiring.App, func(), error)) *app {
	t.Helper()
	logs := &testenv.LogBuffer{}
	var w io.Writer = logs
	if os.Getenv("EVENTFN_TEST_LOGS") == "1" {
		w = io.MultiWriter(logs, os.Stderr)
	}
	// The configured level when it says more than info (a test that reads
	// debug lines asks for them), else info.
	level, err := cfg.Log.SlogLevel()
	if err != nil || level > slog.LevelInfo {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
	ctx, cancel := context.WithCancel(context.Background())
	built, cleanup, err := build(ctx, wiring.BaseConfig(cfg), logger)
	if err != nil {
		cancel()
		t.Fatalf("build app: %v", err)
	}
	addr, err := built.Listen()
	if err != nil {
		cancel()
		cleanup()
		t.Fatal(err)
	}
	a := &app{App: built, base: "http://" + addr, cancel: cancel, done: make(chan error, 1), cleanup: cleanup, logs: logs}
	go func() { a.done <- built.Run(ctx) }()
	t.Cleanup(func() {
		a.stop(t)
		if t.Failed() { // what the app said is where a failure is explained
			logs := a.logs.String()
			t.Logf("the app's log (last 64 KiB of %d bytes):\n%s", len(logs), logs[max(0, len(logs)-64<<10):])
		}
	})
	eventually(t, 60*time.Second, "app ready", func() (bool, string) {
		select {
		case err := <-a.done:
			a.done <- err
			t.Fatalf("app stopped while starting: %v\n%s", err, logs.String())
		default:
		}
		resp, err := http.Get(a.base + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK, string(body)
	})
	return a
}

// stop shuts the app down gracefully and waits for it; a second call is a no-op.
func (a *app) stop(t *testing.T) {
	t.Helper()
	if err := a.shutdown(t); err != nil {
		t.Errorf("app shutdown: %v\n%s", err, a.logs.String())
	}
}

// shutdown stops the app and returns what Run returned, for a test in which
// a clean stop is not possible (the broker is gone); a second call is a no-op.
func (a *app) shutdown(t *testing.T) error {
	t.Helper()
	if a.cancel == nil {
		return nil
	}
	a.cancel()
	a.cancel = nil
	defer a.cleanup()
	select {
	case err := <-a.done:
		return err
	case <-time.After(60 * time.Second):
		t.Errorf("app did not shut down within 60s\n%s", a.logs.String())
		return nil
	}
}

// eventually polls cond until it holds or timeout passes; never a fixed sleep.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 5 * time.Millisecond
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s: %s", what, timeout, detail)
		}
		time.Sleep(wait) // polling interval, not synchronisation: the condition decides
		if wait < 100*time.Millisecond {
			wait *= 2
		}
	}
}

// placeOrder posts an order and returns its id.
func (a *app) placeOrder(t *testing.T, email string, items ...map[string]any) string {
	t.Helper()
	id, status, body := a.tryPlaceOrder(email, items...)
	if status != http.StatusCreated {
		t.Fatalf("POST /orders: %d %s", status, body)
	}
	return id
}

func (a *app) tryPlaceOrder(email string, items ...map[string]any) (string, int, string) {
	if len(items) == 0 {
		items = []map[string]any{{"sku": "SKU-1", "quantity": 2, "price_cents": 1250}}
	}
	payload, _ := json.Marshal(map[string]any{"customer_email": email, "items": items})
	resp, err := http.Post(a.base+"/orders", "application/json", bytes.NewReader(payload))
	if err != nil {
		return "", 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var out struct {
		ID string `json:"id"`
	}
	_ = json.Unmarshal(body, &out)
	return out.ID, resp.StatusCode, string(body)
}

// get returns the body of a GET request to the app.
func (a *app) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := http.Get(a.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, body)
	}
	return string(body)
}

// readyz asks GET /readyz: its status and body, or 0 and why the request
// failed.
func (a *app) readyz() (int, string) {
	resp, err := http.Get(a.base + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (a *app) orderStatus(t *testing.T, id string) string {
	t.Helper()
	resp, err := http.Get(a.base + "/orders/" + id)
	if err != nil {
		return "unreachable: " + err.Error()
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return fmt.Sprintf("HTTP %d, undecodable", resp.StatusCode)
	}
	return out.Status
}

// waitEmailed waits until every order reports status emailed.
func (a *app) waitEmailed(t *testing.T, ids []string, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, "all orders emailed", func() (bool, string) {
		var pending []string
		for _, id := range ids {
			if s := a.orderStatus(t, id); s != "emailed" {
				pending = append(pending, id+"="+s)
			}
		}
		if len(pending) > 3 {
			pending = append(pending[:3], fmt.Sprintf("and %d more", len(pending)-3))
		}
		return len(pending) == 0, strings.Join(pending, ", ")
	})
}

// count runs a COUNT(*) query on the test database, through a connection of
// the test's own that outlives app restarts.
func count(t *testing.T, cfg configs.Config, query string, args ...any) int {
	t.Helper()
	db := testDB(t, cfg)
	var n int
	if err := db.Read.QueryRowContext(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

var (
	testDBsMu sync.Mutex
	testDBs   = map[string]*store.DB{} // by database URL; each test has its own
)

// testDB opens the test database once per test (migrations run once) and
// closes it when the test ends.
func testDB(t *testing.T, cfg configs.Config) *store.DB {
	t.Helper()
	testDBsMu.Lock()
	defer testDBsMu.Unlock()
	if db, ok := testDBs[cfg.Database.URL]; ok {
		return db
	}
	db := openDB(t, cfg)
	testDBs[cfg.Database.URL] = db
	t.Cleanup(func() {
		testDBsMu.Lock()
		delete(testDBs, cfg.Database.URL)
		testDBsMu.Unlock()
	})
	return db
}

func openDB(t *testing.T, cfg configs.Config) *store.DB {
	t.Helper()
	driver, _ := cfg.Database.Driver()
	db, err := store.Open(context.Background(), store.Config{
		Driver: store.Driver(driver), SQLitePath: cfg.Database.SQLitePath(cfg.DataDir), URL: cfg.Database.URL, MaxOpenConns: 2,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// kafkaClient connects to the test's brokers with eventfn's client settings.
func kafkaClient(t *testing.T, cfg configs.Config) sarama.Client {
	t.Helper()
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// produce writes one raw record, as any Kafka producer could, and returns where it went.
func produce(t *testing.T, client sarama.Client, topic string, key, value []byte, headers map[string]string) (int32, int64) {
	t.Helper()
	p, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	msg := &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(value)}
	if key != nil {
		msg.Key = sarama.ByteEncoder(key)
	}
	for k, v := range headers {
		msg.Headers = append(msg.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	// A topic the app has just created may not be served yet by every
	// broker (its metadata lags the controller, more so on a busy machine):
	// that refusal is retried, as any producer would, until a deadline.
	deadline := time.Now().Add(30 * time.Second)
	for {
		part, off, err := p.SendMessage(msg)
		if err == nil {
			return part, off
		}
		if !(errors.Is(err, sarama.ErrUnknownTopicOrPartition) || errors.Is(err, sarama.ErrLeaderNotAvailable) ||
			errors.Is(err, sarama.ErrNotLeaderForPartition)) || time.Now().After(deadline) {
			t.Fatalf("produce to %s: %v", topic, err)
		}
		time.Sleep(100 * time.Millisecond) // polling; the broker decides
	}
}

// readAll reads every record of topic from the beginning until want records
// matched or timeout passed, and returns the matching ones.
func readAll(t *testing.T, client sarama.Client, topic string, want int, timeout time.Duration, match func(*sarama.ConsumerMessage) bool) []*sarama.ConsumerMessage {
	t.Helper()
	var got []*sarama.ConsumerMessage
	eventually(t, timeout, fmt.Sprintf("%d records on %s", want, topic), func() (bool, string) {
		got = got[:0]
		if err := client.RefreshMetadata(topic); err != nil {
			return false, err.Error()
		}
		parts, err := client.Partitions(topic)
		if err != nil {
			return false, err.Error()
		}
		consumer, err := sarama.NewConsumerFromClient(client)
		if err != nil {
			return false, err.Error()
		}
		defer consumer.Close()
		for _, p := range parts {
			end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				return false, err.Error()
			}
			if end == 0 {
				continue
			}
			pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
			if err != nil {
				return false, err.Error()
			}
		read:
			for {
				select {
				case m := <-pc.Messages():
					if match == nil || match(m) {
						got = append(got, m)
					}
					if m.Offset >= end-1 {
						break read
					}
				case <-time.After(5 * time.Second):
					break read
				}
			}
			pc.Close()
		}
		return len(got) >= want, fmt.Sprintf("%d matched", len(got))
	})
	return got
}

func header(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if h != nil && string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}

// committedOffset is the next offset the group will read from topic/partition.
func committedOffset(t *testing.T, cfg configs.Config, group, topic string, partition int32) int64 {
	t.Helper()
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdmin(cfg.Kafka.Brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {partition}})
	if err != nil {
		return -1
	}
	if b := resp.GetBlock(topic, partition); b != nil {
		return b.Offset
	}
	return -1
}
