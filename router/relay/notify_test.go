package relay_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

// TestNotifyWakesTheListenersOfItsSchemaOnly: a notification from a process
// without a relay (the CLI's dead-letter replay) wakes a relay listening on
// the same schema; one from another schema (another deployment on the same
// server) does not.
func TestNotifyWakesTheListenersOfItsSchemaOnly(t *testing.T) {
	u := testenv.RequirePostgres(t)
	e := open(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	wakes := make(chan struct{}, 16)
	listenCtx, stopListening := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		relay.Listen(listenCtx, e.db, func() { wakes <- struct{}{} }, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { stopListening(); <-done })
	wait := func(what string) {
		t.Helper()
		select {
		case <-wakes:
		case <-ctx.Done():
			t.Fatalf("no wake for %s", what)
		}
	}
	wait("the listener's start") // it wakes once when it listens

	elsewhere, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: testenv.PostgresSchema(t, u), MaxOpenConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer elsewhere.Close()
	same, err := store.Open(ctx, store.Config{Driver: store.Postgres, URL: e.url, MaxOpenConns: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer same.Close()
	// Both are queued before the listener is read: had the other schema's
	// woken it, its wake would come first (PostgreSQL delivers in commit
	// order) and the one of its own schema at once after it. The window
	// below only bounds how long that second wake is looked for.
	if err := relay.Notify(ctx, elsewhere); err != nil {
		t.Fatal(err)
	}
	if err := relay.Notify(ctx, same); err != nil {
		t.Fatal(err)
	}
	wait("a notification of its schema")
	select {
	case <-wakes:
		t.Fatal("two wakes for one notification of its schema: the other schema's woke it too")
	case <-time.After(time.Second):
	}
}
