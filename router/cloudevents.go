package router

import (
	"fmt"
	"slices"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Kafka record headers of the CloudEvents Kafka protocol binding, binary content
// mode (https://github.com/cloudevents/spec/blob/main/cloudevents/bindings/kafka-protocol-binding.md).
// eventfn keeps them as Watermill metadata under the same names, so a message's
// metadata and its Kafka headers are one and the same.
const (
	HeaderID            = "ce_id"
	HeaderType          = "ce_type"
	HeaderSource        = "ce_source"
	HeaderSpecVersion   = "ce_specversion"
	HeaderTime          = "ce_time"
	HeaderContentType   = "content-type"
	HeaderCorrelationID = "ce_correlationid"

	// MetadataKey carries the Kafka record key inside Watermill metadata; it is
	// the record's key on the wire, never a header.
	MetadataKey = "eventfn_key"
	metaKey     = MetadataKey
	// metaAttempts counts calls of a handler for one delivery; a dead-lettered
	// event carries it as a header.
	metaAttempts = "eventfn_attempts"
	// metaRetries counts the retries of one delivery that a failure used
	// up: calls that found the database or a dependency unavailable use
	// none. It lives on the message so that a wait for the database, which
	// calls the retries' middleware again, does not start them over.
	metaRetries = "eventfn_retries"
	// metaOrigin* record where a dead-lettered event was read from.
	metaOriginTopic     = "eventfn_origin_topic"
	metaOriginPartition = "eventfn_origin_partition"
	metaOriginOffset    = "eventfn_origin_offset"
	// metaMalformed says why a record's headers cannot be read as one event;
	// the handler dead-letters such a record without calling the user's code.
	metaMalformed = "eventfn_malformed"
)

// attributeHeaders are the headers eventfn takes meaning from. A record that
// carries one of them twice with different values is ambiguous: which ce_id is
// the event's identity? Other headers are the producer's business and may
// repeat freely.
var attributeHeaders = map[string]bool{
	HeaderID: true, HeaderType: true, HeaderSource: true, HeaderSpecVersion: true,
	HeaderTime: true, HeaderContentType: true, HeaderCorrelationID: true,
}

// deliveryBookkeeping are the headers a dead letter gets about its failed
// delivery; they describe that delivery, not the event, and are dropped when
// the record is read again.
var deliveryBookkeeping = map[string]bool{
	metaAttempts:                     true,
	metaRetries:                      true,
	metaMalformed:                    true,
	HeaderDeadLetterReason:           true,
	HeaderDeadLetterHandler:          true,
	middleware.PoisonedTopicKey:      true,
	middleware.PoisonedSubscriberKey: true,
}

// CloudEventsMarshaler maps Watermill messages to Kafka records in the CloudEvents
// binary mode: the payload is the record value, the message UUID is ce_id, every
// metadata entry is a header, and the eventfn_key entry is the record key.
type CloudEventsMarshaler struct{}

// Marshal builds a producer record for topic.
func (CloudEventsMarshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	headers := make([]sarama.RecordHeader, 0, len(msg.Metadata)+1)
	headers = append(headers, sarama.RecordHeader{Key: []byte(HeaderID), Value: []byte(msg.UUID)})
	for k, v := range msg.Metadata {
		if k == metaKey || k == HeaderID {
			continue
		}
		headers = append(headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	pm := &sarama.ProducerMessage{
		Topic:   topic,
		Value:   sarama.ByteEncoder(msg.Payload),
		Headers: headers,
	}
	if key := msg.Metadata.Get(metaKey); key != "" {
		pm.Key = sarama.StringEncoder(key)
	}
	return pm, nil
}

// Unmarshal turns any Kafka record into a message; it never fails, because
// Watermill's Kafka subscriber stops consuming on an unmarshal error, and a record
// eventfn cannot handle must reach the dead-letter topic instead. A record without
// ce_id (written by a producer that does not speak CloudEvents) is identified by
// its position.
func (CloudEventsMarshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	id := ""
	md := make(message.Metadata, len(rec.Headers)+1)
	var attrs map[string]string // attribute headers seen so far, to find a repeat
	var ambiguous []string
	for _, h := range rec.Headers {
		if h == nil {
			continue
		}
		k, v := string(h.Key), string(h.Value)
		if attributeHeaders[k] {
			if prev, seen := attrs[k]; seen && prev != v && !slices.Contains(ambiguous, k) {
				ambiguous = append(ambiguous, k)
			}
			if attrs == nil {
				attrs = make(map[string]string, len(attributeHeaders))
			}
			attrs[k] = v
		}
		if k == HeaderID {
			id = v
			continue
		}
		if deliveryBookkeeping[k] || k == metaKey {
			// A replayed dead letter carries its old attempt count and
			// reason; this delivery is a new one and starts at attempt 1.
			// The key is the record's key, never a header.
			continue
		}
		md[k] = v
	}
	if len(ambiguous) > 0 {
		md[metaMalformed] = fmt.Sprintf("malformed event: header %s appears more than once with different values", strings.Join(ambiguous, ", "))
	}
	if id == "" {
		id = fmt.Sprintf("kafka:%s/%d/%d", rec.Topic, rec.Partition, rec.Offset)
	}
	if len(rec.Key) > 0 {
		md[metaKey] = string(rec.Key)
	}
	md[metaOriginTopic] = rec.Topic
	md[metaOriginPartition] = fmt.Sprint(rec.Partition)
	md[metaOriginOffset] = fmt.Sprint(rec.Offset)
	msg := message.NewMessage(id, rec.Value)
	msg.Metadata = md
	return msg, nil
}

// unmarshalRecord maps a franz-go record as CloudEventsMarshaler.Unmarshal maps
// a Sarama one; both paths share that one mapping.
func unmarshalRecord(r *kgo.Record) *message.Message {
	cm := &sarama.ConsumerMessage{
		Topic:     r.Topic,
		Partition: r.Partition,
		Offset:    r.Offset,
		Key:       r.Key,
		Value:     r.Value,
		Timestamp: r.Timestamp,
		Headers:   make([]*sarama.RecordHeader, len(r.Headers)),
	}
	for i, h := range r.Headers {
		cm.Headers[i] = &sarama.RecordHeader{Key: []byte(h.Key), Value: h.Value}
	}
	msg, _ := CloudEventsMarshaler{}.Unmarshal(cm) // never fails, see Unmarshal
	return msg
}
