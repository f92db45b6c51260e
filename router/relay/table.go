package relay

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/eventfn/eventfn/store"
)

// Row states of eventfn_outbox.
const (
	statePending   = 0
	stateForwarded = 1
	stateParked    = 2
	// stateHeld is a pending row of a topic the relay cannot produce to now;
	// it waits out of the pending index, so it holds back only its topic.
	stateHeld = 3
)

// Record is one event on its way to Kafka: a row of the outbox.
type Record struct {
	// Topic is the Kafka topic the record goes to.
	Topic string
	// Key is the record key; nil for none. Records of one key keep their order.
	Key []byte
	// Headers are the record headers (the CloudEvents attributes).
	Headers map[string]string
	// Payload is the record value.
	Payload []byte
}

// recordOverhead bounds what Kafka adds to a record beyond its key, value and
// header bytes: the record batch header (61 bytes) plus per-record and
// per-header varints, with room to spare.
const recordOverhead = 256

// Size is how many bytes the record takes in a Kafka record batch, at most.
func (r Record) Size() int {
	n := recordOverhead + len(r.Key) + len(r.Payload)
	for k, v := range r.Headers {
		n += len(k) + len(v) + 10
	}
	return n
}

// Row is a pending outbox row.
type Row struct {
	ID int64
	Record
	// stored is the bytes of its key, headers and payload as the table
	// holds them: what Limit.Bytes counts.
	stored int
}

// Table is the outbox table, eventfn_outbox, in a database opened by store.
type Table struct {
	db *store.DB
}

// NewTable returns the outbox table of db.
func NewTable(db *store.DB) *Table { return &Table{db: db} }

// Insert writes rec into the outbox inside the caller's transaction.
func (t *Table) Insert(ctx context.Context, tx *sql.Tx, rec Record) error {
	query, args, err := InsertStatement(rec)
	if err != nil {
		return err
	}
	if _, err = tx.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("insert into the outbox: %w", err)
	}
	return nil
}

// InsertStatement is the statement that writes rec to the outbox, for a
// caller that sends it itself (pipelined with its transaction's COMMIT).
func InsertStatement(rec Record) (query string, args []any, err error) {
	headers, err := json.Marshal(rec.Headers)
	if err != nil {
		return "", nil, fmt.Errorf("encode headers: %w", err)
	}
	return `INSERT INTO eventfn_outbox (topic, key, headers, payload) VALUES ($1, $2, $3, $4)`,
		[]any{rec.Topic, rec.Key, string(headers), rec.Payload}, nil
}

// Limit bounds a read of outbox rows.
type Limit struct {
	// Rows is the most rows read.
	Rows int
	// Bytes, when above 0, bounds the rows' bytes as stored (key, headers
	// and payload; headers count as their JSON): rows are
	// read while those before them hold fewer, so the first row is read
	// whatever its size, and the bytes read stay below Bytes plus one row.
	Bytes int
}

// Full reports whether rows, read with l, may have left rows behind that
// fit no more: as many rows as l takes, or as many bytes.
func (l Limit) Full(rows []Row) bool {
	if len(rows) >= l.Rows {
		return true
	}
	return l.Bytes > 0 && storedBytes(rows) >= l.Bytes
}

// storedBytes is what Limit.Bytes counts of rows.
func storedBytes(rows []Row) int {
	n := 0
	for _, r := range rows {
		n += r.stored
	}
	return n
}

// Pending returns the pending rows with ids above after that limit takes,
// oldest id first.
func (t *Table) Pending(ctx context.Context, after int64, limit Limit) ([]Row, error) {
	query, args := t.bounded(`state = 0 AND id > $1`, after, limit)
	return t.rows(ctx, query, args, limit.Bytes)
}

