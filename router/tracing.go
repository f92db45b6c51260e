package router

import (
	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/internal/tracing"
)

// Option configures the runtime.
type Option func(*options)

type options struct {
	tracer trace.Tracer
}

// WithTracerProvider makes the runtime trace each handler call and each
// record the relay sends, continuing the trace its event carries.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tracer = tracing.Tracer(tp) }
}

func buildOptions(opts []Option) options {
	o := options{tracer: tracing.Tracer(nil)}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}
