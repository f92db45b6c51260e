package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/handlers"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
)

type publishFlags struct {
	key     string
	wait    bool
	timeout time.Duration
	quiet   time.Duration
	source  string
}

func newPublishCmd(g *globalFlags, stdin io.Reader, stdout, stderr io.Writer, environ []string) *cobra.Command {
	f := &publishFlags{}
	cmd := &cobra.Command{
		Use:   "publish <event-type> <json | @file | ->",
		Short: "Publish a test event to Kafka, and with --wait follow what it causes",
		Long: `Publish one event, in the CloudEvents Kafka binary mode, to the topic of its
type on the Kafka the runtime uses. The payload is checked against the event
type first: invalid JSON or a payload of the wrong shape is refused.

With --wait, every event that follows from it (same correlation id), including
dead-lettered ones, is printed until nothing new arrives for --quiet or
--timeout passes (when a handler consumes the event, the quiet period counts
from the first record of the chain); a handler that is retrying or waiting for
the database holds the end until it settles or --timeout passes. The exit code is 1 if an
event of the chain was dead-lettered, 3 if --timeout passed while a handler
was still retrying or waiting.`,
		Example: `  eventfn publish order.placed '{"order_id":"o-1","customer_email":"a@example.com","total_cents":2500}' --wait
  eventfn publish payment.confirmed @payment.json --key o-1
  cat event.json | eventfn publish order.placed -`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load(environ)
			if err != nil {
				return err
			}
			return publish(cmd.Context(), cfg, f, args[0], args[1], stdin, stdout)
		},
	}
	cmd.Flags().StringVar(&f.key, "key", "", "Kafka key (default: the key the event type chooses, such as the order id)")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "follow and print the events this one causes")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "with --wait: give up after this long")
	cmd.Flags().DurationVar(&f.quiet, "quiet", 3*time.Second, "with --wait: stop once no new event arrived for this long")
	cmd.Flags().StringVar(&f.source, "source", "eventfn/cli", "CloudEvents source attribute")
	return cmd
}

func readPayload(arg string, stdin io.Reader) ([]byte, error) {
	switch {
	case arg == "-":
		b, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
		if err != nil {
			return nil, fmt.Errorf("read payload from stdin: %w", err)
		}
		return b, nil
	case strings.HasPrefix(arg, "@"):
		b, err := os.ReadFile(arg[1:])
		if err != nil {
			return nil, usageError("read payload file: %v", err)
		}
		return b, nil
	}
	return []byte(arg), nil
}

// checkEvent finds the event type and checks the payload against it.
func checkEvent(eventType string, payload []byte) (runtime.EventSpec, error) {
	var known []string
	for _, s := range handlers.Events() {
		if s.Type == eventType {
			if !json.Valid(payload) {
				var v any
				err := json.Unmarshal(payload, &v)
				return s, usageError("payload is not valid JSON: %v", err)
			}
			if err := s.Check(payload); err != nil {
				return s, usageError("payload is not a valid %s: %v", eventType, err)
			}
			return s, nil
		}
		known = append(known, s.Type)
	}
	sort.Strings(known)
	return runtime.EventSpec{}, usageError("unknown event type %q; known types: %s", eventType, strings.Join(known, ", "))
}

