package relay

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
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
	// Opts are extra franz-go options: TLS and SASL.
	Opts []kgo.Opt
}

// Producer produces batches of records to Kafka: all records of a batch are in
// flight together, acks=all, with the idempotent producer, so one partition's
// records (one key's, under the Java client's murmur2 partitioning) land in the
// order given.
type Producer struct {
	client  *kgo.Client
	opts    []kgo.Opt // client's, for the clients of limited topics
	max     int
	timeout time.Duration // DeliveryTimeout
	// limited are the topics found to take smaller record batches than
	// max (max.message.bytes lowered while eventfn runs), each produced by
	// a client of its own whose batches fit: a topic refuses a batch over
	// its limit as a whole, and franz-go fails every record buffered behind
	// it. Replaced whole under limitsMu; read without a lock by Send.
	limited  atomic.Pointer[map[string]limitedTopic]
	limitsMu sync.Mutex
	retired  []*kgo.Client // clients of limits replaced since, closed with p, aborted with the rest
	closed   bool          // Close ran: no client is made any more
}

// stallGrace is how long past its delivery timeout a batch may still be
// unanswered before the producer gives it up (see Send).
const stallGrace = 5 * time.Second

// ErrStalled fails the records of a batch the client still held well past the
// delivery timeout.
var ErrStalled = errors.New("kafka produce stalled: no broker answered within the delivery timeout")

// NewProducer connects lazily: it fails only on invalid configuration.
func NewProducer(cfg ProducerConfig) (*Producer, error) {
	if cfg.MaxRecordBytes <= 0 {
		return nil, errors.New("relay producer: MaxRecordBytes must be positive")
	}
	if cfg.DeliveryTimeout <= 0 {
		cfg.DeliveryTimeout = 10 * time.Second
	}
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// A batch is sent as soon as the relay hands it over: the relay batches
		// already, and lingering would only add latency.
		kgo.ProducerLinger(0),
		// No record batch over kafka.max_message_bytes, so that a topic
		// that takes that much takes every batch. A record of Size() up to
		// it fits alone: Size counts more than its batch's framing.
		kgo.ProducerBatchMaxBytes(int32(cfg.MaxRecordBytes)),
		kgo.RecordDeliveryTimeout(cfg.DeliveryTimeout),
		kgo.ProducerBatchCompression(kgo.NoCompression()),
		// The default partitioner hashes keys with murmur2 exactly as the Java
		// client does, so other producers' events of one key share a partition.
	}, cfg.Opts...)
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka producer for %v: %w", cfg.Brokers, err)
	}
	return &Producer{client: client, opts: opts, max: cfg.MaxRecordBytes, timeout: cfg.DeliveryTimeout}, nil
}

// limitedTopic is a topic that takes smaller record batches than
// kafka.max_message_bytes, and the client whose batches fit it.
type limitedTopic struct {
	client *kgo.Client
	limit  int
}

// franzBatchSlack is how much more franz-go counts in a record batch than
// Kafka checks against max.message.bytes (the records array's length): a
// client of a topic's limit plus this makes every batch the topic takes.
const franzBatchSlack = 4

// clientFor is the client that produces to topic, and the topic's limit
// when it takes less than max (0 when not).
func (p *Producer) clientFor(topic string) (*kgo.Client, int) {
	if m := p.limited.Load(); m != nil {
		if lt, ok := (*m)[topic]; ok {
			return lt.client, lt.limit
		}
	}
	return p.client, 0
}

// clients are every client of p.
func (p *Producer) clients() []*kgo.Client {
	out := []*kgo.Client{p.client}
	if m := p.limited.Load(); m != nil {
		for _, lt := range *m {
			out = append(out, lt.client)
		}
	}
	return out
}

