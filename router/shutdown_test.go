package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/runtime"
)

type slowWork struct {
	ID string `json:"id"`
}

func (slowWork) EventType() string  { return "slow.work" }
func (s slowWork) EventKey() string { return s.ID }

// TestShutdownLetsCallsInFlightFinish: a stop lets a call in flight finish
// with its context intact and commits its work; closing the router once
// cancelled the message context, and calls died with "context canceled".
func TestShutdownLetsCallsInFlightFinish(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	h := runtime.NewHandler("slow-worker", func(ctx context.Context, tx runtime.Tx, ev slowWork) error {
		close(entered)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'done')`, ev.ID)
		return err
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, slowWork{ID: "w1"})
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatalf("the handler was not called\n%s", tr.logs.String())
	}
	stopped := make(chan struct{})
	go func() {
		tr.stop()
		close(stopped)
	}()
	// The stop waits for the call; the call's context stays alive meanwhile.
	waitUntil(t, "the shutdown to begin", 10*time.Second, func() bool {
		return strings.Contains(tr.logs.String(), "shutting down")
	})
	select {
	case <-stopped:
		t.Fatal("the runtime stopped before the call in flight finished")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the runtime did not stop after the call finished")
	}
	if strings.Contains(tr.logs.String(), "context canceled") {
		t.Fatalf("a call was cancelled by the shutdown:\n%s", tr.logs.String())
	}
	db := reopen(t, tr)
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM eventfn_inbox WHERE handler = 'probe' AND event_id = 'w1'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the call's work committed %d times (%v), want once", n, err)
	}
}

// TestASlowHandlerDoesNotMakeTheProcessUnready: on SQLite a handler waiting on
// a slow call holds the one writer connection; readiness once pinged through
// it and answered 503 for as long as the call lasted.
func TestASlowHandlerDoesNotMakeTheProcessUnready(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	h := runtime.NewHandler("slow-worker", func(ctx context.Context, tx runtime.Tx, ev slowWork) error {
		// Hold the writer: a write first, as a handler recording a call would.
		if _, err := tx.ExecContext(ctx, `INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ('probe', $1, 'started')`, ev.ID); err != nil {
			return err
		}
		close(entered)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1}))
	tr := startRuntime(t, nil, h)
	tr.emit(t, slowWork{ID: "w1"})
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatalf("the handler was not called\n%s", tr.logs.String())
	}
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := tr.rt.Ready(ctx); err != nil {
		t.Fatalf("not ready while a handler waits on a slow call: %v", err)
	}
}
