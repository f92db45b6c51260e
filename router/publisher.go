package router

import (
	"context"
	"errors"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventfn/eventfn/router/relay"
)

// kafkaPublisher is a Watermill message.Publisher on the relay's batch
// producer: Publish sends all its messages together, waits for every ack, and
// maps each message as CloudEventsMarshaler does (the UUID is ce_id, metadata
// entries are headers, eventfn_key is the record key). The dead-letter
// middleware publishes through it, so dead letters get the same partitioning
// (murmur2, as Java clients) and the same size limit as every other record.
type kafkaPublisher struct {
	producer *relay.Producer
}

func (p kafkaPublisher) Publish(topic string, msgs ...*message.Message) error {
	recs := make([]relay.Record, len(msgs))
	ctx := context.Background()
	for i, msg := range msgs {
		recs[i] = recordOf(topic, msg)
		if i == 0 && msg.Context() != nil {
			ctx = context.WithoutCancel(msg.Context())
		}
	}
	var errs []error
	for i, err := range p.producer.Produce(ctx, recs) {
		if err != nil {
			errs = append(errs, fmt.Errorf("produce message %s to %s: %w", msgs[i].UUID, topic, err))
		}
	}
	return errors.Join(errs...)
}

// Close does nothing: the runtime owns the producer and closes it last.
func (kafkaPublisher) Close() error { return nil }

// recordOf maps a Watermill message to a Kafka record in CloudEvents binary mode.
func recordOf(topic string, msg *message.Message) relay.Record {
	rec := relay.Record{Topic: topic, Payload: msg.Payload, Headers: make(map[string]string, len(msg.Metadata)+1)}
	for k, v := range msg.Metadata {
		if k == metaKey {
			continue
		}
		rec.Headers[k] = v
	}
	rec.Headers[HeaderID] = msg.UUID
	if key := msg.Metadata.Get(metaKey); key != "" {
		rec.Key = []byte(key)
	}
	return rec
}
