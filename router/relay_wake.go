package router

import (
	"sync/atomic"

	"github.com/eventfn/eventfn/router/relay"
)

// relayWake lets a transaction that committed events wake the relay at once:
// this process's relay when it leads, and otherwise the leader of another
// process, through a PostgreSQL notification (sent by the Runtime's
// notifier). The outbox is built before the relay, so the relay is attached
// later; a commit before that asks for a notification (and the relay reads
// everything pending at its start).
type relayWake struct {
	relay    atomic.Pointer[relay.Relay]
	notifier *relay.Notifier // nil on SQLite
}

func (w *relayWake) nudge() {
	if r := w.relay.Load(); r != nil && r.Leading() {
		r.Nudge()
		return
	}
	w.notifier.Notify()
}
