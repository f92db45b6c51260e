package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventfn/eventfn/router"
)

// TestWaitHoldsTheEndWhileAHandlerWillRunAgain: --wait must not call a chain
// done on --quiet while a handler's last run said it will run again (its
// backoff can be longer than --quiet); it waits for the run that settles it,
// and a --timeout that passes first is an exit code of its own.
func TestWaitHoldsTheEndWhileAHandlerWillRunAgain(t *testing.T) {
	const runs, dlq = "eventfn.runs", "eventfn.dead-letter"
	run := func(attempt int, outcome string) *sarama.ConsumerMessage {
		v, err := json.Marshal(router.RunRecord{Handler: "charge-payment", EventID: "root", EventType: "order.placed",
			Attempt: attempt, Outcome: outcome, Start: time.Unix(int64(attempt), 0)})
		if err != nil {
			t.Fatal(err)
		}
		return &sarama.ConsumerMessage{Topic: runs, Value: v}
	}
	deadLetter := &sarama.ConsumerMessage{Topic: dlq, Headers: []*sarama.RecordHeader{{Key: []byte(router.HeaderID), Value: []byte("root")}}}
	cases := []struct {
		name     string
		records  []*sarama.ConsumerMessage
		ending   string
		exitCode int // 0: no error
	}{
		{"retrying, nothing after", []*sarama.ConsumerMessage{run(1, router.RunRetrying)}, "timed out after", 3},
		{"waiting for the database, nothing after", []*sarama.ConsumerMessage{run(1, router.RunWaiting)}, "timed out after", 3},
		{"waiting for a dependency, nothing after", []*sarama.ConsumerMessage{run(1, router.RunUnavailable)}, "timed out after", 3},
		{"waiting for a dependency, then ok", []*sarama.ConsumerMessage{run(1, router.RunUnavailable), run(2, router.RunOK)}, "quiet for", 0},
		{"retrying, then ok", []*sarama.ConsumerMessage{run(1, router.RunRetrying), run(2, router.RunOK)}, "quiet for", 0},
		{"ok arriving before the retry it follows", []*sarama.ConsumerMessage{run(2, router.RunOK), run(1, router.RunRetrying)}, "quiet for", 0},
		{"retrying, then dead-lettered", []*sarama.ConsumerMessage{run(1, router.RunRetrying), run(2, router.RunDeadLettered), deadLetter}, "quiet for", 1},
		// A busy eventfn has not got to the event within --quiet: not the end.
		{"nothing yet", nil, "timed out after", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := &follower{records: make(chan *sarama.ConsumerMessage, len(tc.records))}
			for _, r := range tc.records {
				f.records <- r
			}
			var out bytes.Buffer
			// quiet is a fifth of timeout: before the fix a retrying run ended
			// the wait on quiet, with exit code 0.
			err := f.print(context.Background(), &out, time.Second, 200*time.Millisecond, true, dlq, runs, "root", time.Unix(0, 0))
			if !strings.Contains(out.String(), tc.ending) {
				t.Errorf("output does not say %q:\n%s", tc.ending, out.String())
			}
			var exit ExitError
			switch {
			case tc.exitCode == 0 && err != nil:
				t.Errorf("err = %v, want none", err)
			case tc.exitCode != 0 && (!errors.As(err, &exit) || exit.Code != tc.exitCode):
				t.Errorf("err = %v, want exit code %d", err, tc.exitCode)
			}
		})
	}
}

// TestFollowingRetriesWhileTheTopicIsNew: a topic eventfn has just created
// answers "not the leader" or "unknown topic" for a moment; --wait refreshes
// its metadata and tries again instead of giving up (it once failed CI that
// way), and still gives up at once on any other error.
func TestFollowingRetriesWhileTheTopicIsNew(t *testing.T) {
	for _, tc := range []struct {
		name      string
		errs      []error
		wantCalls int
		wantErr   error
	}{
		{"stale twice, then served", []error{sarama.ErrNotLeaderForPartition, sarama.ErrUnknownTopicOrPartition, nil}, 3, nil},
		{"another error", []error{sarama.ErrOutOfBrokers}, 1, sarama.ErrOutOfBrokers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls, refreshes := 0, 0
			err := withFreshMetadata(func() error { refreshes++; return nil }, func() error {
				e := tc.errs[calls]
				calls++
				return e
			})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) || calls != tc.wantCalls || refreshes != calls-1 {
				t.Errorf("err %v after %d calls and %d refreshes; want %v after %d calls", err, calls, refreshes, tc.wantErr, tc.wantCalls)
			}
		})
	}
}
