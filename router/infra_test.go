package router_test

import (
	"context"
	"database/sql"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/runtime"
)

// cutProxy forwards TCP to a server until cut, which drops every connection
// and refuses new ones until restored: a database outage as clients see it.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  []net.Conn
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); p.cut() })
	go p.serve()
	return p
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
		go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
	}
}

func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}

type chargeLike struct {
	ID string `json:"id"`
}

func (chargeLike) EventType() string  { return "charge.like" }
func (c chargeLike) EventKey() string { return c.ID }

// probeWriter is a handler that writes one row per event and then records
// the event in handled: a budget of 2 tries of 300 ms, far shorter than the
// outages the tests make. maxBatch 0 lets the database decide.
func probeWriter(handled *sync.Map, maxBatch int) runtime.Handler {
	return runtime.NewHandler("charge-like", func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'x')`, ev.ID); err != nil {
			return err
		}
		handled.Store(ev.ID, true)
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond,
		Timeout: 300 * time.Millisecond, MaxBatch: maxBatch}))
}

// TestADatabaseOutageDeadLettersNoGoodEvent: failures because the database
// was away once used up an event's retries and dead-lettered good events.
// Now the event waits for the database, holding only its key, /readyz says
// why meanwhile, and it is handled once the database is back. On PostgreSQL
// the outage is every connection cut and refused; on SQLite, the write lock
// held by another connection.
func TestADatabaseOutageDeadLettersNoGoodEvent(t *testing.T) {
	var proxy *cutProxy
	var handled sync.Map
	h := probeWriter(&handled, 0)
	tr := startRuntime(t, func(c *configs.Config) {
		if !strings.HasPrefix(c.Database.URL, "postgres") {
			return
		}
		u, err := url.Parse(c.Database.URL)
		if err != nil {
			t.Fatal(err)
		}
		proxy = newCutProxy(t, u.Host)
		u.Host = proxy.ln.Addr().String()
		c.Database.URL = u.String()
	}, h)

	tr.emit(t, chargeLike{ID: "before"})
	waitUntil(t, "the first event handled", 30*time.Second, func() bool { _, ok := handled.Load("before"); return ok })

	// The outage.
	var release func()
	if proxy != nil {
		proxy.cut()
		release = proxy.restore
		// Events of the outage come straight from Kafka: the outbox is away too.
		produceEvent(t, tr, chargeLike{ID: "during"})
	} else {
		// The runtime's writer may hold the lock for a moment (the first
		// event's commit, the relay's bookkeeping): wait for it rather than
		// fail at once with SQLITE_BUSY.
		lock, err := sql.Open("sqlite", "file:"+strings.TrimPrefix(tr.cfg.Database.URL, "sqlite://")+"?_txlock=immediate&_pragma=busy_timeout(10000)")
		if err != nil {
			t.Fatal(err)
		}
		defer lock.Close()
		tx, err := lock.Begin()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('lock', 'held', 'x')`); err != nil {
			t.Fatal(err)
		}
		release = func() { _ = tx.Rollback() }
		produceEvent(t, tr, chargeLike{ID: "during"})
	}
	// Far longer than the event's whole retry budget (2 tries of 300 ms).
	waitUntil(t, "readiness to report the wait", 30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return tr.rt.Ready(ctx) != nil
	})
	time.Sleep(2 * time.Second) // the outage's length, not synchronisation
	release()

	waitUntil(t, "the event handled after the outage", 60*time.Second, func() bool { _, ok := handled.Load("during"); return ok })
	waitUntil(t, "ready again", 30*time.Second, func() bool { return tr.rt.Ready(context.Background()) == nil })
	if n := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); n != 0 {
		t.Fatalf("%d events dead-lettered by the outage\n%s", n, tr.logs.String())
	}
}