// limitTopics reads max.message.bytes of every topic of recs whose record
// batch the broker refused as too large, and gives a topic that takes less
// than max a client whose batches fit (one whose limit is max again goes
// back to the shared client). After that the topic refuses no batch but one
// of a record over its limit, alone. A limit that cannot be read changes
// nothing: the relay sends the refused rows one at a time.
func (p *Producer) limitTopics(ctx context.Context, recs []Record, errs []error) {
	var topics []string
	for i, err := range errs {
		if (errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge)) && !slices.Contains(topics, recs[i].Topic) {
			topics = append(topics, recs[i].Topic)
		}
	}
	if len(topics) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	described, err := kadm.NewClient(p.client).DescribeTopicConfigs(ctx, topics...)
	if err != nil {
		return
	}
	p.limitsMu.Lock()
	defer p.limitsMu.Unlock()
	if p.closed {
		return
	}
	next := map[string]limitedTopic{}
	if m := p.limited.Load(); m != nil {
		maps.Copy(next, *m)
	}
	for _, d := range described {
		if d.Err != nil {
			continue
		}
		limit := p.max
		for _, c := range d.Configs {
			if c.Key == "max.message.bytes" && c.Value != nil {
				if n, err := strconv.Atoi(*c.Value); err == nil {
					limit = n
				}
			}
		}
		old, had := next[d.Name]
		if had && old.limit == limit {
			continue
		}
		if had {
			p.retired = append(p.retired, old.client)
			delete(next, d.Name)
		}
		if limit >= p.max {
			continue
		}
		cl, err := kgo.NewClient(append(slices.Clone(p.opts), kgo.ProducerBatchMaxBytes(int32(limit+franzBatchSlack)))...)
		if err != nil {
			continue
		}
		next[d.Name] = limitedTopic{client: cl, limit: limit}
	}
	p.limited.Store(&next)
}

// Client is the underlying franz-go client, for pings and admin requests.
func (p *Producer) Client() *kgo.Client { return p.client }

// Produce sends recs together and waits for every ack. The result has one error
// (or nil) per record, in order.
func (p *Producer) Produce(ctx context.Context, recs []Record) []error {
	return p.Send(ctx, recs).Wait()
}

// sending is a batch handed to the client.
type sending struct {
	p    *Producer
	ctx  context.Context
	recs []Record
	wg   sync.WaitGroup
	// failed is set by the first promise with an error.
	failed atomic.Bool
	mu     sync.Mutex // guards errs and answered: promises run on the client's goroutines
	errs   []error
	// answered says which records have their result in errs.
	answered []bool
}

// Send hands recs to the client in order, all in flight together. Records of
// one partition land in the order they were handed over, across Send calls
// too, so a caller may Send the next batch before waiting for this one.
//
// The wait ends by itself. franz-go fails a record at its delivery timeout only
// while it can talk to some broker; with every broker gone it keeps the records
// until one is back. So a batch still unanswered stallGrace after its timeout
// is given up: every record the client buffers is aborted (the caller retries
// them in order, with nothing stale left to land behind them), and its
// records fail with ErrStalled.
// The wait also ends with ctx, failing what is unanswered with ctx's error.
func (p *Producer) Send(ctx context.Context, recs []Record) Sent {
	s := &sending{p: p, ctx: ctx, recs: recs, errs: make([]error, len(recs)), answered: make([]bool, len(recs))}
	var behind map[string]bool // topics whose later records wait (see ErrBehindTooLarge)
	for i, r := range recs {
		if msg, bad := r.Headers[headerDecodeError]; bad {
			s.errs[i], s.answered[i] = fmt.Errorf("%w: %s", ErrUndecodableHeaders, msg), true
			continue
		}
		size := r.Size()
		if size > p.max {
			s.errs[i], s.answered[i] = fmt.Errorf("%w: %d bytes, the limit (kafka.max_message_bytes) is %d", ErrTooLarge, size, p.max), true
			continue
		}
		if behind[r.Topic] {
			s.errs[i], s.answered[i] = ErrBehindTooLarge, true
			continue
		}
		client, limit := p.clientFor(r.Topic)
		if limit > 0 && size > limit {
			// franz-go may refuse this record alone, and take those behind
			// it: they wait, so that it is not tried again after them (its
			// topic's limit may be higher by now).
			if behind == nil {
				behind = map[string]bool{}
			}
			behind[r.Topic] = true
			s.failed.Store(true)
		}
		kr := &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Payload, Headers: make([]kgo.RecordHeader, 0, len(r.Headers))}
		for k, v := range r.Headers {
			kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		s.wg.Add(1)
		client.Produce(ctx, kr, func(_ *kgo.Record, err error) {
			if err != nil {
				s.failed.Store(true)
			}
			s.mu.Lock()
			s.errs[i], s.answered[i] = err, true
			s.mu.Unlock()
			s.wg.Done()
		})
	}
	return s
}

