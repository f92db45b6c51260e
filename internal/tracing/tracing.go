// Package tracing carries OpenTelemetry trace context through eventfn's
// events: in the outbox row's headers and in Kafka record headers, as the
// CloudEvents distributed-tracing extension.
package tracing

import (
	"context"
	"sort"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Name is the instrumentation scope of every eventfn span.
const Name = "github.com/eventfn/eventfn"

// Headers is a propagation.TextMapCarrier over an event's headers. The
// distributed-tracing extension's attributes, traceparent and tracestate,
// travel as ce_traceparent and ce_tracestate (the CloudEvents Kafka binding
// prefixes every attribute with ce_). A plain traceparent header, as
// OpenTelemetry's Kafka instrumentations write it, is read too, so another
// producer's traced event joins its trace.
type Headers map[string]string

// Get returns the value of key, the ce_ form first.
func (h Headers) Get(key string) string {
	if v, ok := h["ce_"+key]; ok {
		return v
	}
	return h[key]
}

// Set stores key in the ce_ form.
func (h Headers) Set(key, value string) { h["ce_"+key] = value }

// Keys lists the keys, without the ce_ prefix for the tracing ones.
func (h Headers) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// propagator is W3C Trace Context: traceparent and tracestate.
var propagator propagation.TraceContext

// Inject writes the span context of ctx into h, if ctx has one.
func Inject(ctx context.Context, h map[string]string) {
	propagator.Inject(ctx, Headers(h))
}

// Extract returns ctx with the remote span context h carries, if any.
func Extract(ctx context.Context, h map[string]string) context.Context {
	return propagator.Extract(ctx, Headers(h))
}

// Tracer is the eventfn tracer of tp, or a no-op one when tp is nil.
func Tracer(tp trace.TracerProvider) trace.Tracer {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	return tp.Tracer(Name)
}
