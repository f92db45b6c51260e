package router

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventfn/eventfn/runtime"
)

// invoker runs one handler for one delivered message: in one transaction it
// claims the event in the inbox, calls the handler, and commits the handler's
// writes with the events it emitted.
type invoker struct {
	handler runtime.Handler
	outbox  *Outbox
	logger  *slog.Logger
	metrics *metrics
}

// handle is the Watermill handler function.
func (i *invoker) handle(msg *message.Message) error {
	attempt, _ := strconv.Atoi(msg.Metadata.Get(metaAttempts))
	attempt++
	msg.Metadata.Set(metaAttempts, strconv.Itoa(attempt))
	meta := metadataOf(msg, attempt)
	ctx := runtime.WithMetadata(msg.Context(), meta)
	name := i.handler.Name()

	duplicate, emitted := false, false
	err := inTx(ctx, i.outbox.db, func(ctx context.Context, tx *sql.Tx) error {
		claimed, err := claimInbox(ctx, tx, name, meta)
		if err != nil {
			return err
		}
		if !claimed {
			duplicate = true
			return nil
		}
		h, err := i.outbox.handle(tx, meta, "eventfn/"+name, i.handler.MayEmit)
		if err != nil {
			return err
		}
		err = i.handler.Invoke(ctx, h, msg.Payload)
		emitted = h.emitted > 0
		return err
	})
	switch {
	case err == nil:
		i.metrics.attempts.WithLabelValues(name, "ok").Inc()
	case runtime.IsPermanent(err):
		i.metrics.attempts.WithLabelValues(name, "permanent").Inc()
	default:
		i.metrics.attempts.WithLabelValues(name, "error").Inc()
	}
	if err != nil {
		i.logger.WarnContext(ctx, "handler failed", "handler", name, "event_id", meta.ID,
			"event_type", meta.Type, "attempt", attempt, "permanent", runtime.IsPermanent(err), "err", err)
		return err
	}
	if emitted {
		i.outbox.wake.nudge()
	}
	if duplicate {
		i.metrics.duplicates.WithLabelValues(name).Inc()
		i.logger.InfoContext(ctx, "event already processed; acknowledged without running the handler",
			"handler", name, "event_id", meta.ID)
		return nil
	}
	i.logger.DebugContext(ctx, "event handled", "handler", name, "event_id", meta.ID, "attempt", attempt)
	return nil
}

// claimInbox records (handler, event) and reports whether this call is the
// first to do so. On PostgreSQL a concurrent claim of the same event waits for
// the first transaction and then sees its row (or takes over if it rolled back).
func claimInbox(ctx context.Context, tx *sql.Tx, handler string, meta runtime.Metadata) (bool, error) {
	res, err := tx.ExecContext(ctx,
		`INSERT INTO eventfn_inbox (handler, event_id, event_type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		handler, meta.ID, meta.Type)
	if err != nil {
		return false, fmt.Errorf("record event %s in the inbox: %w", meta.ID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return false, fmt.Errorf("inbox rows affected: %w", err)
	}
	return n == 1, nil
}

// metadataOf reads the CloudEvents attributes of a delivered message.
func metadataOf(msg *message.Message, attempt int) runtime.Metadata {
	m := runtime.Metadata{
		ID:            msg.UUID,
		Type:          msg.Metadata.Get(HeaderType),
		Source:        msg.Metadata.Get(HeaderSource),
		Key:           msg.Metadata.Get(metaKey),
		CorrelationID: msg.Metadata.Get(HeaderCorrelationID),
		Attempt:       attempt,
	}
	if m.Type == "" {
		m.Type = msg.Metadata.Get(metaOriginTopic)
	}
	if t, err := time.Parse(time.RFC3339Nano, msg.Metadata.Get(HeaderTime)); err == nil {
		m.Time = t
	}
	return m
}
