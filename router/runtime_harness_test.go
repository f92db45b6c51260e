package router_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// testRuntime is a router.Runtime with handlers of a test's own, on real
// engines when the environment names them and embedded ones otherwise.
type testRuntime struct {
	cfg    configs.Config
	store  store.Config
	db     *store.DB
	outbox *router.Outbox
	rt     *router.Runtime
	reg    *prometheus.Registry
	logs   *testenv.LogBuffer
	stop   func()
}

func startRuntime(t *testing.T, edit func(*configs.Config), handlers ...runtime.Handler) *testRuntime {
	t.Helper()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = t.TempDir()
	cfg.Kafka.Embedded = false
	cfg.Kafka.TopicPrefix = testenv.UniqueName("rt") + "."
	testenv.DeleteTopicsAtCleanup(t, cfg.Kafka.TopicPrefix) // after the runtime stops: cleanups run last first
	cfg.Kafka.Brokers = testBrokers(t)
	cfg.Database.URL = "sqlite://" + filepath.Join(cfg.DataDir, "rt.db")
	if u := testenv.DatabaseURL(); u != "" {
		cfg.Database.URL = testenv.PostgresSchema(t, u)
	}
	if edit != nil {
		edit(&cfg)
	}
	sc := store.Config{Driver: store.SQLite, SQLitePath: strings.TrimPrefix(cfg.Database.URL, "sqlite://")}
	if strings.HasPrefix(cfg.Database.URL, "postgres") {
		sc = store.Config{Driver: store.Postgres, URL: cfg.Database.URL, MaxOpenConns: 8}
	}
	ctx := context.Background()
	db, err := store.Open(ctx, sc)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testenv.LogBuffer{}
	var w io.Writer = logs
	logger := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	outbox := router.NewOutbox(db, cfg, watermill.NopLogger{})
	reg := prometheus.NewRegistry()
	rt, err := router.New(cfg, db, outbox, handlers, reg, logger)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- rt.Run(runCtx) }()
	tr := &testRuntime{cfg: cfg, store: sc, db: db, outbox: outbox, rt: rt, reg: reg, logs: logs}
	var once sync.Once
	tr.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("runtime stopped with %v\n%s", err, logs.String())
				}
			case <-time.After(60 * time.Second):
				t.Errorf("runtime did not stop within 60s\n%s", logs.String())
			}
			_ = db.Close()
		})
	}
	t.Cleanup(tr.stop)
	waitUntil(t, "the runtime ready", 60*time.Second, func() bool { return rt.Ready(ctx) == nil })
	return tr
}

// emit commits events through the outbox, as the HTTP ingress does.
func (tr *testRuntime) emit(t *testing.T, events ...runtime.Event) {
	t.Helper()
	if err := tr.outbox.Transact(context.Background(), func(ctx context.Context, tx runtime.Tx) error {
		return tx.Emit(ctx, events...)
	}); err != nil {
		t.Fatal(err)
	}
}

// records reads topic (without the test's prefix) from the start until want
// records arrived.
func (tr *testRuntime) records(t *testing.T, eventType string, want int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(tr.cfg.Kafka.Brokers...), kgo.ConsumeTopics(tr.cfg.Kafka.Topic(eventType)),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []*kgo.Record
	for len(got) < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records of %s\n%s", len(got), want, eventType, tr.logs.String())
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, r) })
	}
	return got
}

func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reopen opens the runtime's database again, for checks after it stopped.
func reopen(t *testing.T, tr *testRuntime) *store.DB {
	t.Helper()
	db, err := store.Open(context.Background(), tr.store)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// produceEvent writes ev straight to its Kafka topic as a CloudEvent, as a
// producer other than eventfn would. An extra header replaces one of the
// same key.
func produceEvent(t *testing.T, tr *testRuntime, ev runtime.Event, extra ...kgo.RecordHeader) {
	t.Helper()
	payload, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	rec := &kgo.Record{Topic: tr.cfg.Kafka.Topic(ev.EventType()), Value: payload, Headers: []kgo.RecordHeader{
		{Key: "ce_id", Value: []byte(testenv.UniqueName("ev-"))},
		{Key: "ce_type", Value: []byte(ev.EventType())},
		{Key: "ce_source", Value: []byte("test")},
		{Key: "ce_specversion", Value: []byte("1.0")},
	}}
	for _, h := range extra {
		if i := slices.IndexFunc(rec.Headers, func(r kgo.RecordHeader) bool { return r.Key == h.Key }); i >= 0 {
			rec.Headers[i] = h
		} else {
			rec.Headers = append(rec.Headers, h)
		}
	}
	if k, ok := ev.(runtime.Keyed); ok {
		rec.Key = []byte(k.EventKey())
	}
	// A topic the runtime has just created may not be served yet: retry
	// that until the deadline (franz-go gives up after 4 tries by default).
	cl, err := kgo.NewClient(kgo.SeedBrokers(tr.cfg.Kafka.Brokers...), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, rec).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// countRecords counts the records on an event type's topic.
func countRecords(t *testing.T, tr *testRuntime, eventType string) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(tr.cfg.Kafka.Brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, tr.cfg.Kafka.Topic(eventType))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	ends.Each(func(o kadm.ListedOffset) { n += int(o.Offset) })
	return n
}

// metric returns the value of the counter or gauge name whose labels include
// labels (name=value pairs); 0 when there is none.
func (tr *testRuntime) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := tr.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

// testBrokers is the real Kafka named for tests, or an embedded broker that
// lives as long as the test.
func testBrokers(t *testing.T) []string {
	t.Helper()
	if b := testenv.KafkaBrokers(); len(b) > 0 {
		return b
	}
	b, err := embedded.Start("127.0.0.1:0", "", 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return []string{b.Addr()}
}
