package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/wiring"
)

// stateFlags are the flags of the commands that show state: topics, groups
// and outbox.
type stateFlags struct {
	asJSON  bool
	timeout time.Duration
}

func (f *stateFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print JSON")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "give up after this long")
}

// describeHandlers resolves every handler of the build, whatever run.handlers
// says: the state commands show the whole system, not one replica's share.
func describeHandlers(cfg configs.Config) ([]router.HandlerInfo, error) {
	return router.Describe(cfg, wiring.BuildHandlers(wiring.BaseConfig(cfg), slog.New(slog.DiscardHandler)))
}

// kafkaAdmin connects an admin client to kafka.brokers with the kafka.tls.*
// and kafka.sasl.* settings every eventfn client uses. It starts no broker: a
// running `eventfn` serves its embedded one on kafka.brokers.
func kafkaAdmin(cfg configs.Config) (*kadm.Client, error) {
	opts, err := router.KafkaClientOpts(cfg.Kafka)
	if err != nil {
		return nil, ExitError{Code: 2, Err: err}
	}
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(cfg.Kafka.Brokers...), kgo.ClientID(cfg.Kafka.ClientID))...)
	if err != nil {
		return nil, fmt.Errorf("kafka client for %v: %w", cfg.Kafka.Brokers, err)
	}
	return kadm.NewClient(cl), nil
}

// kafkaErr says where an admin request went and, for a refused connection,
// which keys to check.
func kafkaErr(cfg configs.Config, what string, err error) error {
	return fmt.Errorf("%s on Kafka at %v (is eventfn running, or kafka.brokers right?): %w", what, cfg.Kafka.Brokers, router.ExplainKafkaError(err, cfg.Kafka))
}

// TopicState is one of eventfn's topics as `eventfn topics` shows it.
type TopicState struct {
	Topic string `json:"topic"`
	// Exists is false for a topic no eventfn has created yet.
	Exists            bool `json:"exists"`
	Partitions        int  `json:"partitions"`
	ReplicationFactor int  `json:"replication_factor"`
	// RetentionMs is retention.ms; -1 keeps records forever, nil means the
	// broker did not say.
	RetentionMs *int64 `json:"retention_ms"`
	// Messages sums end − start offset over the partitions: the records the
	// topic holds (a compacted or transactional topic holds fewer).
	Messages int64 `json:"messages"`
	// ConsumedBy and EmittedBy name the handlers; DeadLetters marks
	// kafka.dead_letter_topic.
	ConsumedBy  []string         `json:"consumed_by"`
	EmittedBy   []string         `json:"emitted_by"`
	DeadLetters bool             `json:"dead_letters"`
	Offsets     []PartitionRange `json:"offsets"`
}

// PartitionRange is where one partition's log starts and ends.
type PartitionRange struct {
	Partition int32 `json:"partition"`
	Start     int64 `json:"start"`
	End       int64 `json:"end"`
}

func newTopicsCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	f := &stateFlags{}
	cmd := &cobra.Command{
		Use:   "topics",
		Short: "eventfn's topics: partitions, replication, retention and message counts",
		Long: `List the topics of the handlers (the ones they consume and the event types they
emit) and the dead-letter topic, with kafka.topic_prefix, as the Kafka of
kafka.brokers has them: partitions, replication factor, retention.ms and the
number of records (end minus start offset, summed over the partitions).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(environ)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			topics, err := Topics(ctx, cfg)
			if err != nil {
				return err
			}
			if f.asJSON {
				return writeJSON(stdout, topics)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TOPIC\tPARTITIONS\tREPLICATION\tRETENTION\tMESSAGES\tROLE")
			for _, t := range topics {
				if !t.Exists {
					fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t%s (not created yet)\n", t.Topic, topicRole(t))
					continue
				}
				fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\n", t.Topic, t.Partitions, t.ReplicationFactor, retentionText(t.RetentionMs), t.Messages, topicRole(t))
			}
			return tw.Flush()
		},
	}
	f.register(cmd)
	return cmd
}

// Topics reads the state of every topic eventfn uses.
func Topics(ctx context.Context, cfg configs.Config) ([]TopicState, error) {
	infos, err := describeHandlers(cfg)
	if err != nil {
		return nil, err
	}
	names := router.Topics(cfg, infos)
	adm, err := kafkaAdmin(cfg)
	if err != nil {
		return nil, err
	}
	defer adm.Close()
	details, err := adm.ListTopics(ctx, names...)
	if err != nil {
		return nil, kafkaErr(cfg, "list topics", err)
	}
	var existing []string
	for _, n := range names {
		if d, ok := details[n]; ok && d.Err == nil {
			existing = append(existing, n)
		} else if ok && !errors.Is(d.Err, kerr.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("topic %s: %w", n, d.Err)
		}
	}
	retentions := map[string]*int64{}
	starts, ends := kadm.ListedOffsets{}, kadm.ListedOffsets{}
	if len(existing) > 0 {
		if retentions, err = topicRetentions(ctx, adm, existing); err != nil {
			return nil, kafkaErr(cfg, "describe topic configs", err)
		}
		if starts, err = adm.ListStartOffsets(ctx, existing...); err != nil {
			return nil, kafkaErr(cfg, "list start offsets", err)
		}
		if ends, err = adm.ListEndOffsets(ctx, existing...); err != nil {
			return nil, kafkaErr(cfg, "list end offsets", err)
		}
	}
	dlq := cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic)
	out := make([]TopicState, 0, len(names))
	for _, n := range names {
		t := TopicState{Topic: n, DeadLetters: n == dlq, ConsumedBy: []string{}, EmittedBy: []string{}, Offsets: []PartitionRange{}}
		for _, i := range infos {
			if i.Topic == n {
				t.ConsumedBy = append(t.ConsumedBy, i.Name)
			}
			for _, e := range i.Emits {
				if cfg.Kafka.Topic(e) == n {
					t.EmittedBy = append(t.EmittedBy, i.Name)
				}
			}
		}
		if slices.Contains(existing, n) {
			d := details[n]
			t.Exists = true
			t.Partitions = len(d.Partitions)
			for _, p := range d.Partitions.Sorted() {
				t.ReplicationFactor = max(t.ReplicationFactor, len(p.Replicas))
				s, sok := starts.Lookup(n, p.Partition)
				e, eok := ends.Lookup(n, p.Partition)
				if !sok || !eok || s.Err != nil || e.Err != nil {
					return nil, fmt.Errorf("offsets of %s[%d]: %w", n, p.Partition, errors.Join(s.Err, e.Err, errIf(!sok || !eok, "not listed")))
				}
				t.Offsets = append(t.Offsets, PartitionRange{Partition: p.Partition, Start: s.Offset, End: e.Offset})
				t.Messages += e.Offset - s.Offset
			}
			t.RetentionMs = retentions[n]
		}
		out = append(out, t)
	}
	return out, nil
}

func errIf(cond bool, msg string) error {
	if cond {
		return errors.New(msg)
	}
	return nil
}

// topicRetentions reads retention.ms of each topic; a topic whose configs do
// not name it (some Kafka-protocol brokers) gets nil.
func topicRetentions(ctx context.Context, adm *kadm.Client, topics []string) (map[string]*int64, error) {
	rcs, err := adm.DescribeTopicConfigs(ctx, topics...)
	if err != nil {
		return nil, err
	}
	out := map[string]*int64{}
	for _, rc := range rcs {
		if rc.Err != nil {
			return nil, fmt.Errorf("configs of %s: %w", rc.Name, rc.Err)
		}
		for _, c := range rc.Configs {
			if c.Key != "retention.ms" || c.Value == nil {
				continue
			}
			ms, err := strconv.ParseInt(*c.Value, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("retention.ms of %s is %q: %w", rc.Name, *c.Value, err)
			}
			out[rc.Name] = &ms
		}
	}
	return out, nil
}

func retentionText(ms *int64) string {
	switch {
	case ms == nil:
		return "?"
	case *ms < 0:
		return "forever"
	}
	return (time.Duration(*ms) * time.Millisecond).String()
}

func topicRole(t TopicState) string {
	var parts []string
	if len(t.ConsumedBy) > 0 {
		parts = append(parts, "consumed by "+strings.Join(t.ConsumedBy, ", "))
	}
	if len(t.EmittedBy) > 0 {
		parts = append(parts, "emitted by "+strings.Join(t.EmittedBy, ", "))
	}
	if t.DeadLetters {
		parts = append(parts, "dead letters")
	}
	return strings.Join(parts, "; ")
}