// bounded is the query of the rows where cond holds (its parameter $1 is
// arg), oldest id first, up to limit's rows, and its arguments. rows stops
// at limit's bytes; on PostgreSQL the query stops there too, so that the
// rows left out are not sent: the server sums the sizes of the rows the row
// limit takes, from their lengths alone (the TOAST pointer's, not the
// value's), and a read of rows near kafka.max_message_bytes sent 500 of
// them to keep a few. The sum costs about 0.3 ms per 500-row read. SQLite
// runs in the process and stops stepping when rows stops, at no cost; the
// same sum there cost the embedded relay a fifth of its rate.
func (t *Table) bounded(cond string, arg any, limit Limit) (string, []any) {
	plain := `SELECT id, topic, key, headers, payload FROM eventfn_outbox WHERE ` + cond + ` ORDER BY id LIMIT $2`
	if limit.Bytes <= 0 || t.db.Driver == store.SQLite {
		return plain, []any{arg, limit.Rows}
	}
	return `SELECT id, topic, key, headers, payload FROM (
		SELECT id, topic, key, headers, payload, sum(size) OVER (ORDER BY id) - size AS before FROM (
			SELECT id, topic, key, headers, payload, octet_length(payload) + coalesce(octet_length(key), 0) + octet_length(headers) AS size
			FROM eventfn_outbox WHERE ` + cond + ` ORDER BY id LIMIT $2
		) AS taken
	) AS sized WHERE before < $3 ORDER BY id`, []any{arg, limit.Rows, limit.Bytes}
}

// rows runs query, which selects outbox rows, on the read pool, and takes
// its rows while those taken hold fewer bytes than maxBytes (0 for no
// bound; see Limit).
func (t *Table) rows(ctx context.Context, query string, args []any, maxBytes int) ([]Row, error) {
	rows, err := t.db.Read.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("read pending outbox rows: %w", err)
	}
	defer rows.Close()
	var out []Row
	// The headers are decoded from the driver's buffer: read as a string,
	// they were copied twice per row before decodeHeaders copied them again.
	var headers sql.RawBytes
	taken := 0
	for (maxBytes <= 0 || taken < maxBytes) && rows.Next() {
		var r Row
		if err := rows.Scan(&r.ID, &r.Topic, &r.Key, &headers, &r.Payload); err != nil {
			return nil, fmt.Errorf("scan outbox row: %w", err)
		}
		h, err := decodeHeaders(headers)
		if err != nil {
			// Rows are written by Insert; one that does not decode is parked
			// rather than stopping the relay (see Relay.settle).
			h = map[string]string{headerDecodeError: err.Error()}
		}
		r.Headers = h
		r.stored = len(r.Key) + len(headers) + len(r.Payload)
		out = append(out, r)
		taken += r.stored
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read pending outbox rows: %w", err)
	}
	return out, nil
}

// headerDecodeError marks a row whose headers column did not decode.
const headerDecodeError = "\x00eventfn_header_decode_error"

// MarkForwarded records that the rows with ids were produced to Kafka.
func (t *Table) MarkForwarded(ctx context.Context, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	q, args := t.inList(`UPDATE eventfn_outbox SET state = 1, done_at = `+t.now()+` WHERE state IN (0, 3) AND id`, ids)
	if _, err := t.db.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("mark %d outbox rows forwarded: %w", len(ids), err)
	}
	return nil
}

// Hold moves pending rows of a topic the relay cannot produce to now out of
// the pending rows: the relay's reads no longer meet them, so they hold back
// only their topic, and HeldRows gives them back, in id order, to retry.
// It runs on exec, or on the table's database when exec is nil.
func (t *Table) Hold(ctx context.Context, exec Execer, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	if exec == nil {
		exec = t.db
	}
	q, args := t.inList(`UPDATE eventfn_outbox SET state = 3 WHERE state = 0 AND id`, ids)
	if _, err := exec.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("hold %d outbox rows: %w", len(ids), err)
	}
	return nil
}

