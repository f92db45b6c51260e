//go:build wireinject

package wiring

import (
	"context"
	"log/slog"

	"github.com/google/wire"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/runtime"
)

// BuildApp assembles a runnable eventfn process: engines, handlers, runtime,
// HTTP, and tracing as the OTEL_* variables say.
func BuildApp(ctx context.Context, base BaseConfig, logger *slog.Logger) (*App, func(), error) {
	wire.Build(EnginesSet, HandlersSet, RuntimeSet, ProvideTracerProvider, NewApp)
	return nil, nil, nil
}

// BuildAppTraced is BuildApp with the given tracer provider: a test's
// in-memory one, or one the embedding program built.
func BuildAppTraced(ctx context.Context, base BaseConfig, logger *slog.Logger, tp trace.TracerProvider) (*App, func(), error) {
	wire.Build(EnginesSet, HandlersSet, RuntimeSet, NewApp)
	return nil, nil, nil
}

// BuildHandlers builds the handlers alone, starting no engine: for tools that
// only describe them.
func BuildHandlers(base BaseConfig, logger *slog.Logger) []runtime.Handler {
	wire.Build(ProvideStaticConfig, HandlersSet)
	return nil
}
