// Package wiring puts eventfn together: Wire providers for every part and the
// injectors in wire.go, generated into wire_gen.go. It is the only package that
// knows the handlers, the runtime and the engines at once.
package wiring

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/google/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/fakes"
	"github.com/eventfn/eventfn/handlers"
	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// BaseConfig is the configuration as loaded, before the engines start; an
// embedded broker on port 0 only knows its address once it runs.
type BaseConfig configs.Config

// Broker is the Kafka cluster this process uses.
type Broker struct {
	// Addrs are the bootstrap addresses clients use.
	Addrs []string
	// Embedded is the in-process broker, when this process runs one.
	Embedded *embedded.Broker
}

// ProvideBroker is a Wire provider function that starts the embedded broker
// when the configuration asks for it, and otherwise names the configured one.
func ProvideBroker(base BaseConfig, logger *slog.Logger) (*Broker, func(), error) {
	cfg := configs.Config(base)
	if !cfg.Kafka.Embedded {
		return &Broker{Addrs: cfg.Kafka.Brokers}, func() {}, nil
	}
	if err := privateDataDir(cfg.DataDir); err != nil {
		return nil, nil, err
	}
	b, err := embedded.Start(cfg.Kafka.Brokers[0], filepath.Join(cfg.DataDir, "kafka"), cfg.Kafka.Partitions)
	if err != nil {
		return nil, nil, err
	}
	logger.Debug("embedded Kafka broker started", "addr", b.Addr())
	return &Broker{Addrs: []string{b.Addr()}, Embedded: b}, b.Close, nil
}

// privateDataDir creates the data directory, or narrows one that exists, to
// its owner: it holds the broker's log and the SQLite database, customer data
// both, and the embedded broker writes its files 0644 whatever eventfn asks.
func privateDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("data_dir: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("data_dir: make %s private to its owner: %w", dir, err)
	}
	return nil
}

// ProvideConfig is a Wire provider function that returns the configuration with
// the broker addresses in use.
func ProvideConfig(base BaseConfig, b *Broker) configs.Config {
	cfg := configs.Config(base)
	cfg.Kafka.Brokers = b.Addrs
	return cfg
}

// ProvideStaticConfig is a Wire provider function for injectors that start no engine.
func ProvideStaticConfig(base BaseConfig) configs.Config { return configs.Config(base) }

// ProvideDatabase is a Wire provider function that opens and migrates the database.
func ProvideDatabase(ctx context.Context, cfg configs.Config, logger *slog.Logger) (*store.DB, func(), error) {
	driver, err := cfg.Database.Driver()
	if err != nil {
		return nil, nil, fmt.Errorf("database.url: %w", err)
	}
	if cfg.Database.URL == "" {
		if err := privateDataDir(cfg.DataDir); err != nil {
			return nil, nil, err
		}
	}
	db, err := store.Open(ctx, store.Config{
		Driver:       store.Driver(driver),
		SQLitePath:   cfg.Database.SQLitePath(cfg.DataDir),
		URL:          cfg.Database.URL,
		MaxOpenConns: cfg.Database.MaxOpenConns,
		Logger:       logger.With("component", "store"),
	})
	if err != nil {
		return nil, nil, err
	}
	return db, func() { _ = db.Close() }, nil
}

// ProvideWatermillLogger is a Wire provider function that adapts slog for Watermill.
func ProvideWatermillLogger(logger *slog.Logger) watermill.LoggerAdapter {
	return watermill.NewSlogLoggerWithLevelMapping(logger.With("component", "watermill"), map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug,
	})
}

// ProvidePaymentGateway is a Wire provider function for the fake payment gateway.
func ProvidePaymentGateway(cfg configs.Config, logger *slog.Logger) *fakes.PaymentGateway {
	return fakes.NewPaymentGateway(cfg.Payments.FailAttempts, cfg.Payments.Delay, logger.With("component", "payments"))
}

// ProvideMailer is a Wire provider function for the logging mailer.
func ProvideMailer(logger *slog.Logger) *fakes.LogMailer {
	return fakes.NewLogMailer(logger.With("component", "mailer"))
}

// ProvideMetricsRegistry is a Wire provider function for the process's own
// Prometheus registry (not the global one), with Go runtime and process metrics.
func ProvideMetricsRegistry() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register runtime metrics: %w", err)
		}
	}
	return reg, nil
}

// MetricsHandler serves the process's Prometheus registry: on the API's
// address, or on http.metrics_addr when it is set.
type MetricsHandler struct{ http.Handler }

// ProvideMetricsHandler is a Wire provider function for GET /metrics.
func ProvideMetricsHandler(reg *prometheus.Registry) MetricsHandler {
	return MetricsHandler{promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})}
}

// readinessInterval is how often readiness is checked while ready: a stopped
// broker or database shows in /readyz within it (plus the check's timeout).
// readinessTimeout bounds one check.
const (
	readinessInterval = 2 * time.Second
	readinessTimeout  = 3 * time.Second
)

