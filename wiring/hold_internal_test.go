package wiring

import (
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
)

// TestAnOrderIsHeldAtMostHalfTheWriteTimeout: a hold that outlasted the
// write deadline would leave the held order without even its 503.
func TestAnOrderIsHeldAtMostHalfTheWriteTimeout(t *testing.T) {
	tests := []struct {
		wait, write, want time.Duration
	}{
		{5 * time.Second, 30 * time.Second, 5 * time.Second},
		{5 * time.Second, 2 * time.Second, time.Second},
		{time.Minute, 10 * time.Second, 5 * time.Second},
		{0, 30 * time.Second, 0},
	}
	for _, tt := range tests {
		if got := holdFor(configs.HTTP{BacklogWait: tt.wait, WriteTimeout: tt.write}); got != tt.want {
			t.Errorf("backlog_wait %s, write_timeout %s: held up to %s, want %s", tt.wait, tt.write, got, tt.want)
		}
	}
}
