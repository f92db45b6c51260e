package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// openCached opens a one-connection SQLite database through the statement
// cache, with a table t.
func openCached(t *testing.T, size int) (*sql.DB, *sql.Conn) {
	t.Helper()
	db, err := OpenSQLite("file:" + filepath.Join(t.TempDir(), "cache.db") + "?_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if err := conn.Raw(func(dc any) error {
		dc.(*cachingConn).size = size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return db, conn
}

// cached is the texts the connection holds prepared, most recent first.
func cached(t *testing.T, conn *sql.Conn) []string {
	t.Helper()
	var texts []string
	if err := conn.Raw(func(dc any) error {
		c := dc.(*cachingConn)
		for e := c.lru.Front(); e != nil; e = e.Next() {
			texts = append(texts, e.Value.(*cachedStmt).query)
		}
		if len(texts) != len(c.byQuery) {
			return fmt.Errorf("the list holds %d statements, the map %d", len(texts), len(c.byQuery))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return texts
}

func count(t *testing.T, conn *sql.Conn) int {
	t.Helper()
	var n int
	if err := conn.QueryRowContext(context.Background(), `SELECT count(*) FROM t`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestStatementsArePreparedOnceAndRunWithTheirOwnArguments: a statement run
// again reuses its prepared form, with the new arguments, in and out of
// transactions, and the least recently used statement goes past the size.
func TestStatementsArePreparedOnceAndRunWithTheirOwnArguments(t *testing.T) {
	ctx := context.Background()
	_, conn := openCached(t, 3)
	const insert = `INSERT INTO t (id, v) VALUES ($1, $2)`
	for i := range 3 {
		if _, err := conn.ExecContext(ctx, insert, i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, insert, 3, "v3"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var v string
	for i := range 4 {
		if err := conn.QueryRowContext(ctx, `SELECT v FROM t WHERE id = $1`, i).Scan(&v); err != nil || v != fmt.Sprint("v", i) {
			t.Fatalf("row %d: %q, %v", i, v, err)
		}
	}
	got := cached(t, conn)
	want := []string{`SELECT v FROM t WHERE id = $1`, insert, `CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("cached %q, want %q", got, want)
	}
	if n := count(t, conn); n != 4 {
		t.Fatalf("%d rows, want 4", n)
	}
	if got := cached(t, conn); len(got) != 3 || got[0] != `SELECT count(*) FROM t` || got[2] != insert {
		t.Fatalf("after one more statement past the size, cached %q: want the CREATE TABLE dropped", got)
	}
}

// TestAStatementWhoseRowsAreOpenRunsUncached: running a query's text again
// while its rows are being read must not reset them.
func TestAStatementWhoseRowsAreOpenRunsUncached(t *testing.T) {
	ctx := context.Background()
	_, conn := openCached(t, 8)
	for i := range 3 {
		if _, err := conn.ExecContext(ctx, `INSERT INTO t (id, v) VALUES ($1, $2)`, i, fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	const q = `SELECT id, v FROM t WHERE id >= $1 ORDER BY id`
	outer, err := tx.QueryContext(ctx, q, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int
	for outer.Next() {
		ids = append(ids, scanID(t, outer))
		// The same text, while outer is open.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM (`+q+`)`, 1).Scan(&n); err != nil {
			t.Fatal(err)
		}
		inner, err := tx.QueryContext(ctx, q, 2)
		if err != nil {
			t.Fatal(err)
		}
		var innerIDs []int
		for inner.Next() {
			innerIDs = append(innerIDs, scanID(t, inner))
		}
		if err := inner.Close(); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(innerIDs) != "[2]" {
			t.Fatalf("inner query read %v, want [2]", innerIDs)
		}
	}
	if err := outer.Err(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ids) != "[0 1 2]" {
		t.Fatalf("outer query read %v, want [0 1 2]: it was disturbed by the same statement run beside it", ids)
	}
	if err := outer.Close(); err != nil {
		t.Fatal(err)
	}
	// Closed, the statement runs from the cache again, and ColumnTypes
	// works through the cache's rows.
	rows, err := tx.QueryContext(ctx, q, 1)
	if err != nil {
		t.Fatal(err)
	}
	types, err := rows.ColumnTypes()
	if err != nil || len(types) != 2 || types[0].DatabaseTypeName() != "INTEGER" || types[1].DatabaseTypeName() != "TEXT" {
		t.Fatalf("column types %v, %v", types, err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Close(); err != nil || n != 2 {
		t.Fatalf("read %d rows (%v), want 2", n, err)
	}
}

// scanID scans a row of (id, v) and returns its id.
func scanID(t *testing.T, rows *sql.Rows) int {
	t.Helper()
	var id int
	var v string
	if err := rows.Scan(&id, &v); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestFailuresThroughTheCacheAreTheStatementsOwn: a statement that does not
// prepare is not kept; one that fails when run stays usable; a statement
// cached before a schema change runs against the new schema; a canceled
// context ends a statement with its error; and the connection closes with
// statements cached.
func TestFailuresThroughTheCacheAreTheStatementsOwn(t *testing.T) {
	ctx := context.Background()
	db, conn := openCached(t, 8)
	if _, err := conn.ExecContext(ctx, `INSERT INTO nowhere (id) VALUES ($1)`, 1); err == nil || !errorContains(err, "no such table") {
		t.Fatalf("insert into a missing table: %v", err)
	}
	for _, q := range cached(t, conn) {
		if q == `INSERT INTO nowhere (id) VALUES ($1)` {
			t.Fatal("a statement that failed to prepare was cached")
		}
	}
	const insert = `INSERT INTO t (id, v) VALUES ($1, $2)`
	if _, err := conn.ExecContext(ctx, insert, 1, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, insert, 1, "b"); err == nil || !errorContains(err, "UNIQUE") {
		t.Fatalf("duplicate key: %v", err)
	}
	if _, err := conn.ExecContext(ctx, insert, 2, "b"); err != nil {
		t.Fatalf("the statement after its own failure: %v", err)
	}
	const read = `SELECT * FROM t WHERE id = $1`
	var id int
	var v string
	if err := conn.QueryRowContext(ctx, read, 2).Scan(&id, &v); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.ExecContext(ctx, `ALTER TABLE t ADD COLUMN w TEXT NOT NULL DEFAULT 'w'`); err != nil {
		t.Fatal(err)
	}
	var w string
	if err := conn.QueryRowContext(ctx, read, 2).Scan(&id, &v, &w); err != nil || w != "w" {
		t.Fatalf("the cached SELECT * after a new column: %q, %v", w, err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := conn.ExecContext(canceled, insert, 3, "c"); !errors.Is(err, context.Canceled) {
		t.Fatalf("a canceled insert: %v", err)
	}
	if _, err := conn.ExecContext(ctx, insert, 3, "c"); err != nil {
		t.Fatalf("the insert after a canceled one: %v", err)
	}
	if n := count(t, conn); n != 2+1 {
		t.Fatalf("%d rows, want 3", n)
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	closeCtx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	if err := db.PingContext(closeCtx); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatalf("close with statements cached: %v", err)
	}
}

func errorContains(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
