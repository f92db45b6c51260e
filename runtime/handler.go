package runtime

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"
)

// Policy says how the runtime calls a handler. Zero fields take the defaults
// below; configuration may override any of them per handler.
type Policy struct {
	// MaxRetries is how many times a failed call is retried before the event goes
	// to the dead-letter topic. Permanent errors are never retried.
	MaxRetries int
	// InitialBackoff is the wait before the first retry; it doubles up to MaxBackoff.
	InitialBackoff time.Duration
	// MaxBackoff caps the wait between retries.
	MaxBackoff time.Duration
	// Timeout bounds one call of the handler, transaction included.
	Timeout time.Duration
	// Concurrency caps the calls of this handler running at once. Events with the
	// same key are always handled one at a time, in order.
	Concurrency int
	// MaxBatch caps the calls of this handler that share one transaction when
	// they queue up faster than transactions commit. On SQLite each runs in a
	// savepoint of its own, so a call that fails undoes only its own work;
	// the others commit together. On PostgreSQL they share it without
	// savepoints, which saves the server two statements per call: a call
	// that fails fails alone, and the others run again, each in a
	// transaction of its own; a retry always runs alone. 1 gives every call
	// a transaction of its own. 0 lets the database decide: 16 on SQLite,
	// whose one writer every transaction waits for anyway; 1 on PostgreSQL,
	// where sharing saved the server CPU but not the whole machine's
	// (docs/BENCHMARKS.md).
	MaxBatch int
}

// MinTimeout is the shortest Timeout a policy may set.
const MinTimeout = time.Millisecond

// DefaultPolicy is the policy of a handler that declares none.
func DefaultPolicy() Policy {
	return Policy{
		MaxRetries:     5,
		InitialBackoff: 100 * time.Millisecond,
		MaxBackoff:     5 * time.Second,
		Timeout:        30 * time.Second,
		Concurrency:    16,
	}
}

// WithDefaults returns p with every zero field taken from DefaultPolicy. A
// negative MaxRetries means "no retries".
func (p Policy) WithDefaults() Policy {
	def := DefaultPolicy()
	if p.MaxRetries == 0 {
		p.MaxRetries = def.MaxRetries
	}
	if p.MaxRetries < 0 {
		p.MaxRetries = 0
	}
	if p.InitialBackoff == 0 {
		// A policy that sets only MaxBackoff below the default first wait
		// means no wait longer than that one: it was refused, for an
		// initial backoff it never set.
		p.InitialBackoff = def.InitialBackoff
		if p.MaxBackoff > 0 {
			p.InitialBackoff = min(p.InitialBackoff, p.MaxBackoff)
		}
	}
	if p.MaxBackoff == 0 {
		p.MaxBackoff = def.MaxBackoff
	}
	if p.Timeout == 0 {
		p.Timeout = def.Timeout
	}
	if p.Concurrency == 0 {
		p.Concurrency = def.Concurrency
	}
	return p
}

// Validate reports a policy the runtime cannot follow.
func (p Policy) Validate() error {
	switch {
	case p.InitialBackoff < 0 || p.MaxBackoff < 0:
		return errors.New("backoff must not be negative")
	case p.MaxBackoff > 0 && p.InitialBackoff > p.MaxBackoff:
		return fmt.Errorf("initial backoff %s exceeds max backoff %s", p.InitialBackoff, p.MaxBackoff)
	case p.Timeout < 0:
		return errors.New("timeout must not be negative")
	case p.Timeout > 0 && p.Timeout < MinTimeout:
		// A call that cannot even begin its transaction would wait as if
		// the database were down, and never run.
		return fmt.Errorf("timeout %s is shorter than %s: a call could not even begin its transaction", p.Timeout, MinTimeout)
	case p.Concurrency < 0:
		return errors.New("concurrency must not be negative")
	case p.MaxBatch < 0:
		return errors.New("max batch must not be negative")
	}
	return nil
}

// Handler is a registered handler: a typed function plus what the runtime needs to
// subscribe it. Build one with NewHandler.
type Handler struct {
	name    string
	trigger string
	emits   []string
	policy  Policy
	invoke  func(ctx context.Context, tx Tx, payload []byte) error
}

// Option configures a Handler.
type Option func(*Handler)

// Emits declares the event types a handler may emit. Pass zero values:
// runtime.Emits(PaymentConfirmed{}).
func Emits(events ...Event) Option {
	return func(h *Handler) {
		for _, ev := range events {
			h.emits = append(h.emits, ev.EventType())
		}
	}
}

// WithPolicy sets the handler's policy; zero fields keep their defaults.
func WithPolicy(p Policy) Option {
	return func(h *Handler) { h.policy = p }
}

// NewHandler registers fn as the handler called name for events of type E. The
// name is also the handler's Kafka consumer group and its key in configuration.
func NewHandler[E Event](name string, fn func(ctx context.Context, tx Tx, ev E) error, opts ...Option) Handler {
	var zero E
	h := Handler{
		name:    name,
		trigger: zero.EventType(),
		invoke: func(ctx context.Context, tx Tx, payload []byte) error {
			ev, err := Decode[E](payload)
			if err != nil {
				return err
			}
			return fn(ctx, tx, ev)
		},
	}
	for _, opt := range opts {
		opt(&h)
	}
	return h
}

// Name is the handler's name and consumer group.
func (h Handler) Name() string { return h.name }

// Trigger is the event type the handler consumes.
func (h Handler) Trigger() string { return h.trigger }

// Emits lists the event types the handler may emit.
func (h Handler) Emits() []string { return append([]string(nil), h.emits...) }

// Policy is the handler's declared policy, before configuration overrides and defaults.
func (h Handler) Policy() Policy { return h.policy }

// MayEmit reports whether the handler declared eventType.
func (h Handler) MayEmit(eventType string) bool {
	for _, t := range h.emits {
		if t == eventType {
			return true
		}
	}
	return false
}

// Invoke decodes payload and calls the handler's function. Decoding errors are permanent.
func (h Handler) Invoke(ctx context.Context, tx Tx, payload []byte) error {
	return h.invoke(ctx, tx, payload)
}

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
var eventTypePattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,200}$`)

// ValidateEventType reports an event type that cannot be a Kafka topic.
func ValidateEventType(t string) error {
	if !eventTypePattern.MatchString(t) {
		return fmt.Errorf("event type %q: use letters, digits, '.', '_' and '-' (it is also a Kafka topic name)", t)
	}
	return nil
}

// Validate reports a handler the runtime cannot subscribe.
func (h Handler) Validate() error {
	if !namePattern.MatchString(h.name) {
		return fmt.Errorf("handler name %q: use lower-case letters, digits and '-', starting with a letter", h.name)
	}
	if h.invoke == nil {
		return fmt.Errorf("handler %q has no function: build it with runtime.NewHandler", h.name)
	}
	if err := ValidateEventType(h.trigger); err != nil {
		return fmt.Errorf("handler %q trigger: %w", h.name, err)
	}
	for _, t := range h.emits {
		if err := ValidateEventType(t); err != nil {
			return fmt.Errorf("handler %q emits: %w", h.name, err)
		}
	}
	if err := h.policy.Validate(); err != nil {
		return fmt.Errorf("handler %q policy: %w", h.name, err)
	}
	return nil
}
