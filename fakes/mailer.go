package fakes

import (
	"context"
	"log/slog"
	"sync"

	"github.com/eventfn/eventfn/handlers"
)

// LogMailer "sends" email by logging it and keeping it in memory; the
// send-confirmation handler records each email in the database as well.
type LogMailer struct {
	logger *slog.Logger
	mu     sync.Mutex
	sent   []handlers.Email
}

// NewLogMailer returns a mailer that logs to logger.
func NewLogMailer(logger *slog.Logger) *LogMailer { return &LogMailer{logger: logger} }

// Send logs the email.
func (m *LogMailer) Send(ctx context.Context, e handlers.Email) error {
	m.mu.Lock()
	m.sent = append(m.sent, e)
	m.mu.Unlock()
	m.logger.InfoContext(ctx, "email sent", "to", e.To, "subject", e.Subject)
	return nil
}

// Sent returns the emails sent so far.
func (m *LogMailer) Sent() []handlers.Email {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]handlers.Email(nil), m.sent...)
}
