//go:build wireinject

package wiring

import (
	"context"
	"log/slog"

	"github.com/google/wire"

	"github.com/eventfn/eventfn/runtime"
)

// BuildApp assembles a runnable eventfn process: engines, handlers, runtime, HTTP.
func BuildApp(ctx context.Context, base BaseConfig, logger *slog.Logger) (*App, func(), error) {
	wire.Build(EnginesSet, HandlersSet, RuntimeSet, NewApp)
	return nil, nil, nil
}

// BuildHandlers builds the handlers alone, starting no engine: for tools that
// only describe them.
func BuildHandlers(base BaseConfig, logger *slog.Logger) []runtime.Handler {
	wire.Build(ProvideStaticConfig, HandlersSet)
	return nil
}
