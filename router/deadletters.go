package router

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/store"
)

// DeadLetter is one record of the dead-letter topic, as an operator sees it.
type DeadLetter struct {
	// ID names the dead letter for `dlq show` and `dlq replay --id`; it is
	// opaque, derived from where the record is, which is eventfn's business.
	ID string `json:"id"`
	// Time is when it was dead-lettered.
	Time     time.Time `json:"time"`
	Handler  string    `json:"handler"`
	Type     string    `json:"type"`
	EventID  string    `json:"event_id"`
	Source   string    `json:"source"`
	Key      string    `json:"key"`
	Reason   string    `json:"reason"`
	Attempts int       `json:"attempts"`
	// Origin is where the event was read from.
	OriginTopic     string `json:"origin_topic"`
	OriginPartition int32  `json:"origin_partition"`
	OriginOffset    int64  `json:"origin_offset"`
	// Truncated says the payload was cut to fit: it cannot be replayed from
	// here; the whole record is at the origin until Kafka's retention ends.
	Truncated bool `json:"payload_truncated"`
	// Replay is set once it was replayed.
	Replay *Replay `json:"replay,omitempty"`

	Headers map[string]string `json:"headers,omitempty"`
	Payload []byte            `json:"-"`

	key       []byte
	partition int32
	offset    int64
}

// Replay is what became of a replayed dead letter.
type Replay struct {
	At    time.Time `json:"at"`
	Times int       `json:"times"`
	// Outcome is handled (its handler committed it), dead-lettered again, or
	// pending (not handled yet: no eventfn runs, or it is being retried).
	Outcome string `json:"outcome"`
}

// Replay outcomes.
const (
	ReplayHandled      = "handled"
	ReplayDeadLettered = "dead-lettered again"
	ReplayPending      = "pending"
)

// DeadLetterFilter selects dead letters; zero fields select all.
type DeadLetterFilter struct {
	Handler string
	Type    string
	// Reason selects dead letters whose reason contains it.
	Reason       string
	Since, Until time.Time
	IDs          []string
}

func (f DeadLetterFilter) match(d DeadLetter) bool {
	return (f.Handler == "" || d.Handler == f.Handler) &&
		(f.Type == "" || d.Type == f.Type) &&
		(f.Reason == "" || strings.Contains(d.Reason, f.Reason)) &&
		(f.Since.IsZero() || !d.Time.Before(f.Since)) &&
		(f.Until.IsZero() || d.Time.Before(f.Until)) &&
		(len(f.IDs) == 0 || slices.Contains(f.IDs, d.ID))
}

// DeadLetters reads the dead-letter topic from its start to its end as they
// are now and returns the dead letters f selects, oldest first, each with
// what became of its replay.
func DeadLetters(ctx context.Context, cfg configs.Config, db *store.DB, f DeadLetterFilter) ([]DeadLetter, error) {
	topic := cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic)
	// Every dead letter is needed (a later one of the same handler and event
	// tells what became of a replay), but the headers and payload only of
	// those f selects: a large topic of large records is read through, not
	// held. The kept ones are copied, so no fetch buffer outlives its poll.
	var all []DeadLetter
	err := readTopic(ctx, cfg.Kafka, topic, func(r *kgo.Record) {
		d := deadLetterOf(topic, r)
		if f.match(d) {
			d.Payload, d.key = bytes.Clone(d.Payload), bytes.Clone(d.key)
		} else {
			d.Payload, d.key, d.Headers, d.Reason, d.Key = nil, nil, nil, "", ""
		}
		all = append(all, d)
	})
	if err != nil {
		return nil, err
	}
	replays, err := loadReplays(ctx, db, topic)
	if err != nil {
		return nil, err
	}
	var out []DeadLetter
	for _, d := range all {
		if m, ok := replays[[2]int64{int64(d.partition), d.offset}]; ok && m.handler == d.Handler && m.eventID == d.EventID {
			rp := m.Replay
			rp.Outcome, err = replayOutcome(ctx, db, d, rp, all)
			if err != nil {
				return nil, err
			}
			d.Replay = &rp
		}
		if f.match(d) {
			out = append(out, d)
		}
	}
	slices.SortStableFunc(out, func(a, b DeadLetter) int { return a.Time.Compare(b.Time) })
	return out, nil
}