// HeldTopics lists the topics that have held rows.
func (t *Table) HeldTopics(ctx context.Context) ([]string, error) {
	rows, err := t.db.QueryContext(ctx, `SELECT DISTINCT topic FROM eventfn_outbox WHERE state = 3`)
	if err != nil {
		return nil, fmt.Errorf("read the topics of held outbox rows: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var topic string
		if err := rows.Scan(&topic); err != nil {
			return nil, fmt.Errorf("scan a held topic: %w", err)
		}
		out = append(out, topic)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the topics of held outbox rows: %w", err)
	}
	return out, nil
}

// HeldRows returns the held rows of topic that limit takes, oldest id first.
func (t *Table) HeldRows(ctx context.Context, topic string, limit Limit) ([]Row, error) {
	query, args := t.bounded(`state = 3 AND topic = $1`, topic, limit)
	return t.rows(ctx, query, args, limit.Bytes)
}

// Park moves a row that can never be produced out of the relay's way, with the
// reason; it stays in the table for an operator.
func (t *Table) Park(ctx context.Context, id int64, reason string) error {
	_, err := t.db.ExecContext(ctx,
		`UPDATE eventfn_outbox SET state = 2, done_at = `+t.now()+`, parked_reason = $1 WHERE id = $2`, reason, id)
	if err != nil {
		return fmt.Errorf("park outbox row %d: %w", id, err)
	}
	return nil
}

// PendingCount counts the rows not yet forwarded, held ones too; it reads
// only the partial indexes of pending and held rows, so it stays cheap
// however many rows were forwarded.
func (t *Table) PendingCount(ctx context.Context) (int64, error) {
	var n int64
	if err := t.db.Read.QueryRowContext(ctx, `SELECT (SELECT COUNT(*) FROM eventfn_outbox WHERE state = 0) +
		(SELECT COUNT(*) FROM eventfn_outbox WHERE state = 3)`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count pending outbox rows: %w", err)
	}
	return n, nil
}

// Stats describes the outbox for metrics and operators.
type Stats struct {
	// Pending counts rows not yet forwarded, Held among them.
	Pending int64
	// Held counts the pending rows of topics the relay cannot produce to
	// now (see Table.Hold).
	Held int64
	// Parked counts rows that can never be produced.
	Parked int64
	// OldestPending is when the oldest pending row was written; zero if none.
	OldestPending time.Time
}

// Stats counts pending and parked rows.
func (t *Table) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	var oldest, oldestHeld sql.NullString
	err := t.db.Read.QueryRowContext(ctx, `SELECT
		(SELECT COUNT(*) FROM eventfn_outbox WHERE state = 0),
		(SELECT COUNT(*) FROM eventfn_outbox WHERE state = 3),
		(SELECT COUNT(*) FROM eventfn_outbox WHERE state = 2),
		(SELECT `+t.text("MIN(created_at)")+` FROM eventfn_outbox WHERE state = 0),
		(SELECT `+t.text("MIN(created_at)")+` FROM eventfn_outbox WHERE state = 3)`).
		Scan(&s.Pending, &s.Held, &s.Parked, &oldest, &oldestHeld)
	if err != nil {
		return s, fmt.Errorf("count outbox rows: %w", err)
	}
	s.Pending += s.Held
	if !oldest.Valid || oldestHeld.Valid && oldestHeld.String < oldest.String {
		oldest = oldestHeld
	}
	if oldest.Valid {
		if ts, err := time.Parse(time.RFC3339Nano, strings.Replace(oldest.String, " ", "T", 1)); err == nil {
			s.OldestPending = ts
		}
	}
	return s, nil
}

// HeldTopic is a topic the relay cannot produce to now, and how many of its
// rows wait for it.
type HeldTopic struct {
	Topic string `json:"topic"`
	Rows  int64  `json:"rows"`
}

