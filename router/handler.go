package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/internal/tracing"
	"github.com/eventfn/eventfn/runtime"
)

// invoker runs one handler for one delivered message: in one transaction it
// claims the event in the inbox, calls the handler, and commits the handler's
// writes with the events it emitted.
type invoker struct {
	handler runtime.Handler
	outbox  *Outbox
	// committer runs the call's transaction, shared with other calls of the
	// handler when they queue up.
	committer *committer
	logger    *slog.Logger
	metrics   *metrics
	tracer    trace.Tracer
	// onDuplicate, when set, hears of an event the inbox already had.
	onDuplicate func()
	// runs hears of every attempt, when set; maxRetries says whether a
	// failed attempt is the last.
	runs       *runLog
	maxRetries int
}

// handle is the Watermill handler function.
func (i *invoker) handle(msg *message.Message) error {
	if i.runs == nil {
		_, err := i.attempt(msg)
		return err
	}
	start := time.Now()
	duplicate, err := i.attempt(msg)
	attempt, _ := strconv.Atoi(msg.Metadata.Get(metaAttempts))
	r := RunRecord{Handler: i.handler.Name(), EventID: msg.UUID, EventType: msg.Metadata.Get(HeaderType), Attempt: attempt,
		Start: start.UTC(), DurationMS: float64(time.Since(start).Microseconds()) / 1000, Outcome: RunOK}
	switch {
	case duplicate:
		r.Outcome = RunDuplicate
	case err == nil:
	case isInfra(err):
		r.Outcome = RunWaiting
	case runtime.IsUnavailable(err):
		r.Outcome = RunUnavailable
	case runtime.IsPermanent(err) || retriesUsed(msg) >= i.maxRetries:
		// The retries' middleware, outside this call, gives up on the
		// failure after the last retry: calls that waited for the database
		// or a dependency used none.
		r.Outcome = RunDeadLettered
	default:
		r.Outcome = RunRetrying
	}
	if err != nil {
		r.Error = boundText(err.Error(), 1024)
	}
	i.runs.record(msg.Metadata.Get(HeaderCorrelationID), r)
	return err
}

// attempt runs the handler once for msg and reports whether the inbox had
// the event already.
func (i *invoker) attempt(msg *message.Message) (bool, error) {
	attempt, _ := strconv.Atoi(msg.Metadata.Get(metaAttempts))
	attempt++
	msg.Metadata.Set(metaAttempts, strconv.Itoa(attempt))
	meta := metadataOf(msg, attempt)
	name := i.handler.Name()
	// One span per call, a child of the span that sent the event (the relay's,
	// or another producer's): the events the handler emits carry this one.
	ctx, span := i.tracer.Start(tracing.Extract(msg.Context(), msg.Metadata), name+" process "+meta.Type,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "kafka"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.message.id", meta.ID),
			attribute.String("cloudevents.event_type", meta.Type),
			attribute.String("cloudevents.event_source", meta.Source),
			attribute.String("eventfn.handler", name),
			attribute.Int("eventfn.attempt", attempt),
		))
	defer span.End()
	ctx = runtime.WithMetadata(ctx, meta)
	start := time.Now()

	if err := errors.Join(malformedHeaders(msg.Metadata), validSpecVersion(msg.Metadata.Get(HeaderSpecVersion)), validAttributes(meta)); err != nil {
		// Bytes no database key can hold: the event is malformed, and no
		// retry will change that.
		i.metrics.attempts.WithLabelValues(name, "permanent").Inc()
		span.SetStatus(codes.Error, "malformed event")
		i.logger.WarnContext(ctx, "malformed event", "handler", name, "err", err)
		err = runtime.Malformed(err)
		i.metrics.ops.observeCall(name, i.handler.Trigger(), msg, start, err, false)
		return false, err
	}
	emitted := false
	claimed, err := i.committer.run(ctx, &inboxClaim{handler: name, meta: meta}, func(ctx context.Context, tx sqlExecutor) (toCommit, error) {
		h, err := i.outbox.handle(tx, meta, "eventfn/"+name, i.handler.MayEmit)
		if err != nil {
			return toCommit{}, err
		}
		h.chainStarted = msg.Metadata.Get(HeaderChainStarted)
		if err := callBounded(ctx, i.logger, name, func() error { return i.handler.Invoke(ctx, h, msg.Payload) }); err != nil {
			var overran *overranError
			if errors.As(err, &overran) {
				// A handler past its timeout may still run: h is not read again.
				return toCommit{}, err
			}
			return toCommit{}, h.failed(err)
		}
		work, err := h.done()
		if err == nil && len(h.tooLarge) > 0 {
			// The handler may have emitted something smaller instead; if it
			// ignored the refusal, this is where it shows.
			i.logger.WarnContext(ctx, "the handler returned nil after Emit refused events too large for Kafka; the call commits without them",
				"handler", name, "event_id", meta.ID, "refused", h.tooLarge)
		}
		emitted = len(work.rows) > 0
		return work, err
	})
	duplicate := err == nil && !claimed
	err = classifyFailure(i.outbox.db.Read, err)
	i.metrics.attempts.WithLabelValues(name, handlerResult(err, false)).Inc()
	i.metrics.ops.observeCall(name, i.handler.Trigger(), msg, start, err, duplicate)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "handler failed")
		// A dependency that is down fails every call until it is back; the
		// handler's outage report tells of it once, and then at a bounded
		// rate, rather than a line per call.
		level := slog.LevelWarn
		if runtime.IsUnavailable(err) {
			level = slog.LevelDebug
		}
		i.logger.Log(ctx, level, "handler failed", "handler", name, "event_id", meta.ID,
			"event_type", meta.Type, "attempt", attempt, "permanent", runtime.IsPermanent(err), "unavailable", runtime.IsUnavailable(err), "err", boundText(err.Error(), maxHeaderBytes))
		return false, err
	}
	if emitted {
		i.outbox.wake.nudge()
	}
	if duplicate {
		if i.onDuplicate != nil {
			i.onDuplicate()
		}
		span.SetAttributes(attribute.Bool("eventfn.duplicate", true))
		i.metrics.duplicates.WithLabelValues(name).Inc()
		i.logger.InfoContext(ctx, "event already processed; acknowledged without running the handler",
			"handler", name, "event_id", meta.ID)
		return true, nil
	}
	i.logger.DebugContext(ctx, "event handled", "handler", name, "event_id", meta.ID, "attempt", attempt)
	return false, nil
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

