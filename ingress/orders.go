// Package ingress is the HTTP edge of the reference flow: it takes orders,
// shows them, and reports health. An order and its order.placed event are
// written in one transaction through the outbox.
package ingress

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/mail"
	"os"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/handlers"
	"github.com/eventfn/eventfn/internal/outage"
	"github.com/eventfn/eventfn/internal/tracing"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// ReadyFunc reports why the service cannot serve yet, or nil.
type ReadyFunc func(ctx context.Context) error

// Server serves the order API and the health endpoints.
type Server struct {
	tx      runtime.Transactor
	read    *sql.DB
	ready   ReadyFunc
	metrics http.Handler
	maxBody int64
	logger  *slog.Logger
	// storing reports orders that cannot be stored: a database outage makes
	// every request fail, and it is logged once, summarised, and its end
	// logged, not once per request.
	storing *outage.Reporter
	// reading does the same for orders that cannot be read.
	reading *outage.Reporter
	tracer  trace.Tracer
	// backpressure holds orders while the handlers are behind; nil holds none.
	backpressure *Backpressure
}

// ServerOption configures a Server.
type ServerOption func(*Server)

// WithTracerProvider traces each order request; its span is the root of the
// order's chain, or joins the trace of the request's traceparent header.
func WithTracerProvider(tp trace.TracerProvider) ServerOption {
	return func(s *Server) { s.tracer = tracing.Tracer(tp) }
}

// httpPropagator reads a caller's traceparent and tracestate HTTP headers.
var httpPropagator propagation.TraceContext

// outageReportInterval is how often a lasting failure to store orders is
// summarised in the log.
const outageReportInterval = 30 * time.Second

// NewServer builds the HTTP handler. read serves GET queries; tx writes orders;
// ready answers GET /readyz and must be cheap (see Readiness); metrics serves
// GET /metrics, or nil when /metrics is served elsewhere.
func NewServer(tx runtime.Transactor, read *sql.DB, ready ReadyFunc, metrics http.Handler, maxBody int64, logger *slog.Logger, opts ...ServerOption) *Server {
	s := &Server{tx: tx, read: read, ready: ready, metrics: metrics, maxBody: maxBody, logger: logger,
		storing: outage.New("orders cannot be stored; POST /orders answers 503 while the database cannot serve, 500 otherwise",
			"orders stored again", outageReportInterval, logger),
		reading: outage.New("orders cannot be read; GET /orders/{id} answers 503 while the database cannot serve, 500 otherwise",
			"orders read again", outageReportInterval, logger),
		tracer: tracing.Tracer(nil)}
	for _, opt := range opts {
		opt(s)
	}
	return s
}

// Handler returns the routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /orders", s.createOrder)
	mux.HandleFunc("GET /orders/{id}", s.getOrder)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", s.readyz)
	if s.metrics != nil {
		mux.Handle("GET /metrics", s.metrics)
	}
	return mux
}

// MetricsHandler serves GET /metrics alone, for a listener of its own.
func MetricsHandler(metrics http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics)
	return mux
}

// OrderRequest is the body of POST /orders.
type OrderRequest struct {
	CustomerEmail string               `json:"customer_email"`
	Items         []handlers.OrderItem `json:"items"`
}

// Order is how the API shows an order.
type Order struct {
	ID            string               `json:"id"`
	CustomerEmail string               `json:"customer_email"`
	Items         []handlers.OrderItem `json:"items"`
	TotalCents    int64                `json:"total_cents"`
	Status        string               `json:"status"`
	CreatedAt     time.Time            `json:"created_at"`
	UpdatedAt     time.Time            `json:"updated_at"`
}

// fieldError is a 400 answer that names the offending field.
type fieldError struct {
	Field   string `json:"field"`
	Message string `json:"error"`
}

func (e fieldError) Error() string { return e.Field + ": " + e.Message }

// maxEmailBytes is the longest address SMTP can carry (RFC 5321, 4.5.3.1.3).
const maxEmailBytes = 254

// maxSKUChars bounds a SKU.
const maxSKUChars = 64

