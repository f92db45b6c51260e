package runtime

import (
	"context"
	"time"
)

type clockKey struct{}

// Now is the time as a handler should read it: the clock ctx carries, or the
// wall clock. A handler that reads the time through Now is deterministic
// under eventfntest's fake clock.
func Now(ctx context.Context) time.Time {
	if now, ok := ctx.Value(clockKey{}).(func() time.Time); ok {
		return now()
	}
	return time.Now()
}

// WithClock returns ctx with now as the clock Now reads.
func WithClock(ctx context.Context, now func() time.Time) context.Context {
	return context.WithValue(ctx, clockKey{}, now)
}