func publish(ctx context.Context, cfg configs.Config, f *publishFlags, eventType, arg string, stdin io.Reader, stdout io.Writer) error {
	payload, err := readPayload(arg, stdin)
	if err != nil {
		return err
	}
	spec, err := checkEvent(eventType, payload)
	if err != nil {
		return err
	}
	// A source the runtime refuses would be sent, and dead-lettered as
	// malformed on its first attempt.
	if f.source == "" {
		return usageError("--source: empty; CloudEvents requires a source")
	}
	if err := router.ValidateAttribute(router.HeaderSource, f.source); err != nil {
		return usageError("--source: %v", err)
	}
	var compact bytes.Buffer
	_ = json.Compact(&compact, payload)
	key := f.key
	if key == "" {
		key = spec.Key(payload)
	}
	id := uuid.NewString()
	published := time.Now().UTC()
	msg := message.NewMessage(id, compact.Bytes())
	msg.Metadata = message.Metadata{
		router.HeaderType:          eventType,
		router.HeaderSource:        f.source,
		router.HeaderSpecVersion:   "1.0",
		router.HeaderTime:          published.Format(time.RFC3339Nano),
		router.HeaderContentType:   "application/json",
		router.HeaderCorrelationID: id,
	}
	if key != "" {
		msg.Metadata.Set(router.MetadataKey, key)
	}
	record, err := router.CloudEventsMarshaler{}.Marshal(cfg.Kafka.Topic(eventType), msg)
	if err != nil {
		return err
	}
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		return err
	}
	sc.Net.DialTimeout = 5 * time.Second
	client, err := sarama.NewClient(cfg.Kafka.Brokers, sc)
	if err != nil {
		return fmt.Errorf("connect to Kafka at %v (is eventfn running?): %w", cfg.Kafka.Brokers, router.ExplainKafkaError(err, cfg.Kafka))
	}
	defer client.Close()

	var (
		follow *follower
		// handled: a handler consumes the published type, so something will
		// come of it, however slowly.
		handled bool
	)
	if f.wait {
		infos, err := describeHandlers(cfg)
		if err != nil {
			return err
		}
		handled = slices.ContainsFunc(infos, func(i router.HandlerInfo) bool { return i.Topic == record.Topic })
		follow, err = startFollowing(client, router.Topics(cfg, infos), id, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic))
		if err != nil {
			return err
		}
		defer follow.close()
	}

	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka producer: %w", err)
	}
	defer producer.Close()
	partition, offset, err := producer.SendMessage(record)
	if err != nil {
		return fmt.Errorf("publish %s to %s: %w", eventType, record.Topic, err)
	}
	fmt.Fprintf(stdout, "published %s id=%s key=%q topic=%s partition=%d offset=%d\n", eventType, id, key, record.Topic, partition, offset)
	if follow == nil {
		return nil
	}
	runsTopic := ""
	if cfg.Kafka.RunsTopic != "" {
		runsTopic = cfg.Kafka.Topic(cfg.Kafka.RunsTopic)
	}
	return follow.print(ctx, stdout, f.timeout, f.quiet, handled, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic), runsTopic, id, published)
}

// follower reads every partition of a set of topics from their current end and
// keeps the records of one correlation id.
type follower struct {
	consumer sarama.Consumer
	records  chan *sarama.ConsumerMessage
	wg       sync.WaitGroup
	pcs      []sarama.PartitionConsumer
}

func startFollowing(client sarama.Client, topics []string, correlationID, dlqTopic string) (*follower, error) {
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer: %w", err)
	}
	f := &follower{consumer: consumer, records: make(chan *sarama.ConsumerMessage, 256)}
	for _, topic := range topics {
		parts, err := client.Partitions(topic)
		if err != nil {
			f.close()
			return nil, fmt.Errorf("partitions of %s: %w", topic, err)
		}
		for _, p := range parts {
			var pc sarama.PartitionConsumer
			err := withFreshMetadata(func() error { return client.RefreshMetadata(topic) }, func() error {
				end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
				if err != nil {
					return fmt.Errorf("end offset of %s/%d: %w", topic, p, err)
				}
				if pc, err = consumer.ConsumePartition(topic, p, end); err != nil {
					return fmt.Errorf("consume %s/%d: %w", topic, p, err)
				}
				return nil
			})
			if err != nil {
				f.close()
				return nil, err
			}
			f.pcs = append(f.pcs, pc)
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				for m := range pc.Messages() {
					// The published event itself was already reported.
					if header(m, router.HeaderCorrelationID) == correlationID && (header(m, router.HeaderID) != correlationID || m.Topic == dlqTopic) {
						f.records <- m
					}
				}
			}()
		}
	}
	return f, nil
}

// withFreshMetadata runs fn, and again after refresh (of the topic's
// metadata) while the broker answers that the client's view is out of date,
// for a few seconds at most: a topic eventfn has just created is not served
// by its leader at once.
func withFreshMetadata(refresh, fn func() error) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := fn()
		stale := errors.Is(err, sarama.ErrNotLeaderForPartition) || errors.Is(err, sarama.ErrLeaderNotAvailable) ||
			errors.Is(err, sarama.ErrUnknownTopicOrPartition)
		if !stale || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
		if rerr := refresh(); rerr != nil {
			return errors.Join(err, rerr)
		}
	}
}

