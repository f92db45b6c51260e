package router

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

// maxHeaderBytes bounds each header of a dead letter, the reason included: a
// reason quoting a 600 KB field once made the dead letter too large to write,
// and the event blocked its key for good.
const maxHeaderBytes = 4096

// HeaderPayloadTruncated is set on a dead letter whose payload had to be cut
// to fit under kafka.max_message_bytes; its value is the original size.
const HeaderPayloadTruncated = "eventfn_payload_truncated"

// boundText cuts s to at most n bytes, keeping its start and its end (where
// an error's cause usually is), and says how much was cut.
func boundText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	note := fmt.Sprintf(" … [cut %d bytes] … ", len(s)-n)
	keep := max(n-len(note), 0)
	return strings.ToValidUTF8(s[:keep/2], "") + note + strings.ToValidUTF8(s[len(s)-(keep-keep/2):], "")
}

// deadLetterPublisher makes every dead letter fit and counts only those that
// were written. Headers are cut to maxHeaderBytes; if the record is still over
// maxBytes, the payload is cut as a last resort and HeaderPayloadTruncated
// says so. A dead letter that still cannot be written is an error: the event
// is not acknowledged and is tried again, never dropped.
type deadLetterPublisher struct {
	pub      message.Publisher
	maxBytes int
	written  prometheus.Counter
}

func (d deadLetterPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		for k, v := range msg.Metadata {
			msg.Metadata[k] = boundText(v, maxHeaderBytes)
		}
		if recordOf(topic, msg).Size() > d.maxBytes {
			original := len(msg.Payload)
			msg.Metadata.Set(HeaderPayloadTruncated, strconv.Itoa(original))
			over := recordOf(topic, msg).Size() - d.maxBytes
			msg.Payload = msg.Payload[:max(original-over, 0)]
		}
	}
	if err := d.pub.Publish(topic, msgs...); err != nil {
		return fmt.Errorf("write the dead letter to %s: %w", topic, err)
	}
	d.written.Add(float64(len(msgs)))
	return nil
}

func (d deadLetterPublisher) Close() error { return d.pub.Close() }