// HeldByTopic counts the held rows of each held topic, by topic name.
func (t *Table) HeldByTopic(ctx context.Context) ([]HeldTopic, error) {
	rows, err := t.db.Read.QueryContext(ctx, `SELECT topic, COUNT(*) FROM eventfn_outbox WHERE state = 3 GROUP BY topic ORDER BY topic`)
	if err != nil {
		return nil, fmt.Errorf("count held outbox rows: %w", err)
	}
	defer rows.Close()
	var out []HeldTopic
	for rows.Next() {
		var h HeldTopic
		if err := rows.Scan(&h.Topic, &h.Rows); err != nil {
			return nil, fmt.Errorf("scan held outbox rows: %w", err)
		}
		out = append(out, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count held outbox rows: %w", err)
	}
	return out, nil
}

// ParkedRow is a row the relay moved aside.
type ParkedRow struct {
	ID     int64  `json:"id"`
	Topic  string `json:"topic"`
	Key    string `json:"key"`
	Bytes  int    `json:"bytes"`
	Reason string `json:"reason"`
}

// Parked lists up to limit parked rows, newest first.
func (t *Table) Parked(ctx context.Context, limit int) ([]ParkedRow, error) {
	rows, err := t.db.Read.QueryContext(ctx, `SELECT id, topic, COALESCE(key, ''), LENGTH(payload), COALESCE(parked_reason, '')
		FROM eventfn_outbox WHERE state = 2 ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list parked outbox rows: %w", err)
	}
	defer rows.Close()
	var out []ParkedRow
	for rows.Next() {
		var p ParkedRow
		var key []byte
		if err := rows.Scan(&p.ID, &p.Topic, &key, &p.Bytes, &p.Reason); err != nil {
			return nil, fmt.Errorf("scan parked outbox row: %w", err)
		}
		p.Key = string(key)
		out = append(out, p)
	}
	return out, rows.Err()
}

func (t *Table) now() string {
	if t.db.Driver == store.SQLite {
		return `strftime('%Y-%m-%dT%H:%M:%fZ', 'now')`
	}
	return `now()`
}

// text renders a timestamp expression as RFC 3339 text on either engine.
func (t *Table) text(expr string) string {
	if t.db.Driver == store.SQLite {
		return expr
	}
	return `to_char(` + expr + ` AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`
}

// inList completes prefix ("... AND id") with a membership test for ids:
// = ANY($1) on PostgreSQL (one parameter however many ids); on SQLite IN
// ($1, ...), a parameter per id, up to sqliteMaxListParams ids, and IN
// json_each($1) above. A parameter per id stopped at SQLite's 32,766: a
// relay or retention batch above that could never be marked or deleted.
// json_each is not used for all: its rows are not known to the planner,
// which may then scan the pending index instead of looking the ids up (the
// relay of a 100,000-row backlog ran at 44,000–50,000 rows/s with it, at
// 56,000–57,000 without).
func (t *Table) inList(prefix string, ids []int64) (string, []any) {
	if t.db.Driver == store.Postgres {
		return prefix + ` = ANY($1)`, []any{ids}
	}
	if len(ids) > sqliteMaxListParams {
		b := make([]byte, 0, 2+8*len(ids))
		b = append(b, '[')
		for i, id := range ids {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, id, 10)
		}
		b = append(b, ']')
		return prefix + ` IN (SELECT value FROM json_each($1))`, []any{string(b)}
	}
	var b strings.Builder
	args := make([]any, len(ids))
	b.WriteString(prefix)
	b.WriteString(` IN (`)
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "$%d", i+1)
		args[i] = id
	}
	b.WriteByte(')')
	return b.String(), args
}

// sqliteMaxListParams is the most ids inList gives SQLite one parameter
// each, well below its limit of 32,766 parameters a statement.
const sqliteMaxListParams = 10_000

// DeleteForwarded deletes up to limit rows forwarded more than grace ago,
// oldest first, copying them into eventfn_outbox_archive first when archive
// is set, all in one transaction. Pending and parked rows are never touched.
// It returns how many rows it removed.
func (t *Table) DeleteForwarded(ctx context.Context, grace time.Duration, limit int, archive bool) (int, error) {
	cutoff, arg := t.before(grace)
	// Oldest first along the primary key: old forwarded rows have the lowest
	// ids, so the scan stops after about limit rows however big the table is.
	rows, err := t.db.QueryContext(ctx,
		`SELECT id FROM eventfn_outbox WHERE state = 1 AND done_at < `+cutoff+` ORDER BY id LIMIT $2`, arg, limit)
	if err != nil {
		return 0, fmt.Errorf("find forwarded outbox rows older than %s: %w", grace, err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			_ = rows.Close()
			return 0, fmt.Errorf("scan outbox row id: %w", err)
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return 0, fmt.Errorf("find forwarded outbox rows: %w", err)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find forwarded outbox rows: %w", err)
	}
	if len(ids) == 0 {
		return 0, nil
	}
	tx, err := t.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("begin outbox retention: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	if archive {
		// ON CONFLICT: another replica may have archived the same rows a
		// moment ago; the copy it made is the same.
		q, args := t.inList(`INSERT INTO eventfn_outbox_archive (id, topic, key, headers, payload, created_at, done_at)
			SELECT id, topic, key, headers, payload, created_at, done_at FROM eventfn_outbox WHERE state = 1 AND id`, ids)
		if _, err := tx.ExecContext(ctx, q+` ON CONFLICT (id) DO NOTHING`, args...); err != nil {
			return 0, fmt.Errorf("archive %d forwarded outbox rows: %w", len(ids), err)
		}
	}
	q, args := t.inList(`DELETE FROM eventfn_outbox WHERE state = 1 AND id`, ids)
	res, err := tx.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("delete %d forwarded outbox rows: %w", len(ids), err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit outbox retention: %w", err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// before is a SQL expression for "now minus d" comparable with done_at on
// either engine, and its argument, which takes the place of $1.
func (t *Table) before(d time.Duration) (string, any) {
	if t.db.Driver == store.SQLite {
		return `strftime('%Y-%m-%dT%H:%M:%fZ', 'now', $1)`, fmt.Sprintf("-%.3f seconds", d.Seconds())
	}
	return `now() - $1 * interval '1 microsecond'`, d.Microseconds()
}
