package ingress_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventfn/eventfn/ingress"
)

// startReadiness runs a Readiness over check until the test ends.
func startReadiness(t *testing.T, check ingress.ReadyFunc, interval time.Duration) *ingress.Readiness {
	t.Helper()
	r := ingress.NewReadiness(check, interval, time.Second, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return r
}

// within polls cond until it holds or timeout passes.
func within(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(5 * time.Millisecond) // polling interval; cond decides
	}
}

// TestReadyzAnswersFromTheLastCheck: /readyz once ran the full check (a
// database ping and a request to Kafka) per request, so any caller could make
// eventfn talk to its engines as fast as it liked. Now 200 calls at once run
// no check at all: they read the answer the background check left.
func TestReadyzAnswersFromTheLastCheck(t *testing.T) {
	var checks atomic.Int64
	r := startReadiness(t, func(context.Context) error { checks.Add(1); return nil }, time.Hour)
	within(t, 2*time.Second, "the first check", func() bool { return r.Ready(context.Background()) == nil })
	before := checks.Load()

	srv := httptest.NewServer(ingress.NewServer(nil, nil, r.Ready, http.NotFoundHandler(), 1<<20, slog.New(slog.DiscardHandler)).Handler())
	t.Cleanup(srv.Close)
	const calls = 200
	var wg sync.WaitGroup
	statuses := make(chan int, calls)
	for range calls {
		wg.Go(func() {
			resp, err := http.Get(srv.URL + "/readyz")
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		})
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusOK {
			t.Fatalf("/readyz answered %d", s)
		}
	}
	if n := checks.Load() - before; n != 0 {
		t.Fatalf("%d /readyz calls ran the check %d times; want none", calls, n)
	}
}

// TestReadinessFollowsTheCheck: the cached answer is not a frozen one. It is
// "not checked yet" before the first check, turns ready promptly, turns not
// ready within an interval of the check failing, and ready again after.
func TestReadinessFollowsTheCheck(t *testing.T) {
	var failing atomic.Pointer[error]
	check := func(context.Context) error {
		if err := failing.Load(); err != nil {
			return *err
		}
		return nil
	}
	r := ingress.NewReadiness(check, 100*time.Millisecond, time.Second, slog.New(slog.DiscardHandler))
	if err := r.Ready(context.Background()); err == nil {
		t.Fatal("ready before any check ran")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	within(t, time.Second, "ready at start", func() bool { return r.Ready(ctx) == nil })
	outage := errors.New("kafka [b:9092]: connection refused")
	failing.Store(&outage)
	within(t, 2*time.Second, "not ready once the check fails", func() bool { return errors.Is(r.Ready(ctx), outage) })
	failing.Store(nil)
	within(t, 2*time.Second, "ready again", func() bool { return r.Ready(ctx) == nil })
}

// TestAStartThatTakesAWhileIsSeenPromptly: while not ready the check runs
// again soon, not an interval later: tests and orchestrators wait for
// /readyz at every start.
func TestAStartThatTakesAWhileIsSeenPromptly(t *testing.T) {
	readyAt := time.Now().Add(300 * time.Millisecond)
	r := startReadiness(t, func(context.Context) error {
		if time.Now().Before(readyAt) {
			return errors.New("handler x has not subscribed yet")
		}
		return nil
	}, time.Hour)
	within(t, 2*time.Second, "ready soon after the check passes", func() bool { return r.Ready(context.Background()) == nil })
}