func validateOrder(req OrderRequest) error {
	if strings.TrimSpace(req.CustomerEmail) == "" {
		return fieldError{"customer_email", "is required"}
	}
	if len(req.CustomerEmail) > maxEmailBytes {
		return fieldError{"customer_email", fmt.Sprintf("must be at most %d bytes (RFC 5321), got %d", maxEmailBytes, len(req.CustomerEmail))}
	}
	if a, err := mail.ParseAddress(req.CustomerEmail); err != nil || a.Address != req.CustomerEmail {
		return fieldError{"customer_email", fmt.Sprintf("%q is not an email address", req.CustomerEmail)}
	}
	if len(req.Items) == 0 {
		return fieldError{"items", "must hold at least one item"}
	}
	if len(req.Items) > 100 {
		return fieldError{"items", "must hold at most 100 items"}
	}
	for i, it := range req.Items {
		f := fmt.Sprintf("items[%d]", i)
		switch {
		case strings.TrimSpace(it.SKU) == "":
			return fieldError{f + ".sku", "is required"}
		case !utf8.ValidString(it.SKU):
			return fieldError{f + ".sku", "is not valid UTF-8"}
		case strings.IndexFunc(it.SKU, unicode.IsControl) >= 0:
			// PostgreSQL refuses a NUL in text, and the CLI shows SKUs.
			return fieldError{f + ".sku", fmt.Sprintf("%q holds a control character", it.SKU)}
		case utf8.RuneCountInString(it.SKU) > maxSKUChars:
			return fieldError{f + ".sku", fmt.Sprintf("must be at most %d characters, got %d", maxSKUChars, utf8.RuneCountInString(it.SKU))}
		case it.Quantity < 1 || it.Quantity > 10000:
			return fieldError{f + ".quantity", "must be between 1 and 10000"}
		case it.PriceCents < 0 || it.PriceCents > 100_000_000:
			return fieldError{f + ".price_cents", "must be between 0 and 100000000"}
		}
	}
	return nil
}

func (s *Server) createOrder(w http.ResponseWriter, r *http.Request) {
	req, err := decodeOrder(http.MaxBytesReader(w, r.Body, s.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		var typeErr *json.UnmarshalTypeError
		var field fieldError
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			// The server's read timeout passed before the body arrived: a
			// slow or stalled client, not a malformed order. The answer may
			// not reach a client that is not reading; the connection is
			// closed either way.
			writeJSON(w, http.StatusRequestTimeout, map[string]string{"error": "the body did not arrive in time (http.read_timeout)"})
		case errors.As(err, &tooBig):
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": fmt.Sprintf("body exceeds %d bytes", tooBig.Limit)})
		case errors.As(err, &field):
			writeJSON(w, http.StatusBadRequest, field)
		case errors.As(err, &typeErr):
			writeJSON(w, http.StatusBadRequest, fieldError{typeErr.Field, fmt.Sprintf("must be a JSON %s", typeErr.Type)})
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			field := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
			writeJSON(w, http.StatusBadRequest, fieldError{field, "is not a field of an order"})
		default:
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body is not a JSON order: " + err.Error()})
		}
		return
	}
	if err := validateOrder(req); err != nil {
		writeJSON(w, http.StatusBadRequest, err)
		return
	}
	key, err := idempotencyKey(r.Header)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, err)
		return
	}
	var keyArg, digestArg any // NULL for an order sent without a key
	var digest string
	if key != "" {
		digest = orderDigest(req)
		keyArg, digestArg = key, digest
	}
	order := Order{ID: uuid.NewString(), CustomerEmail: req.CustomerEmail, Items: req.Items, Status: "placed"}
	for _, it := range req.Items {
		order.TotalCents += it.Quantity * it.PriceCents
	}
	ctx, span := s.tracer.Start(httpPropagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header)), "POST /orders",
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", http.MethodPost), attribute.String("http.route", "/orders"),
			attribute.String("eventfn.order_id", order.ID)))
	defer span.End()
	if id := r.Header.Get("X-Correlation-ID"); id != "" {
		if err := runtime.ValidateCorrelationID(id); err != nil {
			writeJSON(w, http.StatusBadRequest, fieldError{"X-Correlation-ID", err.Error()})
			return
		}
		ctx = runtime.WithMetadata(ctx, runtime.Metadata{CorrelationID: id})
	}
	// A request whose key an order holds stores nothing, so the backlog
	// neither holds nor refuses it: a client whose answer was lost gets its
	// order at once, not a 503 saying it was not stored.
	if key != "" && s.backpressure.behind() && s.replayOrder(ctx, w, key, digest, 0) {
		return
	}
	if err := s.backpressure.admit(ctx); err != nil {
		var behind behindError
		if errors.As(err, &behind) {
			span.SetStatus(codes.Error, "held: the handlers are behind")
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": behind.Error()})
			return
		}
		// The client gave up while its order was held: nothing was stored,
		// and nobody reads an answer.
		s.logger.DebugContext(ctx, "order request abandoned by the client while held for the backlog", "err", err)
		return
	}
	// One transaction, sent in one round trip on PostgreSQL: the order, its
	// items and order.placed commit together or not at all. RETURNING gives
	// the stored timestamps, so the answer needs no second read.
	err = s.tx.Write(ctx, []runtime.Statement{
		{
			Query:     `INSERT INTO orders (id, customer_email, total_cents, status, idempotency_key, request_digest) VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at, updated_at`,
			Args:      []any{order.ID, order.CustomerEmail, order.TotalCents, order.Status, keyArg, digestArg},
			Returning: []any{&order.CreatedAt, &order.UpdatedAt},
		},
		insertItems(order.ID, order.Items),
	}, handlers.OrderPlaced{
		OrderID:       order.ID,
		CustomerEmail: order.CustomerEmail,
		Items:         order.Items,
		TotalCents:    order.TotalCents,
	})
	if key != "" && store.UniqueViolation(err) {
		// The key's order is stored already: this is the same request sent
		// again (its answer was lost), or a different one under a key that
		// was used. The collision waited for the first order's commit.
		if !s.replayOrder(ctx, w, key, digest, keyCommitWait) {
			// The order that holds the key is not committed yet, and may
			// never be: on SQLite, calls share a transaction, and the
			// collision came before its commit. The client asks again, as
			// the draft has it.
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusConflict, fieldError{idempotencyKeyHeader,
				"an order with this key is being stored now; send the request again to get it"})
		}
		return
	}
	if runtime.IsPermanent(err) {
		// The order cannot be stored as it is (its event would be larger than
		// Kafka takes, say): the client must change it, retrying will not help.
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error()})
		return
	}
	if err != nil && r.Context().Err() != nil {
		// The client gave up (its timeout, say) before an answer; nobody
		// reads one. Not a server error: during a database stall every
		// waiting client does this, and one ERROR each would bury the
		// outage's own report. (The order's transaction is one round trip:
		// once sent it runs to its COMMIT whatever the client does, so an
		// abandoned order may have been stored; it then goes on as usual.)
		s.logger.DebugContext(ctx, "order request abandoned by the client before its answer", "err", err)
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, "the order could not be stored")
		s.storing.Failed(err)
		answerDatabaseError(w, err, "the order could not be stored", "take it")
		return
	}
	s.storing.Succeeded()
	w.Header().Set("Location", "/orders/"+order.ID)
	writeJSON(w, http.StatusCreated, order)
}

