package store

import (
	"context"
	"database/sql"
	"path/filepath"
	"testing"
)

// BenchmarkSQLiteInboxClaim runs the runtime's inbox claim, eventfn's
// costliest statement to parse, in a transaction per call, on one
// connection: through the statement cache and through the driver alone.
func BenchmarkSQLiteInboxClaim(b *testing.B) {
	const claim = `INSERT INTO inbox (handler, source, event_id, event_type)
		SELECT $1, $2, $3, $4
		WHERE NOT EXISTS (SELECT 1 FROM inbox WHERE handler = $1 AND source = '' AND event_id = $3)
		ON CONFLICT DO NOTHING`
	for _, c := range []struct {
		name string
		open func(dsn string) (*sql.DB, error)
	}{
		{"cached", OpenSQLite},
		{"driver", func(dsn string) (*sql.DB, error) { return sql.Open("sqlite", dsn) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			db, err := c.open("file:" + filepath.Join(b.TempDir(), "bench.db") + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate")
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(1)
			if _, err := db.ExecContext(ctx, `CREATE TABLE inbox (handler TEXT, source TEXT, event_id TEXT, event_type TEXT, PRIMARY KEY (handler, source, event_id))`); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := range b.N {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, claim, "h", "s", i, "t"); err != nil {
					b.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
