package wiring_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/wiring"
)

// TestTracingExportsOnlyWhenAnOTLPEndpointIsNamed: without OTEL_* variables
// spans are not recorded; with OTEL_EXPORTER_OTLP_ENDPOINT they reach that
// endpoint over OTLP/HTTP, flushed when the process stops, and the log names
// the endpoint without its credentials.
func TestTracingExportsOnlyWhenAnOTLPEndpointIsNamed(t *testing.T) {
	for _, v := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"} {
		t.Setenv(v, "")
	}
	ctx := context.Background()
	tp, cleanup, err := wiring.ProvideTracerProvider(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("t").Start(ctx, "off")
	if span.IsRecording() {
		t.Error("a span records with tracing off")
	}
	span.End()
	cleanup()

	var got atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/traces" {
			got.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", strings.Replace(srv.URL, "http://", "http://user:t0ken@", 1))
	logs := &testenv.LogBuffer{}
	tp, cleanup, err = wiring.ProvideTracerProvider(ctx, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	_, span = tp.Tracer("t").Start(ctx, "on")
	if !span.IsRecording() {
		t.Error("a span does not record with an OTLP endpoint named")
	}
	span.End()
	cleanup() // flushes
	if got.Load() == 0 {
		t.Error("no span reached the OTLP endpoint")
	}
	if !strings.Contains(logs.String(), "tracing exported over OTLP") || strings.Contains(logs.String(), "t0ken") {
		t.Errorf("log: %s", logs.String())
	}
}
