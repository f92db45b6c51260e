package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/eventfn/eventfn/router/relay"
)

// TestDeleteForwardedTakesOnlyOldForwardedRows: pending rows wait for the
// relay and parked rows for an operator; retention takes neither, nor a
// forwarded row younger than the grace. Archiving copies before deleting.
func TestDeleteForwardedTakesOnlyOldForwardedRows(t *testing.T) {
	t.Parallel()
	for _, archive := range []bool{false, true} {
		t.Run(fmt.Sprintf("archive=%t", archive), func(t *testing.T) {
			t.Parallel()
			e := open(t)
			ctx := context.Background()
			table := relay.NewTable(e.db)
			recs := make([]relay.Record, 6)
			for i := range recs {
				recs[i] = relay.Record{Topic: "t", Key: []byte("k"), Headers: map[string]string{"ce_id": fmt.Sprint(i)}, Payload: []byte("{}")}
			}
			insert(t, e, recs, 6)
			// ids 1-3 forwarded and 4 parked long ago; 5 forwarded just now; 6 pending.
			if err := table.MarkForwarded(ctx, []int64{1, 2, 3}); err != nil {
				t.Fatal(err)
			}
			if err := table.Park(ctx, 4, "too big"); err != nil {
				t.Fatal(err)
			}
			if err := table.MarkForwarded(ctx, []int64{5}); err != nil {
				t.Fatal(err)
			}
			// Rows 1-4 are done an hour ago.
			past := `now() - interval '1 hour'`
			if e.url == "" {
				past = `strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 hours')`
			}
			if _, err := e.db.ExecContext(ctx, `UPDATE eventfn_outbox SET done_at = `+past+` WHERE id <= 4`); err != nil {
				t.Fatal(err)
			}
			grace := time.Minute
			// A batch of two: the oldest first, then the third, then nothing.
			for _, want := range []int{2, 1, 0} {
				n, err := table.DeleteForwarded(ctx, grace, 2, archive)
				if err != nil {
					t.Fatal(err)
				}
				if n != want {
					t.Fatalf("deleted %d rows, want %d", n, want)
				}
			}
			var left []int64
			rows, err := e.db.QueryContext(ctx, `SELECT id FROM eventfn_outbox ORDER BY id`)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					t.Fatal(err)
				}
				left = append(left, id)
			}
			_ = rows.Close()
			if fmt.Sprint(left) != "[4 5 6]" {
				t.Errorf("rows left %v, want the parked, the young forwarded and the pending one: [4 5 6]", left)
			}
			var archived int
			if err := e.db.QueryRowContext(ctx, `SELECT count(*) FROM eventfn_outbox_archive`).Scan(&archived); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 3, false: 0}[archive]; archived != want {
				t.Errorf("%d rows archived, want %d", archived, want)
			}
		})
	}
}
