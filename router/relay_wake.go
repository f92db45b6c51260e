package router

import (
	"sync/atomic"

	"github.com/eventfn/eventfn/router/relay"
)

// relayWake lets a transaction that committed events wake the relay at once.
// The outbox is built before the relay, so the relay is attached later; a
// nudge before that is dropped (the relay reads everything pending at start).
type relayWake struct {
	relay atomic.Pointer[relay.Relay]
}

func (w *relayWake) nudge() {
	if r := w.relay.Load(); r != nil {
		r.Nudge()
	}
}