// Failed reports whether the client has failed a record of the batch
// already; a record refused before it reached the client (too large) does not
// count.
func (s *sending) Failed() bool { return s.failed.Load() }

// Wait waits for every ack and returns one error (or nil) per record.
func (s *sending) Wait() []error {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	stall := time.NewTimer(s.p.timeout + stallGrace)
	defer stall.Stop()
	var giveUp error
	select {
	case <-done:
		s.p.followRecreated(s.recs, s.errs)
		s.p.limitTopics(s.ctx, s.recs, s.errs)
		return s.errs
	case <-s.ctx.Done():
		giveUp = context.Cause(s.ctx)
	case <-stall.C:
		giveUp = ErrStalled
		// The safe AbortBufferedRecords waits for a produce attempt that
		// never comes while no broker answers. Without transactions the
		// unsafe one is safe: the client bumps its producer epoch for a
		// record it had sent, so no sequence number is reused; a record
		// that did land comes again with the retry, and the inbox absorbs
		// it.
		s.p.limitsMu.Lock()
		for _, cl := range append(s.p.clients(), s.p.retired...) {
			cl.UnsafeAbortBufferedRecords()
		}
		s.p.limitsMu.Unlock()
		select {
		case <-done:
		case <-time.After(stallGrace):
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]error, len(s.errs))
	for i := range s.errs {
		out[i] = s.errs[i]
		if !s.answered[i] {
			out[i] = giveUp
		}
	}
	return out
}

// followRecreated purges from the client every topic of recs that failed
// with UNKNOWN_TOPIC_ID: the topic was deleted and created again, and
// franz-go keeps producing to the id it first met, failing every record,
// until the topic is purged (its documented way back). The relay retries
// the records, in order, and the next produce finds the new topic. The
// caller is done with the records' errors only after this returns, so no
// record of the old topic is in flight.
func (p *Producer) followRecreated(recs []Record, errs []error) {
	var topics []string
	for i, err := range errs {
		if errors.Is(err, kerr.UnknownTopicID) && !slices.Contains(topics, recs[i].Topic) {
			topics = append(topics, recs[i].Topic)
		}
	}
	for _, t := range topics {
		client, _ := p.clientFor(t)
		client.PurgeTopicsFromProducing(t)
	}
}

// Close flushes nothing (every Produce waited for its acks) and disconnects.
func (p *Producer) Close() {
	p.limitsMu.Lock()
	defer p.limitsMu.Unlock()
	p.closed = true
	for _, cl := range append(p.clients(), p.retired...) {
		cl.Close()
	}
}

// ErrTooLarge is a record larger than the producer may send.
var ErrTooLarge = errors.New("record too large for Kafka")

// ErrUndecodableHeaders is an outbox row whose headers column is not a JSON
// object of strings: without its CloudEvents attributes its consumers could
// neither route nor deduplicate it. Such rows were produced with a header
// saying so, and marked forwarded (found by a fresh-eyed attack); they are
// parked now.
var ErrUndecodableHeaders = errors.New("the row's headers column is not a JSON object of strings")

// ErrBehindTooLarge fails a record behind one of its topic that may be too
// large for the topic's lowered limit, in one batch: it was not handed over,
// and goes again after that one.
var ErrBehindTooLarge = errors.New("not produced: behind a record that may be too large for its topic")

// Unproducible reports whether err means the record can never be produced, as
// opposed to a broker or network that is away for now.
func Unproducible(err error) bool {
	return errors.Is(err, ErrTooLarge) ||
		errors.Is(err, ErrUndecodableHeaders) ||
		errors.Is(err, kerr.MessageTooLarge) ||
		errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) ||
		errors.Is(err, kerr.CorruptMessage) ||
		errors.Is(err, kerr.InvalidTopicException)
}