// ReplayResult says what a replay did with each selected dead letter.
type ReplayResult struct {
	Sent    []DeadLetter
	Skipped []Skipped
}

// Skipped is a dead letter a replay did not send, and why.
type Skipped struct {
	DeadLetter
	Why string
}

// ReplayDeadLetters sends the dead letters back to the topic they came from,
// through the outbox: each is queued and marked replayed in one transaction,
// and a running eventfn's relay forwards it. The record keeps its key,
// payload and CloudEvents attributes, ce_id included, so handlers that had
// processed it find it in their inbox and do nothing; only the handler that
// failed runs it, from attempt 1. A dead letter replayed before is skipped
// unless again is set. One that is not the event as it was read (payload
// truncated, headers cut or dropped, a header that is not UTF-8), or whose
// event is older than retention.inbox, is always skipped, with the reason.
func ReplayDeadLetters(ctx context.Context, cfg configs.Config, db *store.DB, dls []DeadLetter, again, dryRun bool) (ReplayResult, error) {
	var res ReplayResult
	now := time.Now()
	table := relay.NewTable(db)
	topic := cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic)
	for _, d := range dls {
		switch {
		case d.Truncated:
			res.Skipped = append(res.Skipped, Skipped{d, "its payload was truncated to fit; replay the original from " + originOf(d)})
			continue
		case d.OriginTopic == "":
			res.Skipped = append(res.Skipped, Skipped{d, "it names no origin topic"})
			continue
		case d.Replay != nil && !again:
			res.Skipped = append(res.Skipped, Skipped{d, fmt.Sprintf("replayed at %s (%s); --again sends it again", d.Replay.At.Format(time.RFC3339), d.Replay.Outcome)})
			continue
		}
		if why := notTheEvent(d); why != "" {
			res.Skipped = append(res.Skipped, Skipped{d, why + "; replay the original from " + originOf(d)})
			continue
		}
		if inbox := cfg.Retention.Inbox; inbox > 0 && now.Sub(eventTime(d)) >= inbox {
			res.Skipped = append(res.Skipped, Skipped{d, fmt.Sprintf("the event is from %s, older than retention.inbox (%s): the handlers that processed it no longer remember it and would run it again; publish it anew if that is wanted",
				eventTime(d).Format(time.RFC3339), inbox)})
			continue
		}
		if dryRun {
			res.Sent = append(res.Sent, d)
			continue
		}
		sent, err := replayOne(ctx, db, table, topic, d, again)
		if err != nil {
			return res, err
		}
		if !sent {
			res.Skipped = append(res.Skipped, Skipped{d, "another replay marked it meanwhile; --again sends it again"})
			continue
		}
		res.Sent = append(res.Sent, d)
	}
	if len(res.Sent) > 0 && !dryRun {
		// The rows committed; without the notification the leading relay
		// finds them at its next poll.
		_ = relay.Notify(ctx, db)
	}
	return res, nil
}

func originOf(d DeadLetter) string {
	return fmt.Sprintf("%s partition %d offset %d", d.OriginTopic, d.OriginPartition, d.OriginOffset)
}

// notTheEvent says why a dead letter no longer carries the event as it was
// read (so a replay would send another one), or "" when it does.
func notTheEvent(d DeadLetter) string {
	if n := d.Headers[HeaderHeadersDropped]; n != "" {
		return n + " of its headers were dropped to fit"
	}
	if names := d.Headers[HeaderHeadersCut]; names != "" {
		return "headers were cut to fit: " + names
	}
	for k, v := range d.Headers {
		if !slices.Contains(bookkeeping, k) && (!utf8.ValidString(k) || !utf8.ValidString(v)) {
			return fmt.Sprintf("header %q is not UTF-8 text, which the outbox cannot carry", k)
		}
	}
	return ""
}

// eventTime is when the event was made (ce_time), or, without one, when it
// was dead-lettered: the inbox rows of the handlers that processed it are at
// least that old.
func eventTime(d DeadLetter) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, d.Headers[HeaderTime]); err == nil && t.Before(d.Time) {
		return t
	}
	return d.Time
}