func (s *Server) getOrder(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !utf8.ValidString(id) || strings.IndexByte(id, 0) >= 0 {
		// No order has such an id, and PostgreSQL refuses to compare text
		// with one: it would answer an error, not "no row".
		writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no order with id %q", id)})
		return
	}
	o, err := s.loadOrder(r.Context(), id)
	if errors.Is(err, sql.ErrNoRows) {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no order with id " + id})
		return
	}
	if err != nil && r.Context().Err() != nil {
		s.logger.DebugContext(r.Context(), "order read abandoned by the client before its answer", "err", err)
		return
	}
	if err != nil {
		s.reading.Failed(err)
		answerDatabaseError(w, err, "the order could not be read", "serve")
		return
	}
	s.reading.Succeeded()
	writeJSON(w, http.StatusOK, o)
}

// retryAfterDatabase is the Retry-After of an answer that the database could
// not serve, in seconds: about what a restart or a failover takes.
const retryAfterDatabase = "5"

// answerDatabaseError answers a request that failed on err, a database's
// error: 503 with Retry-After when the database cannot serve now (away,
// read-only after a failover, out of disk, or too slow for the role's
// statement_timeout: a lock held elsewhere, a loaded server), which is
// neither the request's fault nor a bug, and a client or a load balancer
// retries it; 500 otherwise. what says what failed, and do what the
// database could not do ("serve", "take it").
func answerDatabaseError(w http.ResponseWriter, err error, what, do string) {
	if store.Unavailable(err) || store.StatementTimedOut(err) {
		w.Header().Set("Retry-After", retryAfterDatabase)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": what + ": the database cannot " + do + " now; try again"})
		return
	}
	writeJSON(w, http.StatusInternalServerError, map[string]string{"error": what + "; try again"})
}

