package fakes

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/eventfn/eventfn/handlers"
)

// keptEmails is how many sent emails the mailer keeps for Sent.
const keptEmails = 1000

// LogMailer "sends" email by logging it and keeping the last 1,000 in
// memory; the send-confirmation handler records each email in the database
// as well.
type LogMailer struct {
	logger *slog.Logger
	keep   int
	down   atomic.Bool
	mu     sync.Mutex
	last   []handlers.Email // a ring of the last keep emails; next is the oldest once full
	next   int
	count  int
}

// NewLogMailer returns a mailer that logs to logger.
func NewLogMailer(logger *slog.Logger) *LogMailer {
	return &LogMailer{logger: logger, keep: keptEmails}
}

// SetUnavailable takes the mailer down (true) or brings it back: while it
// is down every send fails with handlers.ErrUnavailable and sends nothing.
func (m *LogMailer) SetUnavailable(down bool) { m.down.Store(down) }

// Send logs the email.
func (m *LogMailer) Send(ctx context.Context, e handlers.Email) error {
	if m.down.Load() {
		return fmt.Errorf("mail server: %w (fake outage)", handlers.ErrUnavailable)
	}
	m.mu.Lock()
	if len(m.last) < m.keep {
		m.last = append(m.last, e)
	} else {
		m.last[m.next] = e
		m.next = (m.next + 1) % m.keep
	}
	m.count++
	m.mu.Unlock()
	m.logger.InfoContext(ctx, "email sent", "to", e.To, "subject", e.Subject)
	return nil
}

// Sent returns the last emails sent (up to 1,000), oldest first.
func (m *LogMailer) Sent() []handlers.Email {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append(append([]handlers.Email(nil), m.last[m.next:]...), m.last[:m.next]...)
}

// Count reports how many emails were sent in all.
func (m *LogMailer) Count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.count
}
