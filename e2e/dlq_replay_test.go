package e2e

import (
	"bytes"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/eventfn/eventfn/cli"
	"github.com/eventfn/eventfn/router"
)

// TestAReplayIsSentOnceAndOnlyAsTheEventWas attacks `dlq replay`:
//   - a mistyped --id replays nothing and exits 1;
//   - two replays that read the dead-letter topic before either marked it
//     (two operators, a retried job) send it once;
//   - a mark left by another event at the same place (a dead-letter topic
//     deleted and created again starts its offsets at 0) is not taken for
//     this one's;
//   - a dead letter whose key was cut to fit, or whose header is not UTF-8
//     text, is not the event that failed and is not replayed;
//   - a dead letter older than retention.inbox is not replayed: the handlers
//     that processed it would have forgotten it and run it again.
func TestAReplayIsSentOnceAndOnlyAsTheEventWas(t *testing.T) {
	t.Parallel()
	cfg := newEngines(t).config(t, nil)
	a := startApp(t, cfg)
	client := kafkaClient(t, cfg)
	invalid := func(key string) []byte {
		b, err := json.Marshal(map[string]any{"order_id": key, "customer_email": "not an email", "total_cents": 1})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ce := func(extra map[string]string) map[string]string {
		h := map[string]string{router.HeaderID: uuid.NewString(), router.HeaderType: "order.placed", router.HeaderSource: "e2e", router.HeaderSpecVersion: "1.0"}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	topic := cfg.Kafka.Topic("order.placed")
	plainKey, longKey, binaryKey := "o-"+uuid.NewString(), "o-"+strings.Repeat("k", 5000), "o-"+uuid.NewString()
	produce(t, client, topic, []byte(plainKey), invalid(plainKey), ce(nil))
	produce(t, client, topic, []byte(longKey), invalid(longKey), ce(nil))
	produce(t, client, topic, []byte(binaryKey), invalid(binaryKey), ce(map[string]string{"x-bin": "\xff\x00\xfe"}))
	byKey := map[string]router.DeadLetter{}
	eventually(t, 60*time.Second, "three dead letters", func() (bool, string) {
		for _, d := range listDeadLetters(t, cfg) {
			switch {
			case d.Key == plainKey:
				byKey["plain"] = d
			case strings.HasPrefix(d.Key, "o-kkk"):
				byKey["long"] = d
			case d.Key == binaryKey:
				byKey["binary"] = d
			}
		}
		return len(byKey) == 3, strings.Join(slices.Sorted(maps.Keys(byKey)), ",")
	})
	a.stop(t) // replays wait in the outbox, where they are counted
	plain := byKey["plain"]

	var out, errOut bytes.Buffer
	if code := cli.Main(t.Context(), []string{"dlq", "replay", "--id", plain.ID + ",0123456789ab"}, strings.NewReader(""), &out, &errOut, cliEnviron(cfg)); code != 1 ||
		!strings.Contains(errOut.String(), "no dead letter 0123456789ab") || !strings.Contains(errOut.String(), "nothing was replayed") {
		t.Errorf("replay of a mistyped id: exit %d\n%s%s", code, out.String(), errOut.String())
	}

	db := openDB(t, cfg)
	ctx := t.Context()
	// The CLI's --json leaves out headers and payload; the replay needs them.
	readOne := func(id string) []router.DeadLetter {
		t.Helper()
		dls, err := router.DeadLetters(ctx, cfg, db, router.DeadLetterFilter{IDs: []string{id}})
		if err != nil || len(dls) != 1 {
			t.Fatalf("read dead letter %s: %d, %v", id, len(dls), err)
		}
		return dls
	}
	read := func() []router.DeadLetter { return readOne(plain.ID) }
	replay := func(dls []router.DeadLetter) router.ReplayResult {
		t.Helper()
		res, err := router.ReplayDeadLetters(ctx, cfg, db, dls, false, false)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	outbox := `SELECT COUNT(*) FROM eventfn_outbox WHERE topic = $1`
	rows := count(t, cfg, outbox, topic)
	first, second := read(), read()
	if res := replay(first); len(res.Sent) != 1 {
		t.Fatalf("first replay: %+v", res)
	}
	if res := replay(second); len(res.Sent) != 0 || len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0].Why, "another replay marked it meanwhile") {
		t.Errorf("a second replay from the same read: %+v", res)
	}
	if n := count(t, cfg, outbox, topic) - rows; n != 1 {
		t.Errorf("two replays of one dead letter queued %d events, want 1", n)
	}

	// The topic recreated: the mark at this place is another event's.
	if _, err := db.ExecContext(ctx, `UPDATE eventfn_dead_letter_replays SET event_id = 'another-event'`); err != nil {
		t.Fatal(err)
	}
	again := read()
	if again[0].Replay != nil {
		t.Errorf("another event's mark shown as this one's replay: %+v", again[0].Replay)
	}
	if res := replay(again); len(res.Sent) != 1 {
		t.Errorf("replay past another event's mark: %+v", res)
	}
	if n := count(t, cfg, `SELECT COUNT(*) FROM eventfn_dead_letter_replays WHERE event_id = $1 AND times = 1`, plain.EventID); n != 1 {
		t.Errorf("the mark was not taken over by %s (%d rows)", plain.EventID, n)
	}

	for _, c := range []struct{ which, why string }{
		{"long", "headers were cut to fit: eventfn_key"},
		{"binary", `header "x-bin" is not UTF-8 text`},
	} {
		res := replay(readOne(byKey[c.which].ID))
		if len(res.Sent) != 0 || len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0].Why, c.why) {
			t.Errorf("replay of the dead letter with the %s key: %+v, want skipped: %s", c.which, res, c.why)
		}
	}

	forgetful := cfg
	forgetful.Retention.Inbox = time.Nanosecond
	res, err := router.ReplayDeadLetters(ctx, forgetful, db, read(), true, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Sent) != 0 || len(res.Skipped) != 1 || !strings.Contains(res.Skipped[0].Why, "older than retention.inbox") {
		t.Errorf("replay past retention.inbox: %+v", res)
	}
}
