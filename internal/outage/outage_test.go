package outage_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/outage"
)

// TestAnOutageIsReportedNotShouted: a minute of failures, one every 100 ms,
// gives one ERROR when it starts, one WARN summary per interval and one INFO
// when it ends; then a new outage, an interval later, is reported afresh.
func TestAnOutageIsReportedNotShouted(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
	r := outage.New("relay cannot forward", "relay forwarding again", 30*time.Second, slog.New(slog.NewTextHandler(&buf, nil))).
		WithClock(func() time.Time { return now })
	if r.Err() != nil || r.Succeeded() {
		t.Fatal("a fresh reporter is not healthy")
	}
	began := 0
	for i := 0; i < 600; i++ {
		if r.Failed(errors.New("broker unreachable")) {
			began++
		}
		now = now.Add(100 * time.Millisecond)
	}
	if began != 1 {
		t.Errorf("Failed reported %d outage starts, want 1", began)
	}
	if err := r.Err(); err == nil || !strings.Contains(err.Error(), "since 2026-11-25T09:00:00Z") || !strings.Contains(err.Error(), "broker unreachable") {
		t.Errorf("Err() = %v, want since when and why", err)
	}
	if !r.Succeeded() || r.Succeeded() {
		t.Error("Succeeded must report the end of the outage once")
	}
	if r.Err() != nil {
		t.Errorf("Err() = %v after recovery", r.Err())
	}
	now = now.Add(31 * time.Second) // more than an interval after the end
	if !r.Failed(errors.New("again")) {
		t.Error("a failure after recovery begins a new outage")
	}

	count := func(level string) int { return strings.Count(buf.String(), "level="+level) }
	// 60 s of failures with a 30 s interval: the start, then summaries at 30 s
	// and 60 s would be two, but the last failure is at 59.9 s: one summary.
	if got := count("ERROR"); got != 2 {
		t.Errorf("%d ERROR lines, want 2 (one per outage):\n%s", got, buf.String())
	}
	if got := count("WARN"); got != 1 {
		t.Errorf("%d WARN lines, want 1 summary:\n%s", got, buf.String())
	}
	if got := count("INFO"); got != 1 || !strings.Contains(buf.String(), "failures=600") {
		t.Errorf("%d INFO lines, want 1 recovery counting 600 failures:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "failures=300") {
		t.Errorf("the summary must count the failures since the last report:\n%s", buf.String())
	}
}

// TestAFlappingDependencyIsOneIncident: a dependency that fails for 200 ms
// and recovers for 300 ms, for a minute (a database at the edge of its
// lock table under load), logged an ERROR and an INFO per relapse: 120
// each. A relapse within an interval of the last recovery is the same
// incident: one ERROR, then at most one WARN (and its end) per interval,
// while Err still says at once whether it fails now.
func TestAFlappingDependencyIsOneIncident(t *testing.T) {
	var buf bytes.Buffer
	start := time.Date(2026, 12, 3, 9, 0, 0, 0, time.UTC)
	now := start
	r := outage.New("orders cannot be stored", "orders stored again", 30*time.Second, slog.New(slog.NewTextHandler(&buf, nil))).
		WithClock(func() time.Time { return now })
	began := 0
	for now.Before(start.Add(time.Minute)) {
		if r.Failed(errors.New("lock table full")) {
			began++
		}
		if r.Err() == nil {
			t.Fatal("Err() = nil right after a failure")
		}
		now = now.Add(200 * time.Millisecond)
		r.Succeeded()
		if err := r.Err(); err != nil {
			t.Fatalf("Err() = %v right after a success", err)
		}
		now = now.Add(300 * time.Millisecond)
	}
	if began != 120 {
		t.Errorf("Failed reported %d outage starts, want 120", began)
	}
	count := func(level string) int { return strings.Count(buf.String(), "level="+level) }
	if got := count("ERROR"); got != 1 {
		t.Errorf("%d ERROR lines for one flapping minute, want 1:\n%s", got, buf.String())
	}
	if got := count("WARN"); got != 1 || !strings.Contains(buf.String(), "again, soon after it recovered") {
		t.Errorf("%d WARN lines, want 1 relapse 30 s in:\n%s", got, buf.String())
	}
	if got := count("INFO"); got != 2 {
		t.Errorf("%d INFO lines, want 2 (the ends of the logged outages):\n%s", got, buf.String())
	}

	// An interval after the last end, a failure is a new outage again.
	now = now.Add(31 * time.Second)
	r.Failed(errors.New("lock table full"))
	if got := count("ERROR"); got != 2 {
		t.Errorf("%d ERROR lines after a quiet interval and a new failure, want 2:\n%s", got, buf.String())
	}
}

// TestAnotherOutageSoonAfterIsNotARelapse: one reporter follows every
// topic the relay cannot produce to. Topic b held a second after topic a
// was let go is a new outage, logged with its end; as a relapse of a's it
// was never logged at all (found by a fresh-eyed attack).
func TestAnotherOutageSoonAfterIsNotARelapse(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)
	r := outage.New("relay cannot produce to a topic", "relay produces to every topic again", 30*time.Second, slog.New(slog.NewTextHandler(&buf, nil))).
		WithClock(func() time.Time { return now })
	r.Failed(errors.New("unknown topic"), "topic", "a")
	now = now.Add(2 * time.Second)
	r.Succeeded()
	now = now.Add(time.Second)
	r.Failed(errors.New("unknown topic"), "topic", "b")
	now = now.Add(2 * time.Second)
	r.Succeeded()
	out := buf.String()
	if n := strings.Count(out, "level=ERROR"); n != 2 || !strings.Contains(out, "topic=b") {
		t.Errorf("%d ERROR lines, want 2, one naming topic b:\n%s", n, out)
	}
	if n := strings.Count(out, "level=INFO"); n != 2 {
		t.Errorf("%d INFO lines, want 2 (each outage's end):\n%s", n, out)
	}
}