// ProvideReadiness is a Wire provider function for the readiness /readyz
// serves: the runtime's, checked in the background (App.Run runs it).
func ProvideReadiness(rt *router.Runtime, logger *slog.Logger) *ingress.Readiness {
	return ingress.NewReadiness(rt.Ready, readinessInterval, readinessTimeout, logger.With("component", "readiness"))
}

// ProvideIngress is a Wire provider function for the HTTP API, with /metrics
// unless http.metrics_addr gives it an address of its own. It holds new
// orders while the runtime's handlers are behind (http.max_backlog).
func ProvideIngress(cfg configs.Config, outbox *router.Outbox, db *store.DB, rt *router.Runtime, ready *ingress.Readiness, metrics MetricsHandler, reg prometheus.Registerer, tp trace.TracerProvider, logger *slog.Logger) (*ingress.Server, error) {
	var m http.Handler
	if cfg.HTTP.MetricsAddr == "" {
		m = metrics.Handler
	}
	bp, err := ingress.NewBackpressure(rt.Backlog, cfg.HTTP.MaxBacklog, holdFor(cfg.HTTP), reg)
	if err != nil {
		return nil, err
	}
	return ingress.NewServer(outbox, readPool(db), ready.Ready, m, cfg.HTTP.MaxBodyBytes, logger.With("component", "http"),
		ingress.WithTracerProvider(tp), ingress.WithBackpressure(bp)), nil
}

// holdFor is how long an order may be held for the backlog: http.backlog_wait,
// but at most half of http.write_timeout. The hold counts against the write
// deadline, and past it not even the 503 could be written.
func holdFor(c configs.HTTP) time.Duration {
	return min(c.BacklogWait, c.WriteTimeout/2)
}

// ProvideRuntime is a Wire provider function for the runtime, traced with tp.
func ProvideRuntime(cfg configs.Config, db *store.DB, outbox *router.Outbox, hs []runtime.Handler, reg prometheus.Registerer, tp trace.TracerProvider, logger *slog.Logger) (*router.Runtime, error) {
	return router.New(cfg, db, outbox, hs, reg, logger, router.WithTracerProvider(tp))
}

// ProvideTracerProvider is a Wire provider function for the process's tracer
// provider. Tracing exports only when the standard OpenTelemetry variables
// name an OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) and OTEL_TRACES_EXPORTER is not "none";
// the exporter reads the other OTEL_EXPORTER_OTLP_* variables (headers,
// protocol, timeout, certificates) itself. Otherwise spans are not recorded,
// but an event's trace context is passed on unchanged.
func ProvideTracerProvider(ctx context.Context, logger *slog.Logger) (trace.TracerProvider, func(), error) {
	endpoint := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if endpoint == "" {
		endpoint = os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	if endpoint == "" || os.Getenv("OTEL_TRACES_EXPORTER") == "none" {
		return noop.NewTracerProvider(), func() {}, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("OpenTelemetry OTLP exporter (OTEL_EXPORTER_OTLP_*): %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(attribute.String("service.name", serviceName())))
	if err != nil {
		return nil, nil, fmt.Errorf("OpenTelemetry resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	logger.Info("tracing exported over OTLP", "endpoint", redactEndpoint(endpoint))
	return tp, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := tp.Shutdown(ctx); err != nil {
			logger.Warn("flush the last spans", "err", err)
		}
	}, nil
}

// serviceName is OTEL_SERVICE_NAME, or eventfn.
func serviceName() string {
	if n := os.Getenv("OTEL_SERVICE_NAME"); n != "" {
		return n
	}
	return "eventfn"
}

// redactEndpoint drops user info and the query from an endpoint URL: either
// may carry a token.
func redactEndpoint(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}

func readPool(db *store.DB) *sql.DB { return db.Read }

// ServicesSet provides the outside services of the reference flow: the fakes.
var ServicesSet = wire.NewSet(
	ProvidePaymentGateway,
	ProvideMailer,
	wire.Bind(new(handlers.PaymentGateway), new(*fakes.PaymentGateway)),
	wire.Bind(new(handlers.Mailer), new(*fakes.LogMailer)),
)

// HandlersSet provides every handler, through the generated registry.
var HandlersSet = wire.NewSet(ServicesSet, handlers.Registry)

// EnginesSet provides Kafka and the database, embedded or real as configured.
var EnginesSet = wire.NewSet(ProvideBroker, ProvideConfig, ProvideDatabase)

// RuntimeSet provides the outbox, the Watermill runtime, metrics and the HTTP API.
var RuntimeSet = wire.NewSet(
	ProvideWatermillLogger,
	ProvideMetricsRegistry,
	wire.Bind(new(prometheus.Registerer), new(*prometheus.Registry)),
	router.NewOutbox,
	ProvideRuntime,
	ProvideMetricsHandler,
	ProvideReadiness,
	ProvideIngress,
)