// replayOrder answers a request whose Idempotency-Key an order stored before
// holds: that order (as it is now) when the request is the same, 422 when it
// is not. It waits up to wait for such an order to commit; when none has,
// it answers nothing and reports false.
func (s *Server) replayOrder(ctx context.Context, w http.ResponseWriter, key, digest string, wait time.Duration) bool {
	span := trace.SpanFromContext(ctx)
	id, stored, err := s.orderOfKey(ctx, key, wait)
	if errors.Is(err, sql.ErrNoRows) && ctx.Err() == nil {
		return false
	}
	var o Order
	if err == nil {
		o, err = s.loadOrder(ctx, id)
	}
	if err != nil && ctx.Err() != nil {
		s.logger.DebugContext(ctx, "order request abandoned by the client before its answer", "err", err)
		return true
	}
	if err != nil {
		span.SetStatus(codes.Error, "the order stored under its idempotency key could not be read")
		s.reading.Failed(fmt.Errorf("read the order stored under Idempotency-Key %q: %w", key, err))
		answerDatabaseError(w, err, "the order stored under this Idempotency-Key could not be read", "serve")
		return true
	}
	s.reading.Succeeded()
	span.SetAttributes(attribute.String("eventfn.order_id", id), attribute.Bool("eventfn.idempotent_replay", true))
	if !stored.Valid || stored.String != digest {
		writeJSON(w, http.StatusUnprocessableEntity, fieldError{idempotencyKeyHeader,
			"was sent before with a different order; send a new key with a new order"})
		return true
	}
	// The answer the first request had, with the order as it is now: its
	// status may have moved on. Idempotent-Replayed tells a client that
	// cares that nothing new was stored.
	w.Header().Set("Location", "/orders/"+o.ID)
	w.Header().Set("Idempotent-Replayed", "true")
	writeJSON(w, http.StatusCreated, o)
	return true
}

// keyCommitWait bounds how long a request whose key collided waits for the
// order that holds the key to commit: about a group commit's time, far less
// than a client's timeout.
const keyCommitWait = 2 * time.Second

// orderOfKey reads the id and request digest of the order stored under key,
// waiting up to wait for it to commit; sql.ErrNoRows when it did not.
func (s *Server) orderOfKey(ctx context.Context, key string, wait time.Duration) (id string, digest sql.NullString, err error) {
	deadline := time.Now().Add(wait)
	for pause := time.Millisecond; ; pause = min(2*pause, 50*time.Millisecond) {
		err = s.read.QueryRowContext(ctx, `SELECT id, request_digest FROM orders WHERE idempotency_key = $1`, key).Scan(&id, &digest)
		if !errors.Is(err, sql.ErrNoRows) || time.Now().Add(pause).After(deadline) {
			return id, digest, err
		}
		select {
		case <-ctx.Done():
			return id, digest, ctx.Err()
		case <-time.After(pause):
		}
	}
}

func (s *Server) loadOrder(ctx context.Context, id string) (Order, error) {
	var o Order
	err := s.read.QueryRowContext(ctx,
		`SELECT id, customer_email, total_cents, status, created_at, updated_at FROM orders WHERE id = $1`, id).
		Scan(&o.ID, &o.CustomerEmail, &o.TotalCents, &o.Status, &o.CreatedAt, &o.UpdatedAt)
	if err != nil {
		return o, err
	}
	rows, err := s.read.QueryContext(ctx,
		`SELECT sku, quantity, price_cents FROM order_items WHERE order_id = $1 ORDER BY line`, id)
	if err != nil {
		return o, fmt.Errorf("load items of order %s: %w", id, err)
	}
	defer rows.Close()
	o.Items = []handlers.OrderItem{}
	for rows.Next() {
		var it handlers.OrderItem
		if err := rows.Scan(&it.SKU, &it.Quantity, &it.PriceCents); err != nil {
			return o, fmt.Errorf("scan item of order %s: %w", id, err)
		}
		o.Items = append(o.Items, it)
	}
	return o, rows.Err()
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := s.ready(ctx); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Sends lists the event types the ingress emits, for documents that say who
// sends what (AsyncAPI).
func Sends() []string { return []string{handlers.OrderPlaced{}.EventType()} }

// insertItems is the statement that writes all of an order's items: one
// round trip to the database however many items the order has (at most 100,
// so at most 401 parameters).
func insertItems(orderID string, items []handlers.OrderItem) runtime.Statement {
	var q strings.Builder
	q.WriteString(`INSERT INTO order_items (order_id, line, sku, quantity, price_cents) VALUES `)
	args := make([]any, 1, 1+4*len(items))
	args[0] = orderID
	for i, it := range items {
		if i > 0 {
			q.WriteString(", ")
		}
		n := len(args)
		fmt.Fprintf(&q, "($1, $%d, $%d, $%d, $%d)", n+1, n+2, n+3, n+4)
		args = append(args, i, it.SKU, it.Quantity, it.PriceCents)
	}
	return runtime.Statement{Query: q.String(), Args: args}
}
