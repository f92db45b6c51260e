package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
)

// TestAnIdleTransactionElsewhereDoesNotStallOrders: on PostgreSQL the relay
// once waited for the oldest open transaction of the whole server, so one
// idle session anywhere kept every new order "placed" for as long as it
// stayed open. Orders must complete while it stays open.
func TestAnIdleTransactionElsewhereDoesNotStallOrders(t *testing.T) {
	t.Parallel()
	base := testenv.RequirePostgres(t)
	e := newEngines(t)
	a := startApp(t, e.config(t, nil))

	other, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx := context.Background()
	idle, err := other.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = idle.Rollback() }()
	if _, err := idle.ExecContext(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}

	var ids []string
	for i := range 5 {
		ids = append(ids, a.placeOrder(t, fmt.Sprintf("idle%d@example.com", i)))
	}
	// Well under the minute the transaction stays open: with the old relay
	// the orders stayed placed until it ended.
	a.waitEmailed(t, ids, 20*time.Second)
	if err := idle.Rollback(); err != nil {
		t.Fatal(err)
	}
}
