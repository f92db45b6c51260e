package router

import (
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/internal/outage"
	"github.com/eventfn/eventfn/runtime"
)

// Dead-letter headers that eventfn adds besides Watermill's poison-queue ones
// (reason_poisoned, topic_poisoned, handler_poisoned, subscriber_poisoned).
const (
	HeaderDeadLetterReason  = middleware.ReasonForPoisonedKey
	HeaderDeadLetterHandler = middleware.PoisonedHandlerKey
	HeaderAttempts          = metaAttempts
	HeaderOriginTopic       = metaOriginTopic
	HeaderOriginPartition   = metaOriginPartition
	HeaderOriginOffset      = metaOriginOffset
)

// correlationID gives every event a correlation id: one that arrived without
// one (from a producer other than eventfn) starts its own chain with its id.
func correlationID(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if msg.Metadata.Get(HeaderCorrelationID) == "" {
			msg.Metadata.Set(HeaderCorrelationID, msg.UUID)
		}
		return h(msg)
	}
}

// limitConcurrency caps the calls running at once through h.
func limitConcurrency(n int) message.HandlerMiddleware {
	slots := make(chan struct{}, n)
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			select {
			case slots <- struct{}{}:
			case <-msg.Context().Done():
				return nil, msg.Context().Err()
			}
			defer func() { <-slots }()
			return h(msg)
		}
	}
}

// middlewares is a handler's chain, outermost first: a grown stack,
// correlation id, chain start, dead-letter on final failure (classified just inside it), retry with
// exponential backoff (never for permanent errors; without end and without
// using the retries while a dependency is unavailable), a timeout per
// attempt, panic recovery, and the concurrency cap.
//
// closing is set while the process shuts down: an attempt cut short by shutdown
// is not a failure of the event, so it is neither retried nor dead-lettered; it
// stays unacknowledged and Kafka delivers it again after the restart.
func middlewares(p runtime.Policy, dlq message.Publisher, dlqTopic string, closing *atomic.Bool, deadLettered prometheus.Counter, ops handlerOps, maxRecordBytes int, dlqHealth *outage.Reporter, infra *infraWatch, slogger *slog.Logger, logger watermill.LoggerAdapter) ([]message.HandlerMiddleware, error) {
	dlq = deadLetterPublisher{pub: dlq, maxBytes: maxRecordBytes, written: deadLettered, byClass: ops.deadLetters, health: dlqHealth}
	// An event whose retries or waits were cut short (its partition went to
	// another member, the process stops), or whose dependency was still
	// unavailable when they ended, is not at fault either: it is left for
	// redelivery, never dead-lettered.
	poison, err := middleware.PoisonQueueWithFilter(dlq, dlqTopic, func(err error) bool {
		return !closing.Load() && !runtime.IsUnavailable(err) && !isLeftForRedelivery(err)
	})
	if err != nil {
		return nil, fmt.Errorf("dead-letter middleware: %w", err)
	}
	// Infrastructure failures go up to waitOutInfrastructure, which retries
	// them without using the handler's retries. An attempt that shutdown
	// cut short is not retried (closing, and the retry's wait ends with the
	// message's context); a handler's own error that wraps
	// context.Canceled is a failure like any other, and was dead-lettered
	// on its first attempt while this also refused to retry those.
	retry := retrying(p, func(err error) bool {
		return usesRetry(err) && !closing.Load()
	}, ops, newDependencyWatch(ops.unavailable, p.MaxBackoff, slogger), slogger)
	return []message.HandlerMiddleware{
		grownStack,
		correlationID,
		chainStarted,
		poison,
		classifyDeadLetter,
		waitOutInfrastructure(infra, closing.Load, slogger),
		retry,
		middleware.Timeout(p.Timeout),
		middleware.Recoverer,
		limitConcurrency(p.Concurrency),
	}, nil
}
