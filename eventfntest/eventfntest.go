// Package eventfntest tests handlers in one function call, with no broker.
//
// An Env runs handlers on a throwaway SQLite database, or on a schema of its
// own in the PostgreSQL that EVENTFN_TEST_DATABASE_URL names, with eventfn's
// own migrations and its real inbox, outbox and transaction code: a call
// commits or rolls back exactly as in production, retries follow the
// handler's policy on a fake clock, and a redelivered event is refused by the
// inbox as Kafka's would be.
//
//	env := eventfntest.New(t)
//	res := env.Call(t, handlers.ChargePayment(gateway), handlers.OrderPlaced{OrderID: "o-1", ...})
//	confirmed := eventfntest.Decode[handlers.PaymentConfirmed](t, res.Emitted[0])
//
// A Scenario runs several handlers as a graph: from the events given, it
// delivers every emitted event to the handlers that consume its type until
// nothing is left, and returns every event in the order it was emitted.
package eventfntest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// Env is a database with eventfn's tables and a fake clock, for one test.
type Env struct {
	// DB is the database: read and arrange state with plain SQL.
	DB *sql.DB
	// Clock is the time handlers read through runtime.Now, and the time
	// retries wait on.
	Clock *Clock

	direct *router.Direct
}

// New makes an Env; the database is dropped when the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	ctx := context.Background()
	cfg := store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(t.TempDir(), "eventfntest.db")}
	if u := testenv.DatabaseURL(); u != "" {
		cfg = store.Config{Driver: store.Postgres, URL: testenv.PostgresSchema(t, u), MaxOpenConns: 4}
	}
	db, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("eventfntest: open the database: %v", err)
	}
	t.Cleanup(func() { _ = db.Close() })
	conf, err := configs.Load(configs.Options{Profile: "test", Environ: []string{}})
	if err != nil {
		t.Fatalf("eventfntest: configuration: %v", err)
	}
	direct, err := router.NewDirect(db, conf, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("eventfntest: %v", err)
	}
	return &Env{DB: db.DB, Clock: NewClock(time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)), direct: direct}
}

// Event is an event as it travels: its CloudEvents attributes and payload.
type Event struct {
	ID, Type, Source, Key, CorrelationID string
	Time                                 time.Time
	Payload                              json.RawMessage
}

// EventOf wraps ev as the first event of a chain, as the ingress or another
// producer would send it: a new id, source "test", ev's key.
func EventOf(t testing.TB, ev runtime.Event) Event {
	t.Helper()
	payload, err := json.Marshal(ev)
	if err != nil {
		t.Fatalf("eventfntest: encode %s: %v", ev.EventType(), err)
	}
	out := Event{ID: uuid.NewString(), Type: ev.EventType(), Source: "test", Payload: payload}
	if k, ok := ev.(runtime.Keyed); ok {
		out.Key = k.EventKey()
	}
	out.CorrelationID = out.ID
	return out
}

// Decode reads an emitted event as E, failing the test if it is another type
// or does not decode.
func Decode[E runtime.Event](t testing.TB, ev Event) E {
	t.Helper()
	var zero E
	if ev.Type != zero.EventType() {
		t.Fatalf("eventfntest: event %s is a %s, not a %s", ev.ID, ev.Type, zero.EventType())
	}
	out, err := runtime.Decode[E](ev.Payload)
	if err != nil {
		t.Fatalf("eventfntest: decode %s: %v", ev.Type, err)
	}
	return out
}

// Result is what one delivery came to.
type Result struct {
	// Err is nil, a permanent error, the last failure once the retries ran
	// out (the event would be dead-lettered), or a dependency's
	// unavailability (runtime.IsUnavailable) that lasted MaxWaits waits:
	// the runtime would go on waiting for it,
	// and never dead-letter the event for it. The transaction of each
	// failed attempt rolled back.
	Err error
	// Attempts is how many times the handler ran.
	Attempts int
	// Duplicate says the inbox had the event already: the handler did not run.
	Duplicate bool
	// Emitted are the events the delivery committed to the outbox, in order.
	Emitted []Event
}

// MaxWaits is how many waits in a row Deliver allows a handler whose
// dependency is unavailable (runtime.Unavailable), so MaxWaits+1 calls,
// before it returns that failure in Result.Err, where the runtime would go
// on waiting for it.
const MaxWaits = router.DirectMaxWaits

// DeadLettered says the runtime would move the event to the dead-letter topic.
func (r Result) DeadLettered() bool { return r.Err != nil && !runtime.IsUnavailable(r.Err) }

// Call delivers ev to h as the first event of a new chain.
func (e *Env) Call(t testing.TB, h runtime.Handler, ev runtime.Event) Result {
	t.Helper()
	return e.Deliver(t, h, EventOf(t, ev))
}

