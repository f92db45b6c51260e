package eventfntest_test

import (
	"context"
	"errors"
	"fmt"
	goruntime "runtime"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/eventfntest"
	"github.com/eventfn/eventfn/runtime"
)

type ping struct {
	N  int       `json:"n"`
	At time.Time `json:"at"`
}

func (ping) EventType() string { return "kit.ping" }

type pong struct {
	N  int       `json:"n"`
	At time.Time `json:"at"`
}

func (pong) EventType() string { return "kit.pong" }

// TestTheClockIsTheHandlersTime: a handler that reads runtime.Now sees the
// fake clock, so what it writes is deterministic.
func TestTheClockIsTheHandlersTime(t *testing.T) {
	env := eventfntest.New(t)
	h := runtime.NewHandler("stamp", func(ctx context.Context, tx runtime.Tx, ev ping) error {
		return tx.Emit(ctx, pong{N: ev.N, At: runtime.Now(ctx)})
	}, runtime.Emits(pong{}))
	env.Clock.Advance(90 * time.Minute)
	res := env.Call(t, h, ping{N: 1})
	if got := eventfntest.Decode[pong](t, res.Emitted[0]).At; !got.Equal(env.Clock.Now()) {
		t.Errorf("the handler read %s, the clock says %s", got, env.Clock.Now())
	}
}

// TestAFailedAttemptRollsBack: an attempt that writes and then fails leaves
// nothing, and its emitted events are not emitted; the retry that succeeds
// commits once.
func TestAFailedAttemptRollsBack(t *testing.T) {
	env := eventfntest.New(t)
	if _, err := env.DB.Exec(`CREATE TABLE kit_writes (n INTEGER)`); err != nil {
		t.Fatal(err)
	}
	calls := 0
	h := runtime.NewHandler("flaky", func(ctx context.Context, tx runtime.Tx, ev ping) error {
		calls++
		if _, err := tx.ExecContext(ctx, `INSERT INTO kit_writes (n) VALUES ($1)`, calls); err != nil {
			return err
		}
		if err := tx.Emit(ctx, pong{N: calls}); err != nil {
			return err
		}
		if calls < 3 {
			return errors.New("not yet")
		}
		return nil
	}, runtime.Emits(pong{}), runtime.WithPolicy(runtime.Policy{MaxRetries: 4, InitialBackoff: time.Second, MaxBackoff: time.Minute}))
	res := env.Call(t, h, ping{})
	if res.Err != nil || res.Attempts != 3 {
		t.Fatalf("err %v after %d attempts", res.Err, res.Attempts)
	}
	if n := env.QueryInt(t, `SELECT count(*) FROM kit_writes`); n != 1 {
		t.Errorf("%d rows written, want the successful attempt's 1", n)
	}
	if len(res.Emitted) != 1 || eventfntest.Decode[pong](t, res.Emitted[0]).N != 3 {
		t.Errorf("emitted %v, want the third attempt's pong only", res.Emitted)
	}
}

// TestAnErrorThatWrapsCanceledIsRetried: a handler's own error that wraps
// context.Canceled (a call it cancelled) is retried as in the runtime; it
// was dead-lettered on the first attempt.
func TestAnErrorThatWrapsCanceledIsRetried(t *testing.T) {
	env := eventfntest.New(t)
	calls := 0
	h := runtime.NewHandler("cancels", func(ctx context.Context, tx runtime.Tx, ev ping) error {
		if calls++; calls < 3 {
			call, cancel := context.WithCancel(ctx)
			cancel()
			return fmt.Errorf("call the refund service: %w", call.Err())
		}
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: 3}))
	if res := env.Call(t, h, ping{}); res.Err != nil || res.Attempts != 3 {
		t.Fatalf("err %v after %d attempts, want success on the third", res.Err, res.Attempts)
	}
}

// TestAPanicIsAFailureNotACrash: a handler that panics fails its attempt, as
// the runtime's recovery makes it.
func TestAPanicIsAFailureNotACrash(t *testing.T) {
	env := eventfntest.New(t)
	h := runtime.NewHandler("panics", func(ctx context.Context, tx runtime.Tx, ev ping) error { panic("boom") },
		runtime.WithPolicy(runtime.Policy{MaxRetries: -1}))
	res := env.Call(t, h, ping{})
	if !res.DeadLettered() || !strings.Contains(res.Err.Error(), "boom") || res.Attempts != 1 {
		t.Fatalf("err %v after %d attempts", res.Err, res.Attempts)
	}
}

// TestAScenarioThatNeverEndsIsStopped: handlers that emit in a cycle fail
// the test instead of hanging it.
func TestAScenarioThatNeverEndsIsStopped(t *testing.T) {
	env := eventfntest.New(t)
	a := runtime.NewHandler("a", func(ctx context.Context, tx runtime.Tx, ev ping) error { return tx.Emit(ctx, pong{N: ev.N + 1}) }, runtime.Emits(pong{}))
	b := runtime.NewHandler("b", func(ctx context.Context, tx runtime.Tx, ev pong) error { return tx.Emit(ctx, ping{N: ev.N + 1}) }, runtime.Emits(ping{}))
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := env.Scenario(a, b)
		s.MaxDeliveries = 50
		s.Run(ft, ping{})
	}()
	<-done
	if !strings.Contains(ft.msg, "did not end") {
		t.Fatalf("a cycle was not reported: %q", ft.msg)
	}
}

// fatalRecorder records Fatalf and ends the goroutine, as testing does.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	goruntime.Goexit()
}
