package router

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventfn/eventfn/internal/outage"
)

// maxHeaderBytes bounds each header of a dead letter, the reason included: a
// reason quoting a 600 KB field once made the dead letter too large to write,
// and the event blocked its key for good.
const maxHeaderBytes = 4096

// HeaderPayloadTruncated is set on a dead letter whose payload had to be cut
// to fit under kafka.max_message_bytes; its value is the original size.
const HeaderPayloadTruncated = "eventfn_payload_truncated"

// HeaderHeadersDropped is set on a dead letter that lost headers of the
// original record (neither CloudEvents attributes nor eventfn's) to fit under
// kafka.max_message_bytes; its value is how many were dropped.
const HeaderHeadersDropped = "eventfn_headers_dropped"

// HeaderHeadersCut is set on a dead letter some of whose headers (the key
// included, which eventfn carries as eventfn_key) were cut to maxHeaderBytes;
// its value names them, comma-separated. Such a dead letter is not the event
// that failed any more, so it is not replayed.
const HeaderHeadersCut = "eventfn_headers_cut"

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
// maxBytes, the producer's own headers go (HeaderHeadersDropped), then the
// payload is cut as a last resort and HeaderPayloadTruncated says so. A dead letter that still cannot be written is an error: the event
// is not acknowledged and is tried again, never dropped.
type deadLetterPublisher struct {
	pub message.Publisher
	// health, when set, records a dead-letter topic that refuses writes, for
	// /readyz and the log: the event is then not acknowledged and is tried
	// again.
	health   *outage.Reporter
	maxBytes int
	written  prometheus.Counter
	// byClass, when set, counts the dead letters written by class (see
	// classifyDeadLetter).
	byClass *prometheus.CounterVec
}

func (d deadLetterPublisher) Publish(topic string, msgs ...*message.Message) error {
	classes := make([]string, len(msgs))
	for i, msg := range msgs {
		classes[i] = takeDeadLetterClass(msg)
		var cut []string
		for k, v := range msg.Metadata {
			if b := boundText(v, maxHeaderBytes); b != v {
				msg.Metadata[k] = b
				if k != HeaderDeadLetterReason { // a cut reason still says why
					cut = append(cut, k)
				}
			}
		}
		if len(cut) > 0 {
			slices.Sort(cut)
			msg.Metadata.Set(HeaderHeadersCut, strings.Join(cut, ","))
		}
		dropForeignHeaders(topic, msg, d.maxBytes)
		if recordOf(topic, msg).Size() > d.maxBytes {
			original := len(msg.Payload)
			msg.Metadata.Set(HeaderPayloadTruncated, strconv.Itoa(original))
			over := recordOf(topic, msg).Size() - d.maxBytes
			msg.Payload = msg.Payload[:max(original-over, 0)]
		}
	}
	if err := d.pub.Publish(topic, msgs...); err != nil {
		err = fmt.Errorf("write the dead letter to %s (the event stays unacknowledged and is tried again): %w", topic, err)
		if d.health != nil {
			d.health.Failed(err)
		}
		return err
	}
	if d.health != nil {
		d.health.Succeeded()
	}
	d.written.Add(float64(len(msgs)))
	if d.byClass != nil {
		for _, c := range classes {
			d.byClass.WithLabelValues(c).Inc()
		}
	}
	return nil
}

func (d deadLetterPublisher) Close() error { return d.pub.Close() }

// dropForeignHeaders removes the original producer's own headers, largest
// first, until the dead letter fits in maxBytes or none is left. The broker
// accepts records larger than kafka.max_message_bytes (its own limit is
// higher), so a record of hundreds of headers can arrive whose dead letter
// would not fit even without a payload. The CloudEvents attributes, eventfn's
// headers (key, attempts, origin) and the dead-letter reason stay: they say
// what the event was and why it failed.
func dropForeignHeaders(topic string, msg *message.Message, maxBytes int) {
	over := recordOf(topic, msg).Size() - maxBytes
	if over <= 0 {
		return
	}
	var foreign []string
	for k := range msg.Metadata {
		if !strings.HasPrefix(k, "ce_") && !strings.HasPrefix(k, "eventfn_") &&
			!strings.HasSuffix(k, "_poisoned") && k != HeaderContentType {
			foreign = append(foreign, k)
		}
	}
	slices.SortFunc(foreign, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(msg.Metadata[b]), len(msg.Metadata[a])), cmp.Compare(a, b))
	})
	dropped := 0
	for _, k := range foreign {
		if over <= 0 {
			break
		}
		over -= len(k) + len(msg.Metadata[k]) + 10 // as relay.Record.Size counts a header
		delete(msg.Metadata, k)
		dropped++
	}
	if dropped > 0 {
		msg.Metadata.Set(HeaderHeadersDropped, strconv.Itoa(dropped))
	}
}
