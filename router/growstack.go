package router

import (
	goruntime "runtime"

	"github.com/ThreeDotsLabs/watermill/message"
)

// growStack grows the calling goroutine's stack to 32 KiB while the stack is
// still shallow. Watermill starts a goroutine for every event, and
// callBounded one for every handler call; each starts with a small stack and
// used to grow it in the middle of a pgx round trip, several frames of
// middleware, database/sql and pgx deep, where each doubling copies the
// stack and adjusts every frame on it. In a CPU profile at 400 orders/s that
// was 8 % of eventfn's time (runtime.newstack under pgconn.StartPipeline).
// Grown here, once, it copies a few frames. franz-go (kgo.growStack) and
// CockroachDB (util/growstack) do the same.
//
//go:noinline
func growStack() {
	var buf [16 << 10]byte
	buf[0] = 1
	goruntime.KeepAlive(&buf)
}

// grownStack runs the rest of an event's middleware and handler on a grown
// stack; it is the outermost middleware, the first code of eventfn's on
// Watermill's goroutine for the event.
func grownStack(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		growStack()
		return h(msg)
	}
}
