package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
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
	"github.com/eventfn/eventfn/wiring"
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
--timeout passes. The exit code is 1 if an event of the chain was dead-lettered.`,
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
	var compact bytes.Buffer
	_ = json.Compact(&compact, payload)
	key := f.key
	if key == "" {
		key = spec.Key(payload)
	}
	id := uuid.NewString()
	msg := message.NewMessage(id, compact.Bytes())
	msg.Metadata = message.Metadata{
		router.HeaderType:          eventType,
		router.HeaderSource:        f.source,
		router.HeaderSpecVersion:   "1.0",
		router.HeaderTime:          time.Now().UTC().Format(time.RFC3339Nano),
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

	var follow *follower
	if f.wait {
		infos, err := router.Describe(cfg, wiring.BuildHandlers(wiring.BaseConfig(cfg), slog.New(slog.DiscardHandler)))
		if err != nil {
			return err
		}
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
	return follow.print(ctx, stdout, f.timeout, f.quiet, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic))
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
			end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				f.close()
				return nil, fmt.Errorf("end offset of %s/%d: %w", topic, p, err)
			}
			pc, err := consumer.ConsumePartition(topic, p, end)
			if err != nil {
				f.close()
				return nil, fmt.Errorf("consume %s/%d: %w", topic, p, err)
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

func (f *follower) print(ctx context.Context, out io.Writer, timeout, quiet time.Duration, dlqTopic string) error {
	start := time.Now()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	idle := time.NewTimer(quiet)
	defer idle.Stop()
	seen := 0
	var result error
	for {
		select {
		case m := <-f.records:
			seen++
			if m.Topic == dlqTopic {
				result = ExitError{Code: 1, Err: errDeadLettered}
				fmt.Fprintf(out, "+%-7s DEAD-LETTERED %s by %s after %s attempt(s): %s\n",
					time.Since(start).Round(time.Millisecond), header(m, router.HeaderType),
					header(m, router.HeaderDeadLetterHandler), header(m, router.HeaderAttempts), header(m, router.HeaderDeadLetterReason))
			} else {
				fmt.Fprintf(out, "+%-7s %s key=%q id=%s source=%s %s\n",
					time.Since(start).Round(time.Millisecond), header(m, router.HeaderType), string(m.Key),
					header(m, router.HeaderID), header(m, router.HeaderSource), m.Value)
			}
			if !idle.Stop() {
				<-idle.C
			}
			idle.Reset(quiet)
		case <-idle.C:
			fmt.Fprintf(out, "quiet for %s after %d event(s)\n", quiet, seen)
			return result
		case <-deadline.C:
			fmt.Fprintf(out, "timed out after %s with %d event(s)\n", timeout, seen)
			return result
		case <-ctx.Done():
			return ctx.Err()
		}
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
