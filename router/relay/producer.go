package relay

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// ProducerConfig configures the Kafka producer of the relay and of dead letters.
type ProducerConfig struct {
	// Brokers are the bootstrap addresses.
	Brokers []string
	// ClientID names the client to the brokers.
	ClientID string
	// MaxRecordBytes is the largest record produced; a larger one fails at once
	// and is parked instead of retried.
	MaxRecordBytes int
	// DeliveryTimeout bounds how long one record is retried inside the client
	// before the relay sees the failure and backs off.
	DeliveryTimeout time.Duration
}

// Producer produces batches of records to Kafka: all records of a batch are in
// flight together, acks=all, with the idempotent producer, so one partition's
// records (one key's, under the Java client's murmur2 partitioning) land in the
// order given.
type Producer struct {
	client *kgo.Client
	max    int
}

// NewProducer connects lazily: it fails only on invalid configuration.
func NewProducer(cfg ProducerConfig) (*Producer, error) {
	if cfg.MaxRecordBytes <= 0 {
		return nil, errors.New("relay producer: MaxRecordBytes must be positive")
	}
	if cfg.DeliveryTimeout <= 0 {
		cfg.DeliveryTimeout = 10 * time.Second
	}
	client, err := kgo.NewClient(
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// A batch is sent as soon as the relay hands it over: the relay batches
		// already, and lingering would only add latency.
		kgo.ProducerLinger(0),
		kgo.ProducerBatchMaxBytes(int32(cfg.MaxRecordBytes+recordOverhead)),
		kgo.RecordDeliveryTimeout(cfg.DeliveryTimeout),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		// The default partitioner hashes keys with murmur2 exactly as the Java
		// client does, so other producers' events of one key share a partition.
	)
	if err != nil {
		return nil, fmt.Errorf("kafka producer for %v: %w", cfg.Brokers, err)
	}
	return &Producer{client: client, max: cfg.MaxRecordBytes}, nil
}

// Client is the underlying franz-go client, for pings and admin requests.
func (p *Producer) Client() *kgo.Client { return p.client }

// Produce sends recs together and waits for every ack. The result has one error
// (or nil) per record, in order.
func (p *Producer) Produce(ctx context.Context, recs []Record) []error { return p.Send(ctx, recs)() }

// Send hands recs to the client in order, all in flight together, and
// returns a function that waits for every ack and returns one error (or nil)
// per record. Records of one partition land in the order they were handed
// over, across Send calls too, so a caller may Send the next batch before
// waiting for this one.
func (p *Producer) Send(ctx context.Context, recs []Record) (wait func() []error) {
	errs := make([]error, len(recs))
	var wg sync.WaitGroup
	for i, r := range recs {
		if size := r.Size(); size > p.max {
			errs[i] = fmt.Errorf("%w: %d bytes, the limit (kafka.max_message_bytes) is %d", ErrTooLarge, size, p.max)
			continue
		}
		kr := &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Payload, Headers: make([]kgo.RecordHeader, 0, len(r.Headers))}
		for k, v := range r.Headers {
			kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		wg.Add(1)
		p.client.Produce(ctx, kr, func(_ *kgo.Record, err error) {
			errs[i] = err
			wg.Done()
		})
	}
	return func() []error {
		wg.Wait()
		return errs
	}
}

// Close flushes nothing (every Produce waited for its acks) and disconnects.
func (p *Producer) Close() { p.client.Close() }

// ErrTooLarge is a record larger than the producer may send.
var ErrTooLarge = errors.New("record too large for Kafka")

// Unproducible reports whether err means the record can never be produced, as
// opposed to a broker or network that is away for now.
func Unproducible(err error) bool {
	return errors.Is(err, ErrTooLarge) ||
		errors.Is(err, kerr.MessageTooLarge) ||
		errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) ||
		errors.Is(err, kerr.CorruptMessage) ||
		errors.Is(err, kerr.InvalidTopicException)
}
