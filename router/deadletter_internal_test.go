package router

import (
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type capture struct{ got []*message.Message }

func (c *capture) Publish(_ string, msgs ...*message.Message) error {
	c.got = append(c.got, msgs...)
	return nil
}
func (c *capture) Close() error { return nil }

// TestADeadLetterIsCutToFit: headers are bounded, and a payload that still
// does not fit is cut, with its original size in a header.
func TestADeadLetterIsCutToFit(t *testing.T) {
	tests := []struct {
		name       string
		payload    int
		reason     int
		wantCut    bool
		wantLength int
	}{
		{"small", 100, 50, false, 100},
		{"a long reason only", 100, 600_000, false, 100},
		{"a payload at the limit", 1_000_000, 10, true, 0},
		{"a payload of 10 MiB", 10 << 20, 600_000, true, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &capture{}
			written := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
			d := deadLetterPublisher{pub: c, maxBytes: 1_000_000, written: written}
			msg := message.NewMessage("id", []byte(strings.Repeat("p", tt.payload)))
			msg.Metadata.Set(HeaderDeadLetterReason, strings.Repeat("é", tt.reason/2))
			if err := d.Publish("dlq", msg); err != nil {
				t.Fatal(err)
			}
			got := c.got[0]
			if size := recordOf("dlq", got).Size(); size > 1_000_000 {
				t.Fatalf("the dead letter takes %d bytes", size)
			}
			if r := got.Metadata.Get(HeaderDeadLetterReason); len(r) > maxHeaderBytes || !utf8.ValidString(r) {
				t.Fatalf("reason of %d bytes, valid UTF-8: %v", len(r), utf8.ValidString(r))
			}
			cut := got.Metadata.Get(HeaderPayloadTruncated)
			if (cut != "") != tt.wantCut || (tt.wantCut && cut != strconv.Itoa(tt.payload)) {
				t.Fatalf("%s = %q", HeaderPayloadTruncated, cut)
			}
			if !tt.wantCut && len(got.Payload) != tt.wantLength {
				t.Fatalf("payload %d bytes, want %d", len(got.Payload), tt.wantLength)
			}
			if testutil.ToFloat64(written) != 1 {
				t.Fatal("the written dead letter was not counted")
			}
		})
	}
}
