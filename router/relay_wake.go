package router

import (
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v3/pkg/sql"
)

// relayWake is the relay's watermill-sql BackoffManager. An idle relay waits for
// whichever comes first: a nudge from a transaction of this process that
// committed events, or the poll interval (which catches commits made by other
// processes). watermill-sql calls HandleError before each idle sleep, so a
// manager that waits there and returns 0 polls at once after a nudge: local
// commits reach Kafka without waiting out a poll interval.
type relayWake struct {
	nudges   chan struct{}
	poll     time.Duration
	fallback wsql.BackoffManager
}

func newRelayWake(poll time.Duration) *relayWake {
	return &relayWake{
		nudges:   make(chan struct{}, 1),
		poll:     poll,
		fallback: wsql.NewDefaultBackoffManager(poll, 100*time.Millisecond),
	}
}

// nudge wakes an idle relay; it never blocks, and nudges made while the relay
// is busy collapse into one more poll.
func (w *relayWake) nudge() {
	select {
	case w.nudges <- struct{}{}:
	default:
	}
}

// HandleError implements wsql.BackoffManager.
func (w *relayWake) HandleError(logger watermill.LoggerAdapter, noMsg bool, err error) time.Duration {
	if err != nil || !noMsg {
		return w.fallback.HandleError(logger, noMsg, err)
	}
	t := time.NewTimer(w.poll)
	defer t.Stop()
	select {
	case <-w.nudges:
	case <-t.C:
	}
	return 0
}
