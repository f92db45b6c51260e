package store

import (
	"io/fs"
	"regexp"
	"strings"
	"testing"
)

// changesAnOlderReleaseReads matches what a migration's Up may not do: take
// away or change what the release before it reads and writes (a table, a
// column, an index, a column's type), make its writes fail (a column it
// does not write that must not be NULL and has no default; a constraint,
// as a CHECK, a foreign key or a unique one, on what it writes), or make
// its writes do more (a trigger).
var changesAnOlderReleaseReads = regexp.MustCompile(`(?is)\bDROP\b|\bRENAME\b|\bALTER\s+COLUMN\b|\bSET\s+NOT\s+NULL\b|\bADD\s+(?:CONSTRAINT|CHECK|UNIQUE|PRIMARY|FOREIGN)\b|\bCREATE\s+(?:OR\s+REPLACE\s+)?TRIGGER\b|\bADD\s+(?:COLUMN\s+)?\w+\s+[\w ()]*\bNOT\s+NULL\b(?:[^,;]*\bDEFAULT\b)?`)

// uniqueIndex matches a unique index and captures its table and columns:
// one on columns the release before writes can refuse its writes.
var uniqueIndex = regexp.MustCompile(`(?is)\bCREATE\s+UNIQUE\s+INDEX\s+(?:IF\s+NOT\s+EXISTS\s+)?\w+\s+ON\s+(\w+)\s*\(([^)]*)\)`)

// addedHere match what a migration adds itself: a table, and a column.
var (
	createdTable = regexp.MustCompile(`(?is)\bCREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)`)
	addedColumn  = regexp.MustCompile(`(?is)\bALTER\s+TABLE\s+(\w+)\s+ADD\s+(?:COLUMN\s+)?(\w+)`)
)

// beforeThePolicy are the migrations written before eventfn promised that
// the release before a migration runs on the schema after it: 4 rebuilt
// the inbox's primary key to add the event's source.
var beforeThePolicy = map[string]bool{"00004_inbox_source.sql": true}

// TestMigrationsOnlyAdd: every migration's Up only adds what the release
// before it does not read (tables, nullable or defaulted columns, indexes),
// so that release runs on the new schema: during a rolling deploy, and
// after a rollback, with no Down to run (store.migrate warns of a schema
// newer than the binary and goes on).
func TestMigrationsOnlyAdd(t *testing.T) {
	for _, driver := range []string{"postgres", "sqlite"} {
		dir := "migrations/" + driver
		entries, err := fs.ReadDir(migrations, dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			raw, err := fs.ReadFile(migrations, dir+"/"+e.Name())
			if err != nil {
				t.Fatal(err)
			}
			found := takesAway(string(raw))
			if beforeThePolicy[e.Name()] {
				if len(found) == 0 {
					t.Errorf("%s/%s is listed as before the policy but takes nothing away: take it off the list", driver, e.Name())
				}
				continue
			}
			for _, m := range found {
				t.Errorf("%s/%s: Up has %q, which the release before it would meet: add instead (a new column nullable or with a default, a new table or index), and take away in a later release's migration once no release reads it",
					driver, e.Name(), m)
			}
		}
	}
}

// takesAway returns what a migration's Up does that the release before it
// would meet (see changesAnOlderReleaseReads), comments left out.
func takesAway(migration string) []string {
	up, _, _ := strings.Cut(migration, "-- +goose Down")
	var sql strings.Builder
	for _, line := range strings.Split(up, "\n") {
		code, _, _ := strings.Cut(line, "--")
		sql.WriteString(code + "\n")
	}
	code := sql.String()
	var found []string
	for _, m := range changesAnOlderReleaseReads.FindAllString(code, -1) {
		if !strings.Contains(strings.ToUpper(m), "DEFAULT") {
			found = append(found, strings.Join(strings.Fields(m), " "))
		}
	}
	// A unique index is new to the release before only on a table or on
	// columns this migration adds.
	added := map[string]bool{}
	for _, m := range createdTable.FindAllStringSubmatch(code, -1) {
		added[strings.ToLower(m[1])] = true
	}
	for _, m := range addedColumn.FindAllStringSubmatch(code, -1) {
		added[strings.ToLower(m[1]+"."+m[2])] = true
	}
	for _, m := range uniqueIndex.FindAllStringSubmatch(code, -1) {
		table := strings.ToLower(m[1])
		if added[table] {
			continue
		}
		for _, col := range strings.Split(m[2], ",") {
			if !added[table+"."+strings.ToLower(strings.TrimSpace(col))] {
				found = append(found, strings.Join(strings.Fields(m[0]), " "))
				break
			}
		}
	}
	return found
}

// TestTakesAwayTellsWhatAnOlderReleaseWouldMeet: the check above finds each
// way of taking away, and lets each way of adding through.
func TestTakesAwayTellsWhatAnOlderReleaseWouldMeet(t *testing.T) {
	for _, tc := range []struct {
		up        string
		takesAway bool
	}{
		{"ALTER TABLE orders ADD COLUMN note TEXT;", false},
		{"ALTER TABLE orders ADD COLUMN tries INTEGER NOT NULL DEFAULT 0;", false},
		{"ALTER TABLE orders ADD tries INTEGER NOT NULL;", true},
		{"ALTER TABLE orders ADD COLUMN tries INTEGER NOT NULL;", true},
		{"CREATE TABLE t (id TEXT NOT NULL PRIMARY KEY);", false},
		{"ALTER TABLE orders ADD COLUMN note TEXT;\nCREATE UNIQUE INDEX i ON orders (note) WHERE note IS NOT NULL;", false},
		{"CREATE TABLE t (id TEXT, k TEXT);\nCREATE UNIQUE INDEX i ON t (k);", false},
		{"CREATE UNIQUE INDEX i ON orders (customer_email);", true},
		{"ALTER TABLE orders ADD COLUMN note TEXT;\nCREATE UNIQUE INDEX i ON orders (note, customer_email);", true},
		{"ALTER TABLE orders ADD CONSTRAINT positive CHECK (total_cents >= 0);", true},
		{"ALTER TABLE order_items ADD FOREIGN KEY (sku) REFERENCES skus (sku);", true},
		{"CREATE TRIGGER t BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f();", true},
		{"CREATE INDEX i ON orders (customer_email);", false},
		{"ALTER TABLE orders DROP COLUMN note;", true},
		{"DROP INDEX orders_idempotency_key;", true},
		{"ALTER TABLE orders RENAME COLUMN note TO notes;", true},
		{"ALTER TABLE orders ALTER COLUMN note TYPE INTEGER;", true},
		{"ALTER TABLE orders ALTER note SET NOT NULL;", true},
		{"-- DROP TABLE orders is for a later release\nCREATE INDEX i ON orders (note);", false},
		{"CREATE INDEX i ON orders (note);\n-- +goose Down\nDROP INDEX i;", false},
	} {
		if got := takesAway(tc.up); (len(got) > 0) != tc.takesAway {
			t.Errorf("takesAway(%q) = %q; want something: %v", tc.up, got, tc.takesAway)
		}
	}
}
