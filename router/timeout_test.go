package router_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/runtime"
)

type stubborn struct {
	N int `json:"n"`
}

func (stubborn) EventType() string  { return "stubborn.requested" }
func (s stubborn) EventKey() string { return "one-key" }

// TestAHandlerThatIgnoresItsTimeoutFreesItsKeyAndTheWriter: middleware.Timeout
// only cancels a context, so a handler that ignored it held its partition
// (and, on SQLite, the one writer) for as long as it ran. Now the call is
// abandoned at the timeout: its transaction rolls back, the writer is free,
// and the event is dead-lettered, while the handler goroutine runs on.
func TestAHandlerThatIgnoresItsTimeoutFreesItsKeyAndTheWriter(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var calls atomic.Int32
	h := runtime.NewHandler("stubborn", func(ctx context.Context, tx runtime.Tx, ev stubborn) error {
		calls.Add(1)
		if ev.N == 0 {
			<-release // ignores ctx
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'x')`, "n"+strings.Repeat("1", ev.N))
		return err
	}, runtime.WithPolicy(runtime.Policy{Timeout: 300 * time.Millisecond, MaxRetries: -1}))
	tr := startRuntime(t, func(c *configs.Config) {}, h)

	tr.emit(t, stubborn{N: 0}, stubborn{N: 1})
	// The first event is dead-lettered at its timeout; the second, on the same
	// key behind it, runs.
	dead := tr.records(t, tr.cfg.Kafka.DeadLetterTopic, 1)
	if got := string(dead[0].Value); !strings.Contains(got, `"n":0`) {
		t.Fatalf("dead letter %s", got)
	}
	waitUntil(t, "the event behind it handled", 10*time.Second, func() bool {
		var n int
		_ = tr.db.Read.QueryRow(`SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe'`).Scan(&n)
		return n == 1
	})
	// The writer is free although the first call still runs.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tx, err := tr.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatalf("the writer is still held: %v", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', 'writer', 'x')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}
