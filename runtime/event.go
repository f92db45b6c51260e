// Package runtime is the contract between eventfn and the handlers you write.
//
// A handler is one typed function:
//
//	func(ctx context.Context, tx runtime.Tx, ev OrderPlaced) error
//
// It runs inside one SQL transaction. Through tx it reads and writes the database
// and emits events; the events are written to the transactional outbox in that same
// transaction, so a write and the events it causes commit or roll back together.
// The runtime also records the input event in an inbox in that transaction, so a
// redelivered event is acknowledged without running the function again.
//
// This package depends on the standard library only: handler code never sees
// Watermill, Sarama or the database driver.
package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Event is a value that travels through eventfn. Its event type is also the Kafka
// topic it is published to and the CloudEvents "type" attribute.
type Event interface {
	EventType() string
}

// Keyed is implemented by events that choose their own Kafka key. Events with the
// same key go to the same partition and so are handled in order. An emitted event
// that is not Keyed inherits the key of the event being handled.
type Keyed interface {
	EventKey() string
}

// Validator is implemented by events that check their own fields after decoding.
// A decoded event that fails validation is a permanent error: it goes to the
// dead-letter topic without retries.
type Validator interface {
	Validate() error
}

// Metadata describes the event being handled.
type Metadata struct {
	// ID is the CloudEvents id; for a plain Kafka record without one it is
	// "kafka:<topic>/<partition>/<offset>".
	ID string
	// Type is the CloudEvents type (the event type).
	Type string
	// Source is the CloudEvents source.
	Source string
	// Key is the Kafka key of the record.
	Key string
	// CorrelationID is shared by every event of one chain.
	CorrelationID string
	// Time is when the event was created.
	Time time.Time
	// Attempt counts calls of the handler for this delivery, starting at 1.
	Attempt int
}

type metadataKey struct{}

// WithMetadata returns a context carrying m. The runtime calls it before a handler.
func WithMetadata(ctx context.Context, m Metadata) context.Context {
	return context.WithValue(ctx, metadataKey{}, m)
}

// MetadataFrom returns the metadata of the event being handled.
func MetadataFrom(ctx context.Context) (Metadata, bool) {
	m, ok := ctx.Value(metadataKey{}).(Metadata)
	return m, ok
}

// EventSpec describes an event type well enough to check a payload without a handler.
type EventSpec struct {
	// Type is the event type.
	Type string
	// Check decodes and validates a JSON payload and reports why it is not an event of this type.
	Check func(payload []byte) error
	// Key returns the Kafka key a valid payload chooses (see Keyed), or "".
	Key func(payload []byte) string
	// Zero is the event type's zero value, for tools that describe its shape
	// (JSON Schema, AsyncAPI).
	Zero Event
}

// SpecOf returns the EventSpec of E.
func SpecOf[E Event]() EventSpec {
	var zero E
	return EventSpec{
		Type: zero.EventType(),
		Zero: zero,
		Check: func(payload []byte) error {
			_, err := Decode[E](payload)
			return err
		},
		Key: func(payload []byte) string {
			ev, err := Decode[E](payload)
			if err != nil {
				return ""
			}
			if k, ok := any(ev).(Keyed); ok {
				return k.EventKey()
			}
			return ""
		},
	}
}

// Decode turns a JSON payload into an E and validates it. The error says what is
// wrong; it is always permanent, because retrying cannot fix a payload.
func Decode[E Event](payload []byte) (E, error) {
	var ev E
	if len(bytes.TrimSpace(payload)) == 0 {
		return ev, Malformed(fmt.Errorf("decode %s: empty payload", ev.EventType()))
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	if err := dec.Decode(&ev); err != nil {
		return ev, Malformed(fmt.Errorf("decode %s: %w", ev.EventType(), err))
	}
	if dec.More() {
		return ev, Malformed(fmt.Errorf("decode %s: trailing data after the JSON value", ev.EventType()))
	}
	if v, ok := any(ev).(Validator); ok {
		if err := v.Validate(); err != nil {
			return ev, Permanent(fmt.Errorf("invalid %s: %w", ev.EventType(), err))
		}
	}
	return ev, nil
}

// ErrEventTooLarge is what Tx.Emit's error wraps when an event takes more
// bytes on Kafka than kafka.max_message_bytes. A handler may handle it (emit
// a reference to the data instead); see Tx.Emit.
var ErrEventTooLarge = errors.New("event too large for Kafka")

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: the runtime does not retry it and moves the
// event to the dead-letter topic at once. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// unavailableError marks a failure of something the handler depends on
// rather than of the event.
type unavailableError struct{ err error }

func (e unavailableError) Error() string { return e.err.Error() }
func (e unavailableError) Unwrap() error { return e.err }

// Unavailable marks err as a dependency of the handler being unavailable for
// now: the payment gateway or mail server it calls is down, overloaded, or
// did not answer within the call's timeout. The event is not at fault, so
// the runtime retries the call on the handler's backoff for as long as it
// keeps failing so, without using up MaxRetries and without ever moving the
// event to the dead-letter topic. Only that event's key waits; the handler
// goes on with other keys. Mark only errors that time mends: an event that
// can never succeed, marked Unavailable, holds its key until it is fixed.
// Permanent wins over Unavailable. Unavailable(nil) is nil.
func Unavailable(err error) error {
	if err == nil {
		return nil
	}
	return unavailableError{err: err}
}

// IsUnavailable reports whether err, or an error it wraps, was marked with
// Unavailable and not with Permanent.
func IsUnavailable(err error) bool {
	var u unavailableError
	return errors.As(err, &u) && !IsPermanent(err)
}
