package router

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestShutdownSaysWhatTheDrainLeft: shutdown's wait for the outbox to empty
// says how many events wait for the next start when it could count them,
// and that it could not when the database did not answer; it said "0 events
// wait" then, as if the outbox were empty.
func TestShutdownSaysWhatTheDrainLeft(t *testing.T) {
	frozen := errors.New("the database did not answer")
	cases := []struct {
		name    string
		pending func(context.Context) (int64, error)
		want    string // "" means it drains
		unwant  string
	}{
		{"drained", func(context.Context) (int64, error) { return 0, nil }, "", ""},
		{"rows left", func(context.Context) (int64, error) { return 3, nil }, "(3 events wait for the next start)", ""},
		{"not counted", func(context.Context) (int64, error) { return 0, frozen }, "could not be counted", "0 events"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := drainUntil(time.Now().Add(50*time.Millisecond), c.pending)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("err = %v, want the outbox drained", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("err = %v, want it to say %q", err, c.want)
			case c.unwant != "" && strings.Contains(err.Error(), c.unwant):
				t.Fatalf("err = %v says %q", err, c.unwant)
			}
		})
	}
}