// callBounded runs fn, a handler call, and returns its error; or, once ctx is
// done (the handler's timeout passed), returns at once without waiting for fn.
// A handler that ignores its context then keeps running in the background until
// it returns, but its transaction is already rolled back (database/sql does
// that when the context of BeginTx ends), so nothing it writes commits; its key
// and, on SQLite, the one writer connection are free for the retry. A panic in
// fn becomes an error, as Watermill's Recoverer would make it.
func callBounded(ctx context.Context, logger *slog.Logger, name string, fn func() error) error {
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		growStack()
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("handler %s panicked: %v", name, p)
			}
		}()
		done <- fn()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		go func() {
			err := <-done
			logger.Warn("handler returned after its timeout; its transaction had been rolled back",
				"handler", name, "after", time.Since(start).Round(time.Millisecond), "err", err)
		}()
		return &overranError{fmt.Errorf("handler %s did not return before its context ended (timeout or shutdown deadline); its transaction was rolled back: %w", name, context.Cause(ctx))}
	}
}

// overranError is callBounded's error when the handler had not returned:
// it may still be running, and what it holds must not be read.
type overranError struct{ err error }

func (e *overranError) Error() string { return e.err.Error() }
func (e *overranError) Unwrap() error { return e.err }

// maxAttributeBytes bounds ce_id, ce_source and ce_type: they are inbox keys.
const maxAttributeBytes = 1024

// validAttributes refuses identifying attributes that are not valid UTF-8,
// hold a NUL byte or are too long; PostgreSQL rejects such text as a key, and
// SQLite must behave the same.
func validAttributes(m runtime.Metadata) error {
	for _, a := range []struct{ name, value string }{{HeaderID, m.ID}, {HeaderSource, m.Source}, {HeaderType, m.Type}} {
		if err := ValidateAttribute(a.name, a.value); err != nil {
			return fmt.Errorf("malformed event: %w", err)
		}
	}
	return nil
}

// ValidateAttribute checks a CloudEvents attribute (ce_id, ce_source,
// ce_type) as the runtime does before it handles an event: one it refuses
// makes the event malformed, dead-lettered at once. A producer (the CLI)
// checks its own with it before sending.
func ValidateAttribute(name, value string) error {
	switch {
	case !utf8.ValidString(value):
		return fmt.Errorf("%s is not valid UTF-8 (%q)", name, boundText(value, 128))
	case strings.ContainsRune(value, 0):
		return fmt.Errorf("%s holds a NUL byte (%q)", name, boundText(value, 128))
	case len(value) > maxAttributeBytes:
		return fmt.Errorf("%s is %d bytes, at most %d are allowed", name, len(value), maxAttributeBytes)
	}
	return nil
}

// malformedHeaders reports what unmarshalling found wrong with the record's
// headers, such as a ce_id given twice with different values.
func malformedHeaders(md message.Metadata) error {
	if why := md.Get(metaMalformed); why != "" {
		return errors.New(why)
	}
	return nil
}

// validSpecVersion accepts CloudEvents 1.0, and records without the attribute
// (from producers that do not speak CloudEvents); any other version is a
// format eventfn cannot promise to read right.
func validSpecVersion(v string) error {
	if v == "" || v == "1.0" {
		return nil
	}
	return fmt.Errorf("malformed event: ce_specversion %q is not supported; eventfn reads CloudEvents 1.0", boundText(v, 64))
}
