package router

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"strings"
	"testing"
	"time"
)

// nullOnNil is a Valuer on the value receiver: database/sql sends a nil
// *nullOnNil as NULL rather than calling Value on nil.
type nullOnNil struct{ s string }

func (v nullOnNil) Value() (driver.Value, error) { return v.s, nil }

// TestAPanicInAValuerLeavesTheTransactionUsable: a handler statement whose
// driver.Valuer panics fails its call like a panic in the handler (the
// middleware recovers it), and the transaction still rolls back: the panic
// no longer unwinds through database/sql, which kept its locks, so the
// rollback, and on SQLite every later write, waited forever. A nil pointer
// whose Valuer has a value receiver is still NULL.
func TestAPanicInAValuerLeavesTheTransactionUsable(t *testing.T) {
	db := openBatchDB(t)
	statements := []struct {
		name string
		run  func(ctx context.Context, tx sqlExecutor) error
	}{
		{"exec", func(ctx context.Context, tx sqlExecutor) error {
			_, err := tx.ExecContext(ctx, `INSERT INTO parents (id) VALUES ($1)`, panickingValue{})
			return err
		}},
		{"query", func(ctx context.Context, tx sqlExecutor) error {
			rows, err := tx.QueryContext(ctx, `SELECT id FROM parents WHERE id = $1`, panickingValue{})
			if err == nil {
				err = rows.Close()
			}
			return err
		}},
		{"query row", func(ctx context.Context, tx sqlExecutor) error {
			var id string
			return tx.QueryRowContext(ctx, `SELECT id FROM parents WHERE id = $1`, panickingValue{}).Scan(&id)
		}},
	}
	for _, st := range statements {
		t.Run(st.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				_, err := inTx(ctx, db, nil, func(ctx context.Context, tx sqlExecutor) (work toCommit, err error) {
					defer func() { // as the handler middleware does
						if p := recover(); p != nil {
							err = fmt.Errorf("handler panicked: %v", p)
						}
					}()
					if _, err := tx.ExecContext(ctx, `INSERT INTO written (name) VALUES ($1)`, "before-"+st.name); err != nil {
						return work, err
					}
					return work, st.run(ctx, tx)
				})
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "handler panicked: a broken driver.Valuer") {
					t.Fatalf("the call: %v, want its panic", err)
				}
			case <-ctx.Done():
				t.Fatal("the transaction did not end after a panic in a Valuer")
			}
			// Rolled back, and the database takes the next transaction.
			var n int
			if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM written WHERE name = $1`, "before-"+st.name).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Fatalf("the call's first statement committed")
			}
			if _, err := inTx(ctx, db, nil, func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
				var none *nullOnNil
				_, err := tx.ExecContext(ctx, `INSERT INTO written (name, parent) VALUES ($1, $2)`, "after-"+st.name, none)
				return toCommit{}, err
			}); err != nil {
				t.Fatalf("the next transaction: %v", err)
			}
			var parent sql.NullString
			if err := db.QueryRowContext(ctx, `SELECT parent FROM written WHERE name = $1`, "after-"+st.name).Scan(&parent); err != nil {
				t.Fatal(err)
			}
			if parent.Valid {
				t.Fatalf("a nil *nullOnNil was stored as %q, want NULL", parent.String)
			}
		})
	}
}