// bookkeeping are the headers a dead letter gained; a replay starts afresh.
var bookkeeping = []string{
	HeaderDeadLetterReason, HeaderDeadLetterHandler, "topic_poisoned", "subscriber_poisoned",
	HeaderAttempts, HeaderOriginTopic, HeaderOriginPartition, HeaderOriginOffset, HeaderHeadersDropped, HeaderHeadersCut,
}

// replayOne queues d in the outbox and marks it replayed, in one
// transaction. Without again it sends nothing and reports false when a mark
// of this dead letter (same place, same handler and event) exists: the check
// and the mark are one statement, so two replays at once send it once. A mark
// of another event at the same place (the topic was recreated) is replaced.
func replayOne(ctx context.Context, db *store.DB, table *relay.Table, dlqTopic string, d DeadLetter, again bool) (bool, error) {
	headers := make(map[string]string, len(d.Headers))
	for k, v := range d.Headers {
		if !slices.Contains(bookkeeping, k) {
			headers[k] = v
		}
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("replay %s: %w", d.ID, err)
	}
	defer func() { _ = tx.Rollback() }()
	now := time.Now().UTC()
	var at any = now
	if db.Driver == store.SQLite {
		at = now.Format(sqliteTime)
	}
	const same = `eventfn_dead_letter_replays.handler = excluded.handler AND eventfn_dead_letter_replays.event_id = excluded.event_id`
	mark := `INSERT INTO eventfn_dead_letter_replays (dlq_topic, dlq_partition, dlq_offset, handler, event_id, replayed_at)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO UPDATE SET replayed_at = excluded.replayed_at,
			handler = excluded.handler, event_id = excluded.event_id,
			times = CASE WHEN ` + same + ` THEN eventfn_dead_letter_replays.times + 1 ELSE 1 END`
	if !again {
		mark += ` WHERE NOT (` + same + `)`
	}
	marked, err := tx.ExecContext(ctx, mark, dlqTopic, d.partition, d.offset, d.Handler, d.EventID, at)
	if err != nil {
		return false, fmt.Errorf("mark %s replayed: %w", d.ID, err)
	}
	if n, err := marked.RowsAffected(); err != nil {
		return false, fmt.Errorf("mark %s replayed: %w", d.ID, err)
	} else if n == 0 {
		return false, nil
	}
	if err := table.Insert(ctx, tx, relay.Record{Topic: d.OriginTopic, Key: d.key, Headers: headers, Payload: d.Payload}); err != nil {
		return false, fmt.Errorf("replay %s: %w", d.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("replay %s: %w", d.ID, err)
	}
	return true, nil
}

// sqliteTime is how eventfn writes timestamps into SQLite text columns.
const sqliteTime = "2006-01-02T15:04:05.000Z"

func loadReplays(ctx context.Context, db *store.DB, dlqTopic string) (map[[2]int64]replayMark, error) {
	rows, err := db.Read.QueryContext(ctx,
		`SELECT dlq_partition, dlq_offset, handler, event_id, replayed_at, times FROM eventfn_dead_letter_replays WHERE dlq_topic = $1`, dlqTopic)
	if err != nil {
		return nil, fmt.Errorf("read dead-letter replays: %w", err)
	}
	defer rows.Close()
	out := map[[2]int64]replayMark{}
	for rows.Next() {
		var (
			p, o             int64
			handler, eventID string
			at               any
			times            int
		)
		if err := rows.Scan(&p, &o, &handler, &eventID, &at, &times); err != nil {
			return nil, fmt.Errorf("read dead-letter replays: %w", err)
		}
		t, err := timeOf(at)
		if err != nil {
			return nil, err
		}
		out[[2]int64{p, o}] = replayMark{handler: handler, eventID: eventID, Replay: Replay{At: t, Times: times}}
	}
	return out, rows.Err()
}

// replayMark is a row of eventfn_dead_letter_replays: the place it names is
// the dead letter's only while handler and event id match too, since a
// recreated dead-letter topic starts its offsets again.
type replayMark struct {
	handler, eventID string
	Replay
}

func timeOf(v any) (time.Time, error) {
	switch t := v.(type) {
	case time.Time:
		return t, nil
	case string:
		return time.Parse(sqliteTime, t)
	case []byte:
		return time.Parse(sqliteTime, string(t))
	}
	return time.Time{}, fmt.Errorf("replayed_at: unexpected %T", v)
}

func replayOutcome(ctx context.Context, db *store.DB, d DeadLetter, rp Replay, all []DeadLetter) (string, error) {
	var one int
	err := db.Read.QueryRowContext(ctx,
		`SELECT 1 FROM eventfn_inbox WHERE handler = $1 AND event_id = $2 AND (source = $3 OR source = '')`,
		d.Handler, d.EventID, d.Source).Scan(&one)
	switch {
	case err == nil:
		return ReplayHandled, nil
	case !errors.Is(err, sql.ErrNoRows):
		return "", fmt.Errorf("look up %s in the inbox: %w", d.ID, err)
	}
	for _, later := range all {
		if later.Handler == d.Handler && later.EventID == d.EventID && later.Time.After(rp.At) {
			return ReplayDeadLettered, nil
		}
	}
	return ReplayPending, nil
}

func deadLetterOf(topic string, r *kgo.Record) DeadLetter {
	h := make(map[string]string, len(r.Headers))
	for _, hd := range r.Headers {
		h[hd.Key] = string(hd.Value)
	}
	attempts, _ := strconv.Atoi(h[HeaderAttempts])
	part, _ := strconv.ParseInt(h[HeaderOriginPartition], 10, 32)
	off, _ := strconv.ParseInt(h[HeaderOriginOffset], 10, 64)
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s/%d/%d", topic, r.Partition, r.Offset)))
	_, truncated := h[HeaderPayloadTruncated]
	return DeadLetter{
		ID: hex.EncodeToString(sum[:6]), Time: r.Timestamp.UTC(),
		Handler: h[HeaderDeadLetterHandler], Type: h[HeaderType], EventID: h[HeaderID], Source: h[HeaderSource],
		Key: string(r.Key), Reason: h[HeaderDeadLetterReason], Attempts: attempts,
		OriginTopic: h[HeaderOriginTopic], OriginPartition: int32(part), OriginOffset: off,
		Truncated: truncated, Headers: h, Payload: r.Value,
		key: r.Key, partition: r.Partition, offset: r.Offset,
	}
}

// readTopic hands each record of topic between its start and end offsets, as
// they are when it begins, to each.
func readTopic(ctx context.Context, k configs.Kafka, topic string, each func(*kgo.Record)) error {
	opts, err := KafkaClientOpts(k)
	if err != nil {
		return err
	}
	admCl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(k.Brokers...), kgo.ClientID(k.ClientID))...)
	if err != nil {
		return fmt.Errorf("kafka client for %v: %w", k.Brokers, err)
	}
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("read the start of %s: %w", topic, ExplainKafkaError(err, k))
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("read the end of %s: %w", topic, ExplainKafkaError(err, k))
	}
	if err := errors.Join(starts.Error(), ends.Error()); err != nil {
		return fmt.Errorf("offsets of %s: %w", topic, err)
	}
	from := map[int32]kgo.Offset{}
	left := map[int32]int64{} // records still to read per partition
	ends.Each(func(e kadm.ListedOffset) {
		s, _ := starts.Lookup(topic, e.Partition)
		if e.Offset > s.Offset {
			from[e.Partition] = kgo.NewOffset().At(s.Offset)
			left[e.Partition] = e.Offset
		}
	})
	if len(from) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(k.Brokers...), kgo.ClientID(k.ClientID),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: from}))...)
	if err != nil {
		return fmt.Errorf("kafka client for %v: %w", k.Brokers, err)
	}
	defer cl.Close()
	for len(left) > 0 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("read %s: %w", topic, err)
		}
		var errs []error
		fetches.EachError(func(t string, p int32, err error) { errs = append(errs, fmt.Errorf("%s[%d]: %w", t, p, err)) })
		if len(errs) > 0 {
			return fmt.Errorf("read %s: %w", topic, errors.Join(errs...))
		}
		fetches.EachRecord(func(r *kgo.Record) {
			end, ok := left[r.Partition]
			if !ok || r.Offset >= end {
				return
			}
			each(r)
			if r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return nil
}
