package store

import (
	"context"
	"path/filepath"
	"testing"
)

// TestTheSQLiteWriterCheckpointsLessOftenThanSQLitesDefault: the writer,
// whose commits every transaction waits for, checkpoints every
// walCheckpointPages; readers never commit, so theirs is moot.
func TestTheSQLiteWriterCheckpointsLessOftenThanSQLitesDefault(t *testing.T) {
	ctx := context.Background()
	db, err := Open(ctx, Config{Driver: SQLite, SQLitePath: filepath.Join(t.TempDir(), "wal.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var pages int
	if err := db.QueryRowContext(ctx, `PRAGMA wal_autocheckpoint`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if pages != walCheckpointPages || pages <= 1000 {
		t.Fatalf("the writer checkpoints every %d pages, want %d", pages, walCheckpointPages)
	}
}