// TestADatabaseTurnedReadOnlyDeadLettersNoGoodEvent: a PostgreSQL server
// that takes no writes for a while (a failover that points connections at a
// standby, or a managed service that turns default_transaction_read_only on
// when its disk fills) answers every write with read_only_sql_transaction.
// That was taken for the event's fault: each event of the window used up its
// retries and was dead-lettered. It is the database unable to serve: the
// event waits, holding only its key, /readyz says why, and it is handled
// once writes are taken again. PostgreSQL only: SQLite's read-only file and
// full disk are store.Unavailable's (store's test), and what follows from
// that is TestADatabaseOutageDeadLettersNoGoodEvent's.
func TestADatabaseTurnedReadOnlyDeadLettersNoGoodEvent(t *testing.T) {
	base := testenv.RequirePostgres(t)
	for _, tc := range []struct {
		name     string
		maxBatch int
	}{
		{"alone", 1},
		{"in a batch", 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A database of its own: the setting is the database's, and
			// the tests beside this one share the server.
			database := testenv.NewPostgresDatabase(t, base)
			var handled sync.Map
			h := probeWriter(&handled, tc.maxBatch)
			tr := startRuntime(t, func(c *configs.Config) { c.Database.URL = database.URL }, h)

			tr.emit(t, chargeLike{ID: "before"})
			waitUntil(t, "the first event handled", 30*time.Second, func() bool { _, ok := handled.Load("before"); return ok })

			database.SetReadOnly(t, true)
			keys := []string{"during-1", "during-2", "during-3"}
			for _, k := range keys {
				// Straight from Kafka: the outbox takes no writes either.
				produceEvent(t, tr, chargeLike{ID: k})
			}
			waitUntil(t, "readiness to report the read-only database", 30*time.Second, func() bool {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				defer cancel()
				err := tr.rt.Ready(ctx)
				return err != nil && strings.Contains(err.Error(), "read-only")
			})
			time.Sleep(2 * time.Second) // the window's length, far past the retry budget; not synchronisation
			for _, k := range keys {
				if _, ok := handled.Load(k); ok {
					t.Fatalf("%s handled while the database took no writes", k)
				}
			}
			database.SetReadOnly(t, false)

			for _, k := range keys {
				waitUntil(t, k+" handled once writes are taken", 60*time.Second, func() bool { _, ok := handled.Load(k); return ok })
			}
			waitUntil(t, "ready again", 30*time.Second, func() bool { return tr.rt.Ready(context.Background()) == nil })
			if n := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); n != 0 {
				t.Fatalf("%d events dead-lettered by the read-only window\n%s", n, tr.logs.String())
			}
		})
	}
}

// TestAStatementThatFailsItselfIsNotWaitedForAsTheDatabase: an error that
// reads like the database's but is the handler's own statement's fails the
// same way however long the event waits. Waited for as the database, its
// key waited without end and the replica stayed unready: a sort past
// temp_file_limit (53400, in the class of "insufficient resources" that was
// taken whole), and a write in a transaction the handler made read-only
// (25006, the server's only when the server says it takes no writes). Each
// is retried and dead-lettered, readiness kept, and the key's next event
// goes on. PostgreSQL only: SQLite has neither.
func TestAStatementThatFailsItselfIsNotWaitedForAsTheDatabase(t *testing.T) {
	testenv.RequirePostgres(t)
	for _, tc := range []struct {
		name string
		bad  []string // the bad event's statements, in the handler's transaction
	}{
		{"a sort past temp_file_limit", []string{
			`SET LOCAL work_mem = '64kB'`, `SET LOCAL temp_file_limit = '100kB'`,
			`SELECT g FROM generate_series(1, 200000) g ORDER BY g DESC`,
		}},
		{"a write in a transaction made read-only", []string{
			`SET LOCAL transaction_read_only = on`,
			`INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', 'bad', 'x')`,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var handled sync.Map
			h := runtime.NewHandler("charge-like", func(ctx context.Context, tx runtime.Tx, ev chargeLike) error {
				if ev.ID == "bad" {
					for _, q := range tc.bad {
						if _, err := tx.ExecContext(ctx, q); err != nil {
							return err
						}
					}
				}
				handled.Store(ev.ID, true)
				return nil
			}, runtime.WithPolicy(runtime.Policy{MaxRetries: 1, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, Timeout: 5 * time.Second}))
			tr := startRuntime(t, nil, h)
			waitUntil(t, "ready", 30*time.Second, func() bool { return tr.rt.Ready(context.Background()) == nil })
			var unready atomic.Pointer[error]
			watching, stopWatching := context.WithCancel(context.Background())
			watched := make(chan struct{})
			go func() {
				defer close(watched)
				for watching.Err() == nil {
					if err := tr.rt.Ready(context.Background()); err != nil {
						unready.CompareAndSwap(nil, &err)
					}
					select {
					case <-watching.Done():
					case <-time.After(5 * time.Millisecond):
					}
				}
			}()
			// Before the runtime's own cleanups: a failed check stops the
			// watch first.
			t.Cleanup(func() {
				stopWatching()
				<-watched
			})
			tr.emit(t, chargeLike{ID: "bad"})
			dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
			if got := string(dead[0].Key); got != "bad" {
				t.Fatalf("dead-lettered %q, want the bad event", got)
			}
			tr.emit(t, chargeLike{ID: "after"})
			waitUntil(t, "the event after it handled", 30*time.Second, func() bool { _, ok := handled.Load("after"); return ok })
			stopWatching()
			<-watched
			if err := unready.Load(); err != nil {
				t.Fatalf("the replica was unready for the event's own failure: %v\n%s", *err, tr.logs.String())
			}
			if _, ok := handled.Load("bad"); ok {
				t.Fatal("the bad event was handled")
			}
		})
	}
}