func (f *follower) close() {
	for _, pc := range f.pcs {
		pc.AsyncClose()
	}
	go func() {
		// Drain so the partition goroutines can finish.
		for range f.records {
		}
	}()
	f.wg.Wait()
	close(f.records)
	_ = f.consumer.Close()
}

var errDeadLettered = errors.New("an event of the chain was dead-lettered")

// print gathers the chain until it is quiet or timeout passes, and prints it.
// With handled, quiet counts from the first record of the chain: until then
// a busy eventfn may simply not have got to the event yet.
func (f *follower) print(ctx context.Context, out io.Writer, timeout, quiet time.Duration, handled bool, dlqTopic, runsTopic, rootID string, rootTime time.Time) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	idle := time.NewTimer(quiet)
	defer idle.Stop()
	if handled {
		idle.Stop() // Go 1.23+: no tick until the Reset of the first record
	}
	var records []*sarama.ConsumerMessage
	ending := ""
	for ending == "" {
		select {
		case m := <-f.records:
			records = append(records, m)
			idle.Reset(quiet) // Go 1.23+: no stale tick survives a Reset
		case <-idle.C:
			// A handler that is retrying or waiting for the database will run
			// again, perhaps after a backoff longer than quiet: not the end.
			if len(newChain(rootID, rootTime, records, dlqTopic, runsTopic).unsettled()) > 0 {
				idle.Reset(quiet)
				continue
			}
			ending = "quiet for " + quiet.String()
		case <-deadline.C:
			ending = "timed out after " + timeout.String()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c := newChain(rootID, rootTime, records, dlqTopic, runsTopic)
	c.print(out, rootID, 1)
	fmt.Fprintf(out, "%s after %d event(s) and %d handler run(s)\n", ending, c.events, c.runCount)
	if c.deadLettered {
		return ExitError{Code: 1, Err: errDeadLettered}
	}
	if open := c.unsettled(); len(open) > 0 {
		return ExitError{Code: 3, Err: fmt.Errorf("the chain had not settled: %s", strings.Join(open, "; "))}
	}
	return nil
}

// unsettled names the handler runs whose last attempt said they will run
// again (retrying, waiting for the database or a dependency) and that were not dead-lettered
// since.
func (c *chain) unsettled() []string {
	var open []string
	for id, runs := range c.runs {
		last := map[string]router.RunRecord{}
		for _, r := range runs {
			if l, ok := last[r.Handler]; !ok || r.Attempt > l.Attempt || (r.Attempt == l.Attempt && r.Start.After(l.Start)) {
				last[r.Handler] = r
			}
		}
		for h, r := range last {
			if r.Outcome == router.RunRetrying || r.Outcome == router.RunWaiting || r.Outcome == router.RunUnavailable {
				open = append(open, fmt.Sprintf("%s of event %s: %s after attempt %d", h, id, r.Outcome, r.Attempt))
			}
		}
	}
	slices.Sort(open)
	return open
}

// chain is what followed a published event, arranged by causation: each
// event's handler runs, and under each run the events it emitted.
type chain struct {
	start        time.Time
	byID         map[string]*sarama.ConsumerMessage
	runs         map[string][]router.RunRecord                   // by event id
	children     map[string]map[string][]*sarama.ConsumerMessage // event id -> handler -> events
	orphans      []*sarama.ConsumerMessage
	dead         map[string][]*sarama.ConsumerMessage // by event id
	events       int
	runCount     int
	deadLettered bool
}

func newChain(rootID string, start time.Time, records []*sarama.ConsumerMessage, dlqTopic, runsTopic string) *chain {
	c := &chain{start: start, byID: map[string]*sarama.ConsumerMessage{}, runs: map[string][]router.RunRecord{},
		children: map[string]map[string][]*sarama.ConsumerMessage{}, dead: map[string][]*sarama.ConsumerMessage{}}
	var events []*sarama.ConsumerMessage
	for _, m := range records {
		switch m.Topic {
		case runsTopic:
			var r router.RunRecord
			if json.Unmarshal(m.Value, &r) == nil {
				c.runs[r.EventID] = append(c.runs[r.EventID], r)
				c.runCount++
			}
		case dlqTopic:
			c.deadLettered = true
			id := header(m, router.HeaderID)
			c.dead[id] = append(c.dead[id], m)
		default:
			c.byID[header(m, router.HeaderID)] = m
			events = append(events, m)
			c.events++
		}
	}
	for _, m := range events {
		cause := header(m, router.HeaderCausationID)
		if _, known := c.byID[cause]; cause == "" || (cause != rootID && !known) {
			c.orphans = append(c.orphans, m)
			continue
		}
		handler := strings.TrimPrefix(header(m, router.HeaderSource), "eventfn/")
		if c.children[cause] == nil {
			c.children[cause] = map[string][]*sarama.ConsumerMessage{}
		}
		c.children[cause][handler] = append(c.children[cause][handler], m)
	}
	for id := range c.runs {
		sort.SliceStable(c.runs[id], func(i, j int) bool {
			a, b := c.runs[id][i], c.runs[id][j]
			if a.Handler != b.Handler {
				return a.Handler < b.Handler
			}
			return a.Attempt < b.Attempt
		})
	}
	return c
}

func (c *chain) offset(t time.Time) string {
	return "+" + t.Sub(c.start).Round(time.Millisecond).String()
}

// print writes the runs of event id, each followed by what it emitted,
// indented by depth.
func (c *chain) print(out io.Writer, id string, depth int) {
	indent := strings.Repeat("  ", depth)
	emittedBy := c.children[id]
	for _, r := range c.runs[id] {
		line := fmt.Sprintf("%s%s %s attempt %d: %s (%.1fms)", indent, c.offset(r.Start), r.Handler, r.Attempt, r.Outcome, r.DurationMS)
		if r.Error != "" {
			line += ": " + r.Error
		}
		fmt.Fprintln(out, line)
		if r.Outcome == router.RunOK {
			c.printEvents(out, emittedBy[r.Handler], depth+1)
			delete(emittedBy, r.Handler)
		}
	}
	// Events whose run record is missing (the runs topic is off, or a record
	// was dropped) still show, under their handler's name.
	handlers := make([]string, 0, len(emittedBy))
	for h := range emittedBy {
		handlers = append(handlers, h)
	}
	sort.Strings(handlers)
	for _, h := range handlers {
		fmt.Fprintf(out, "%s%s:\n", indent, h)
		c.printEvents(out, emittedBy[h], depth+1)
	}
	for _, m := range c.dead[id] {
		fmt.Fprintf(out, "%sDEAD-LETTERED %s by %s after %s attempt(s): %s\n", indent, header(m, router.HeaderType),
			header(m, router.HeaderDeadLetterHandler), header(m, router.HeaderAttempts), header(m, router.HeaderDeadLetterReason))
	}
	if depth == 1 {
		for _, m := range c.orphans {
			fmt.Fprintf(out, "%s(cause not seen) %s key=%q id=%s source=%s %s\n", indent, header(m, router.HeaderType), string(m.Key),
				header(m, router.HeaderID), header(m, router.HeaderSource), m.Value)
		}
	}
}

func (c *chain) printEvents(out io.Writer, events []*sarama.ConsumerMessage, depth int) {
	sort.SliceStable(events, func(i, j int) bool { return events[i].Timestamp.Before(events[j].Timestamp) })
	indent := strings.Repeat("  ", depth)
	for _, m := range events {
		at := m.Timestamp
		if t, err := time.Parse(time.RFC3339Nano, header(m, router.HeaderTime)); err == nil {
			at = t
		}
		fmt.Fprintf(out, "%s%s %s key=%q id=%s source=%s %s\n", indent, c.offset(at), header(m, router.HeaderType), string(m.Key),
			header(m, router.HeaderID), header(m, router.HeaderSource), m.Value)
		c.print(out, header(m, router.HeaderID), depth+1)
	}
}

func header(m *sarama.ConsumerMessage, key string) string {
	for _, h := range m.Headers {
		if h != nil && string(h.Key) == key {
			return string(h.Value)
		}
	}
	return ""
}