// Deliver delivers ev to h as Kafka would: with h's retries on the fake
// clock. Delivering the same Event twice is a redelivery.
func (e *Env) Deliver(t testing.TB, h runtime.Handler, ev Event) Result {
	t.Helper()
	if ev.Type != h.Trigger() {
		t.Fatalf("eventfntest: %s consumes %s, not %s", h.Name(), h.Trigger(), ev.Type)
	}
	if ev.Time.IsZero() {
		ev.Time = e.Clock.Now()
	}
	ctx := runtime.WithClock(context.Background(), e.Clock.Now)
	r := e.direct.Deliver(ctx, h, router.DirectEvent{
		ID: ev.ID, Type: ev.Type, Source: ev.Source, Key: ev.Key, CorrelationID: ev.CorrelationID, Time: ev.Time, Payload: ev.Payload,
	}, e.Clock.sleep)
	res := Result{Err: r.Err, Attempts: r.Attempts, Duplicate: r.Duplicate}
	for _, row := range r.Emitted {
		h := row.Headers
		tm, _ := time.Parse(time.RFC3339Nano, h[router.HeaderTime])
		res.Emitted = append(res.Emitted, Event{
			ID: h[router.HeaderID], Type: h[router.HeaderType], Source: h[router.HeaderSource], Key: string(row.Key),
			CorrelationID: h[router.HeaderCorrelationID], Time: tm, Payload: row.Payload,
		})
	}
	return res
}

// Clock is a fake clock: it moves only when told to, or when a retry waits.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// NewClock is a clock at start.
func NewClock(start time.Time) *Clock { return &Clock{now: start} }

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// sleep is a retry's wait: it advances the clock at once.
func (c *Clock) sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	c.Advance(d)
	return true
}

// Scenario runs handlers as a graph.
type Scenario struct {
	// MaxDeliveries stops a scenario whose handlers emit in a cycle; the
	// default is 1000.
	MaxDeliveries int

	env      *Env
	handlers []runtime.Handler
}

// Scenario makes a scenario of the handlers given; each event is delivered
// to every one of them that consumes its type.
func (e *Env) Scenario(handlers ...runtime.Handler) *Scenario {
	return &Scenario{env: e, handlers: handlers, MaxDeliveries: 1000}
}

// Run delivers the events given, then every event they lead to, breadth
// first in the order emitted (so the events of one key keep their order, as
// on one Kafka partition), until none is left. It returns the log of it all.
func (s *Scenario) Run(t testing.TB, events ...runtime.Event) *Log {
	t.Helper()
	log := &Log{}
	queue := make([]Event, 0, len(events))
	for _, ev := range events {
		queue = append(queue, EventOf(t, ev))
	}
	log.Events = append(log.Events, queue...)
	deliveries := 0
	for len(queue) > 0 {
		ev := queue[0]
		queue = queue[1:]
		for _, h := range s.handlers {
			if h.Trigger() != ev.Type {
				continue
			}
			if deliveries++; deliveries > s.MaxDeliveries {
				t.Fatalf("eventfntest: the scenario did not end after %d deliveries: do the handlers emit in a cycle?", s.MaxDeliveries)
			}
			res := s.env.Deliver(t, h, ev)
			log.Runs = append(log.Runs, Run{Handler: h.Name(), Event: ev, Result: res})
			queue = append(queue, res.Emitted...)
			log.Events = append(log.Events, res.Emitted...)
		}
	}
	return log
}

// Log is what a scenario did.
type Log struct {
	// Events are every event, the given ones first, in the order emitted.
	Events []Event
	// Runs are the deliveries, in order.
	Runs []Run
}

// Run is one delivery of a scenario.
type Run struct {
	Handler string
	Event   Event
	Result  Result
}

// Types lists the types of the events in order.
func (l *Log) Types() []string {
	out := make([]string, len(l.Events))
	for i, ev := range l.Events {
		out[i] = ev.Type
	}
	return out
}

// OfType returns the events of type typ in order.
func (l *Log) OfType(typ string) []Event {
	var out []Event
	for _, ev := range l.Events {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// Failed returns the runs whose events would be dead-lettered.
func (l *Log) Failed() []Run {
	var out []Run
	for _, r := range l.Runs {
		if r.Result.DeadLettered() {
			out = append(out, r)
		}
	}
	return out
}

// QueryInt runs a query that returns one integer, failing the test on error:
// assert state with plain SQL.
func (e *Env) QueryInt(t testing.TB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := e.DB.QueryRowContext(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("eventfntest: %s: %v", query, err)
	}
	return n
}

// String describes an event for failure messages.
func (ev Event) String() string {
	return fmt.Sprintf("%s key=%q id=%s %s", ev.Type, ev.Key, ev.ID, ev.Payload)
}
