package wiring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"golang.org/x/net/netutil"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/fakes"
	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/store"
)

// App is one eventfn process: the runtime and the HTTP API over the engines.
type App struct {
	Config   configs.Config
	Broker   *Broker
	DB       *store.DB
	Runtime  *router.Runtime
	Payments *fakes.PaymentGateway
	Mailer   *fakes.LogMailer

	http      *ingress.Server
	metrics   MetricsHandler
	readiness *ingress.Readiness
	logger    *slog.Logger

	mu              sync.Mutex
	listener        net.Listener
	metricsListener net.Listener // nil when /metrics is served with the API
}

// NewApp is a Wire provider function that assembles the App.
func NewApp(cfg configs.Config, b *Broker, db *store.DB, rt *router.Runtime, srv *ingress.Server, metrics MetricsHandler,
	readiness *ingress.Readiness, payments *fakes.PaymentGateway, mailer *fakes.LogMailer, logger *slog.Logger) *App {
	return &App{Config: cfg, Broker: b, DB: db, Runtime: rt, Payments: payments, Mailer: mailer,
		http: srv, metrics: metrics, readiness: readiness, logger: logger}
}

// Listen binds the HTTP address, and the metrics address when it has one; Run
// calls it if nobody did. Calling it first lets a caller learn the address of
// port 0 before the app runs.
func (a *App) Listen() (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.listener == nil {
		l, err := a.listen("http.addr", a.Config.HTTP.Addr)
		if err != nil {
			return "", err
		}
		if a.Config.HTTP.MetricsAddr != "" {
			ml, err := a.listen("http.metrics_addr", a.Config.HTTP.MetricsAddr)
			if err != nil {
				_ = l.Close()
				return "", err
			}
			a.metricsListener = ml
		}
		a.listener = l
	}
	return a.listener.Addr().String(), nil
}

// listen binds addr with at most http.max_connections connections served at
// once: past it, new connections wait in the kernel's accept queue rather than
// each taking a goroutine, buffers and a file descriptor.
func (a *App) listen(key, addr string) (net.Listener, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", key, addr, err)
	}
	return netutil.LimitListener(l, a.Config.HTTP.MaxConnections), nil
}

// MetricsAddr is the address GET /metrics is served on when http.metrics_addr
// is set, once Listen has bound it; empty otherwise.
func (a *App) MetricsAddr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.metricsListener == nil {
		return ""
	}
	return a.metricsListener.Addr().String()
}

// newHTTPServer bounds every wait a client can impose: reading a request
// (http.read_timeout), answering it (http.write_timeout), keeping an idle
// connection (http.idle_timeout) and the size of its headers. Without them a
// client trickling a body held its connection, and a graceful stop, for as
// long as it liked.
func (a *App) newHTTPServer(h http.Handler) *http.Server {
	c := a.Config.HTTP
	return &http.Server{
		Handler: h,
		// ReadHeaderTimeout is left zero: net/http then applies ReadTimeout
		// to the headers too, and one key bounds the whole request.
		ReadTimeout:    c.ReadTimeout,
		WriteTimeout:   c.WriteTimeout,
		IdleTimeout:    c.IdleTimeout,
		MaxHeaderBytes: c.MaxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(a.logger.With("component", "http").Handler(), slog.LevelWarn),
	}
}

// Run serves until ctx ends, then shuts down gracefully: the HTTP server stops
// taking requests, then the runtime finishes in-flight calls and flushes the outbox.
func (a *App) Run(ctx context.Context) error {
	addr, err := a.Listen()
	if err != nil {
		return err
	}
	attrs := []any{
		"http", "http://" + addr,
		"kafka", a.Broker.Addrs,
		"kafka_embedded", a.Broker.Embedded != nil,
		"database", fmt.Sprintf("%s %s", a.DB.Driver, a.DB.Where),
	}
	if m := a.MetricsAddr(); m != "" {
		attrs = append(attrs, "metrics", "http://"+m+"/metrics")
	}
	a.logger.Info("eventfn started", attrs...)
	for _, h := range a.Runtime.Handlers() {
		a.logger.Info("handler", "name", h.Name, "topic", h.Topic, "group", h.Group, "emits", h.Emits)
	}

	servers := []*http.Server{a.newHTTPServer(a.http.Handler())}
	listeners := []net.Listener{a.listener}
	if a.metricsListener != nil {
		servers = append(servers, a.newHTTPServer(ingress.MetricsHandler(a.metrics)))
		listeners = append(listeners, a.metricsListener)
	}
	httpDone := make(chan error, len(servers))
	for i, srv := range servers {
		go func() {
			if err := srv.Serve(listeners[i]); err != nil && !errors.Is(err, http.ErrServerClosed) {
				httpDone <- fmt.Errorf("http server on %s: %w", listeners[i].Addr(), err)
				return
			}
			httpDone <- nil
		}()
	}

	// Readiness is checked in the background, whoever asks /readyz and however
	// often: it ends with the HTTP servers that answer it.
	checkCtx, stopChecks := context.WithCancel(context.WithoutCancel(ctx))
	defer stopChecks()
	checksDone := make(chan struct{})
	go func() {
		defer close(checksDone)
		a.readiness.Run(checkCtx)
	}()

	// The runtime gets a context of its own: on ctx's end the HTTP server stops
	// taking requests first, so no new order reaches the outbox while the
	// runtime drains it.
	runCtx, stopRuntime := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRuntime()
	rtDone := make(chan error, 1)
	go func() { rtDone <- a.Runtime.Run(runCtx) }()

	var rtErr, httpErr error
	select {
	case <-ctx.Done():
	case err := <-httpDone:
		// An HTTP server that dies takes the process down with it.
		httpErr = err
	case err := <-rtDone:
		rtErr = err
		rtDone <- err
	}
	shutdownCtx, stop := context.WithTimeout(context.WithoutCancel(ctx), a.Config.Shutdown.Timeout)
	defer stop()
	for _, srv := range servers {
		httpErr = errors.Join(httpErr, shutdownHTTP(shutdownCtx, srv))
	}
	stopChecks()
	<-checksDone
	stopRuntime()
	if err := <-rtDone; err != nil && rtErr == nil {
		rtErr = err
	}
	return errors.Join(rtErr, httpErr)
}

// shutdownHTTP stops srv taking connections and waits for the requests in
// flight, closing idle connections; a request still running when ctx ends
// (shutdown.timeout) has its connection closed rather than left to hold the
// process. A client trickling a body is active, so Shutdown waits for it, but
// only until http.read_timeout cuts it off.
func shutdownHTTP(ctx context.Context, srv *http.Server) error {
	err := srv.Shutdown(ctx)
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("http shutdown: requests still in flight were cut off: %w", errors.Join(err, srv.Close()))
}
