package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/eventfn/eventfn/runtime"
)

func TestDeadLetterClass(t *testing.T) {
	timeout := fmt.Errorf("handler x did not return before its context ended: %w", context.DeadlineExceeded)
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"undecodable payload", runtime.Malformed(errors.New("decode order.placed: unexpected EOF")), classMalformed},
		{"malformed wrapped again", fmt.Errorf("call: %w", runtime.Malformed(errors.New("bad"))), classMalformed},
		{"permanent", runtime.Permanent(errors.New("card declined")), classPermanent},
		{"last attempt timed out", timeout, classTimeout},
		{"handler error after every retry", errors.New("gateway unavailable"), classExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := deadLetterClass(tt.err); got != tt.want {
				t.Fatalf("deadLetterClass(%v) = %s, want %s", tt.err, got, tt.want)
			}
		})
	}
}

func TestHandlerResult(t *testing.T) {
	tests := []struct {
		err       error
		duplicate bool
		want      string
	}{
		{nil, false, "ok"},
		{nil, true, "duplicate"},
		{errors.New("boom"), false, "error"},
		{runtime.Permanent(errors.New("no")), false, "permanent"},
		{infraError{errors.New("database away")}, false, "infrastructure"},
	}
	for _, tt := range tests {
		if got := handlerResult(tt.err, tt.duplicate); got != tt.want {
			t.Errorf("handlerResult(%v, %v) = %s, want %s", tt.err, tt.duplicate, got, tt.want)
		}
	}
}

func TestPendingAge(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		oldest time.Time
		want   float64
	}{
		{"none pending", time.Time{}, 0},
		{"90 s old", now.Add(-90 * time.Second), 90},
		{"a clock ahead of ours", now.Add(time.Second), 0},
	}
	for _, tt := range tests {
		if got := pendingAge(tt.oldest, now); got != tt.want {
			t.Errorf("%s: pendingAge = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestChainStarted: an event keeps the chain start it carries; one without
// starts its own chain at its ce_time, or at its arrival without one.
func TestChainStarted(t *testing.T) {
	const carried, ceTime = "2026-01-02T03:04:05.123456789Z", "2026-01-02T04:00:00Z"
	tests := []struct {
		name          string
		header, ctime string
		want          string // "" means: the arrival time
	}{
		{"carried", carried, ceTime, carried},
		{"without, with ce_time", "", ceTime, ceTime},
		{"unreadable, with ce_time", "yesterday", ceTime, ceTime},
		{"without either", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := message.NewMessage("id", nil)
			if tt.header != "" {
				msg.Metadata.Set(HeaderChainStarted, tt.header)
			}
			if tt.ctime != "" {
				msg.Metadata.Set(HeaderTime, tt.ctime)
			}
			before := time.Now()
			var seen string
			_, _ = chainStarted(func(m *message.Message) ([]*message.Message, error) {
				seen = m.Metadata.Get(HeaderChainStarted)
				return nil, nil
			})(msg)
			if tt.want != "" {
				if seen != tt.want {
					t.Fatalf("chain started %q, want %q", seen, tt.want)
				}
				return
			}
			at, err := time.Parse(time.RFC3339Nano, seen)
			if err != nil || at.Before(before) || at.After(time.Now()) {
				t.Fatalf("chain started %q (%v), want the arrival time", seen, err)
			}
		})
	}
}

// TestClassifiedDeadLettersAreCountedOnceWritten: the class travels from the
// classifying middleware to the publisher, is counted there, and never
// reaches the dead letter's headers.
func TestClassifiedDeadLettersAreCountedOnceWritten(t *testing.T) {
	byClass := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x"}, []string{"class"})
	c := &capture{}
	d := deadLetterPublisher{pub: c, maxBytes: 1_000_000, written: prometheus.NewCounter(prometheus.CounterOpts{Name: "y"}), byClass: byClass}
	msg := message.NewMessage("id", []byte("{"))
	_, err := classifyDeadLetter(func(*message.Message) ([]*message.Message, error) {
		return nil, runtime.Malformed(errors.New("decode: unexpected EOF"))
	})(msg)
	if err == nil {
		t.Fatal("the failure was swallowed")
	}
	if err := d.Publish("dlq", msg); err != nil {
		t.Fatal(err)
	}
	if got := testutil.ToFloat64(byClass.WithLabelValues(classMalformed)); got != 1 {
		t.Fatalf("malformed dead letters = %v, want 1", got)
	}
	if _, ok := c.got[0].Metadata[metaDeadLetterClass]; ok {
		t.Fatalf("the dead letter carries %s", metaDeadLetterClass)
	}
}

// TestRetriesInProgressCountsTheWait: the gauge of the wait's kind is 1
// while an event waits for its next try, the other stays 0, and both are 0
// once the wait ends (here cut short by its context).
func TestRetriesInProgressCountsTheWait(t *testing.T) {
	tests := []struct {
		name        string
		err         error
		unavailable bool
	}{
		{"a failure waits for a retry", errors.New("boom"), false},
		{"an unavailable dependency is waited out", runtime.Unavailable(errors.New("gateway down")), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ops := handlerOps{
				retrying:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "retrying"}),
				unavailable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "unavailable"}),
			}
			waiting, other := ops.retrying, ops.unavailable
			if tt.unavailable {
				waiting, other = other, waiting
			}
			mw := retrying(runtime.Policy{MaxRetries: 3, InitialBackoff: time.Minute, MaxBackoff: time.Minute},
				func(error) bool { return true }, ops, newDependencyWatch(ops.unavailable, time.Minute, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			msg := message.NewMessage("id", nil)
			msg.SetContext(ctx)
			done := make(chan error, 1)
			go func() {
				_, err := mw(func(*message.Message) ([]*message.Message, error) { return nil, tt.err })(msg)
				done <- err
			}()
			deadline := time.Now().Add(10 * time.Second)
			for testutil.ToFloat64(waiting) != 1 {
				if time.Now().After(deadline) {
					t.Fatal("the waiting event was not counted")
				}
				time.Sleep(5 * time.Millisecond) // polling interval; the gauge decides
			}
			if got := testutil.ToFloat64(other); got != 0 {
				t.Fatalf("the other kind of wait counts %v", got)
			}
			cancel()
			if err := <-done; !errors.Is(err, tt.err) {
				t.Fatalf("error %v, want %v", err, tt.err)
			}
			if got := testutil.ToFloat64(waiting); got != 0 {
				t.Fatalf("waits in progress = %v after the wait ended", got)
			}
		})
	}
}
