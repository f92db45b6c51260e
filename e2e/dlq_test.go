package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/cli"
	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
)

// cliEnviron points the CLI at the engines, topics and database of cfg.
func cliEnviron(cfg configs.Config) []string {
	return []string{
		"EVENTFN_PROFILE=test",
		"EVENTFN_DATA_DIR=" + cfg.DataDir,
		"EVENTFN_KAFKA_EMBEDDED=false",
		"EVENTFN_KAFKA_BROKERS=" + strings.Join(cfg.Kafka.Brokers, ","),
		"EVENTFN_KAFKA_TOPIC_PREFIX=" + cfg.Kafka.TopicPrefix,
		"EVENTFN_DATABASE_URL=" + cfg.Database.URL,
		"EVENTFN_RUN_START_POSITION=" + cfg.Run.StartPosition,
	}
}

// runCLI runs the eventfn command line and returns its standard output; a
// non-zero exit fails the test.
func runCLI(t *testing.T, cfg configs.Config, args ...string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	if code := cli.Main(t.Context(), args, strings.NewReader(""), &out, &errOut, cliEnviron(cfg)); code != 0 {
		t.Fatalf("eventfn %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	return out.String()
}

func listDeadLetters(t *testing.T, cfg configs.Config, args ...string) []router.DeadLetter {
	t.Helper()
	var dls []router.DeadLetter
	out := runCLI(t, cfg, append([]string{"dlq", "list", "--json"}, args...)...)
	if err := json.Unmarshal([]byte(out), &dls); err != nil {
		t.Fatalf("dlq list --json: %v\n%s", err, out)
	}
	return dls
}

// TestDeadLettersAreListedFixedAndReplayedOnce: a failing payment gateway
// dead-letters three orders. `dlq list` shows them, filtered by handler, type,
// reason and time; `dlq show` prints one whole; `dlq replay --dry-run` sends
// nothing. The failure is fixed by configuration (eventfn restarted without
// it), and `dlq replay --handler charge-payment` sends them back: each order is
// charged once and emailed once. A second replay sends nothing; `--again`
// sends them, and the inbox makes every handler do nothing twice. `dlq list`
// then shows each replay handled.
func TestDeadLettersAreListedFixedAndReplayedOnce(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	zero := 0
	failing := e.config(t, func(c *configs.Config) {
		c.Payments.FailAttempts = 1000
		p := c.Handlers["charge-payment"]
		p.MaxRetries = &zero
		c.Handlers["charge-payment"] = p
	})
	before := time.Now().Add(-time.Second)
	a := startApp(t, failing)
	var ids []string
	for i := range 3 {
		ids = append(ids, a.placeOrder(t, fmt.Sprintf("dlq-%d@example.com", i)))
	}
	var dls []router.DeadLetter
	eventually(t, 60*time.Second, "three dead letters listed", func() (bool, string) {
		dls = listDeadLetters(t, failing)
		return len(dls) == 3, fmt.Sprintf("%d listed", len(dls))
	})
	a.stop(t)
	for _, d := range dls {
		if d.Handler != "charge-payment" || d.Type != "order.placed" || d.Attempts != 1 || d.Replay != nil ||
			!strings.Contains(d.Reason, "payment gateway failed the charge") || d.OriginTopic != failing.Kafka.Topic("order.placed") ||
			d.Time.Before(before) || d.ID == "" {
			t.Errorf("dead letter %+v", d)
		}
	}
	for _, c := range []struct {
		args []string
		want int
	}{
		{[]string{"--handler", "charge-payment"}, 3},
		{[]string{"--handler", "send-confirmation"}, 0},
		{[]string{"--type", "order.placed"}, 3},
		{[]string{"--reason", "failed the charge"}, 3},
		{[]string{"--reason", "no such reason"}, 0},
		{[]string{"--since", "1h"}, 3},
		{[]string{"--until", "1h"}, 0},
		{[]string{"--since", time.Now().Add(time.Minute).UTC().Format(time.RFC3339)}, 0},
		{[]string{"--id", dls[0].ID + "," + dls[1].ID}, 2},
	} {
		if got := len(listDeadLetters(t, failing, c.args...)); got != c.want {
			t.Errorf("dlq list %v: %d, want %d", c.args, got, c.want)
		}
	}
	shown := runCLI(t, failing, "dlq", "show", dls[0].ID)
	for _, want := range []string{"reason_poisoned", "ce_id", "payload (", `"order_id"`} {
		if !strings.Contains(shown, want) {
			t.Errorf("dlq show lacks %q:\n%s", want, shown)
		}
	}
	table := runCLI(t, failing, "dlq", "list")
	if !strings.Contains(table, "HANDLER") || strings.Count(table, "charge-payment") != 3 {
		t.Errorf("dlq list:\n%s", table)
	}
	outbox := `SELECT count(*) FROM eventfn_outbox`
	rows := count(t, failing, outbox)
	if out := runCLI(t, failing, "dlq", "replay", "--handler", "charge-payment", "--dry-run"); !strings.Contains(out, "would replay 3") {
		t.Errorf("dry run:\n%s", out)
	}
	if n := count(t, failing, outbox); n != rows {
		t.Errorf("a dry run wrote %d outbox rows", n-rows)
	}

	// The fix: the same deployment without the failing gateway.
	fixed := failing
	fixed.Payments.FailAttempts = 0
	if strings.HasPrefix(fixed.Database.URL, "postgres") {
		// The replay commits in a process of its own (the CLI): on
		// PostgreSQL its rows reach the running relay by a notification,
		// not by the relay's poll.
		fixed.Relay.PollInterval = time.Hour
	}
	b := startApp(t, fixed)
	if out := runCLI(t, fixed, "dlq", "replay", "--handler", "charge-payment"); !strings.Contains(out, "replayed 3, skipped 0") {
		t.Fatalf("replay:\n%s", out)
	}
	b.waitEmailed(t, ids, 60*time.Second)
	charged := func() {
		t.Helper()
		for _, id := range ids {
			if n := b.Payments.Attempts("order-" + id); n != 1 {
				t.Errorf("order %s: %d charges after the fix, want 1", id, n)
			}
		}
		if n := count(t, fixed, `SELECT count(*) FROM payments`); n != 3 {
			t.Errorf("%d payments, want 3", n)
		}
		if n := count(t, fixed, `SELECT count(*) FROM emails`); n != 3 {
			t.Errorf("%d emails, want 3", n)
		}
	}
	charged()
	eventually(t, 30*time.Second, "every replay shown handled", func() (bool, string) {
		var got []string
		for _, d := range listDeadLetters(t, fixed) {
			if d.Replay == nil || d.Replay.Outcome != router.ReplayHandled {
				got = append(got, fmt.Sprintf("%s %+v", d.ID, d.Replay))
			}
		}
		return len(got) == 0, strings.Join(got, "; ")
	})
	if out := runCLI(t, fixed, "dlq", "replay", "--handler", "charge-payment"); !strings.Contains(out, "replayed 0, skipped 3") {
		t.Errorf("second replay:\n%s", out)
	}
	if out := runCLI(t, fixed, "dlq", "replay", "--handler", "charge-payment", "--again"); !strings.Contains(out, "replayed 3, skipped 0") {
		t.Errorf("replay --again:\n%s", out)
	}
	eventually(t, 30*time.Second, "the replays --again reached charge-payment", func() (bool, string) {
		m := b.get(t, "/metrics")
		return strings.Contains(m, `eventfn_inbox_duplicates_total{handler="charge-payment"} 3`), "duplicates not counted yet"
	})
	charged()
	for _, d := range listDeadLetters(t, fixed) {
		if d.Replay == nil || d.Replay.Times != 2 {
			t.Errorf("dead letter %s replay %+v, want replayed twice", d.ID, d.Replay)
		}
	}
}

// TestDLQReplayNeedsASelection: replaying every dead letter by accident is
// refused; a selection is required.
func TestDLQReplayNeedsASelection(t *testing.T) {
	t.Parallel()
	cfg := newEngines(t).config(t, nil)
	var out, errOut bytes.Buffer
	code := cli.Main(t.Context(), []string{"dlq", "replay"}, strings.NewReader(""), &out, &errOut, cliEnviron(cfg))
	if code != 2 || !strings.Contains(errOut.String(), "say what to replay") {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	code = cli.Main(t.Context(), []string{"dlq", "list", "--since", "yesterday"}, strings.NewReader(""), &out, &errOut, cliEnviron(cfg))
	if code != 2 || !strings.Contains(errOut.String(), "--since") {
		t.Fatalf("a bad --since: exit %d: %s", code, errOut.String())
	}
}
