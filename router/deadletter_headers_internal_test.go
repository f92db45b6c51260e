package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestADeadLetterWithManyLargeHeadersFits: cutting each header to 4 KiB and
// the payload to nothing is not enough when a record carries hundreds of
// headers. The broker takes records up to its own max.message.bytes
// (1048588 by default), above eventfn's 1000000, so such a record can arrive;
// its dead letter did not fit, and the event was tried again for ever. The
// producer's own headers go, largest first, before the payload is cut; the
// CloudEvents attributes, the key and the reason stay.
func TestADeadLetterWithManyLargeHeadersFits(t *testing.T) {
	tests := []struct {
		name        string
		headers     int
		payload     int
		wantDropped bool
		wantPayload bool // the payload kept whole
	}{
		{"a few headers", 3, 1000, false, true},
		{"headers over the limit, a small payload", 260, 1000, true, true},
		{"headers and a payload each at the limit", 260, 1_000_000, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &capture{}
			written := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
			d := deadLetterPublisher{pub: c, maxBytes: 1_000_000, written: written}
			msg := message.NewMessage("id-1", []byte(strings.Repeat("p", tt.payload)))
			for i := range tt.headers {
				msg.Metadata.Set(fmt.Sprintf("x-app-%03d", i), strings.Repeat("h", 4000))
			}
			keep := map[string]string{HeaderType: "order.placed", HeaderSource: "shop", metaKey: "o-1",
				HeaderDeadLetterReason: "customer_email is not an email address", metaAttempts: "1"}
			for k, v := range keep {
				msg.Metadata.Set(k, v)
			}
			if err := d.Publish("dlq", msg); err != nil {
				t.Fatal(err)
			}
			got := c.got[0]
			if size := recordOf("dlq", got).Size(); size > 1_000_000 {
				t.Fatalf("the dead letter takes %d bytes", size)
			}
			for k, v := range keep {
				if got.Metadata.Get(k) != v {
					t.Errorf("%s = %q, want %q kept", k, got.Metadata.Get(k), v)
				}
			}
			if dropped := got.Metadata.Get(HeaderHeadersDropped); (dropped != "") != tt.wantDropped {
				t.Errorf("%s = %q, want set: %v", HeaderHeadersDropped, dropped, tt.wantDropped)
			}
			if whole := len(got.Payload) == tt.payload; whole != tt.wantPayload {
				t.Errorf("payload %d of %d bytes, want it whole: %v", len(got.Payload), tt.payload, tt.wantPayload)
			}
			if testutil.ToFloat64(written) != 1 {
				t.Fatal("the written dead letter was not counted")
			}
		})
	}
}
