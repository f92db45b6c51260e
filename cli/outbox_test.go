package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

// TestOutboxShowsTheRowsHeldForATopic: rows of a topic the relay cannot
// produce to wait aside (held); `eventfn outbox` counts them as pending and
// names their topic, in text and in JSON.
func TestOutboxShowsTheRowsHeldForATopic(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	db, err := store.Open(ctx, store.Config{Driver: store.SQLite, SQLitePath: filepath.Join(dir, "eventfn.db")})
	if err != nil {
		t.Fatal(err)
	}
	table := relay.NewTable(db)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, topic := range []string{"gone", "gone", "fine"} {
		if err := table.Insert(ctx, tx, relay.Record{Topic: topic, Payload: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := table.Hold(ctx, nil, []int64{1, 2}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if code := Main(ctx, append([]string{"outbox"}, args...), strings.NewReader(""), &out, &errOut, []string{"EVENTFN_DATA_DIR=" + dir}); code != 0 {
			t.Fatalf("outbox %v: exit %d: %s", args, code, errOut.String())
		}
		return out.String()
	}
	text := run()
	for _, want := range []string{"pending         3", "held            2 of them for gone"} {
		if !strings.Contains(text, want) {
			t.Errorf("eventfn outbox lacks %q:\n%s", want, text)
		}
	}
	var st OutboxState
	if err := json.Unmarshal([]byte(run("--json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Pending != 3 || len(st.Held) != 1 || st.Held[0] != (relay.HeldTopic{Topic: "gone", Rows: 2}) {
		t.Errorf("eventfn outbox --json: pending %d, held %+v; want 3 pending, 2 held for gone", st.Pending, st.Held)
	}
}
