package router

import (
	"context"
	"testing"
	"time"
)

// TestLockTimeoutForStaysBelowTheStatementTimeout: a call's lock timeout is
// half its time left, and a tenth below the server's statement_timeout when
// that is shorter, so that a lock wait ends as a conflict before the server
// cancels the statement.
func TestLockTimeoutForStaysBelowTheStatementTimeout(t *testing.T) {
	for _, tc := range []struct {
		name             string
		timeLeft         time.Duration // 0: no deadline
		statementTimeout time.Duration
		lo, hi           int64 // the lock timeout, in ms, within [lo, hi]
	}{
		{"no deadline, no statement_timeout", 0, 0, 0, 0},
		{"half the time left", 30 * time.Second, 0, 14_900, 15_000},
		{"a statement_timeout longer than half", 30 * time.Second, time.Minute, 14_900, 15_000},
		{"a statement_timeout shorter than half", 30 * time.Second, 5 * time.Second, 4_500, 4_500},
		{"a statement_timeout and no deadline", 0, 400 * time.Millisecond, 360, 360},
		{"a statement_timeout of 1 ms", 30 * time.Second, time.Millisecond, 1, 1},
		{"a statement_timeout of 5 ms", 30 * time.Second, 5 * time.Millisecond, 4, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			if tc.timeLeft > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.timeLeft)
				defer cancel()
			}
			if got := lockTimeoutFor(ctx, tc.statementTimeout); got < tc.lo || got > tc.hi {
				t.Fatalf("lockTimeoutFor = %d ms, want %d to %d", got, tc.lo, tc.hi)
			}
		})
	}
}
