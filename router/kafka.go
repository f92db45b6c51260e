package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/eventfn/eventfn/configs"
)

// SaramaConfig is the Sarama configuration every eventfn client uses. It speaks
// the configured protocol version: watermill-kafka's default (1.0) is refused by
// Kafka 4, which removed request versions older than 2.1 (KIP-896).
func SaramaConfig(k configs.Kafka) (*sarama.Config, error) {
	v, err := sarama.ParseKafkaVersion(k.Version)
	if err != nil {
		return nil, fmt.Errorf("kafka.version %q: %w", k.Version, err)
	}
	c := sarama.NewConfig()
	c.Version = v
	c.ClientID = k.ClientID
	c.Metadata.Retry.Backoff = 100 * time.Millisecond
	// Producer: wait for all in-sync replicas and let the broker drop the
	// duplicates of retried sends.
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	// Partition by key as the Java client (and eventfn's franz-go producers) do.
	c.Producer.Partitioner = javaCompatiblePartitioner
	// Consumer: a new group starts at the oldest record, so an event relayed
	// before its handler first joined is still handled.
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.AutoCommit.Interval = 200 * time.Millisecond
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategySticky()}
	c.Consumer.Fetch.Default = 1 << 20
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	if err := secureSarama(c, k); err != nil {
		return nil, err
	}
	return c, nil
}

// EnsureTopics creates the topics that do not exist yet. It waits for the
// brokers until ctx ends, saying so in logger's output (nil: silently).
func EnsureTopics(ctx context.Context, k configs.Kafka, topics []string, logger *slog.Logger) error {
	sc, err := SaramaConfig(k)
	if err != nil {
		return err
	}
	admin, err := connectAdmin(ctx, k, sc, logger)
	if err != nil {
		return err
	}
	defer admin.Close()
	// A name given twice is one topic: the brokers describe it once.
	topics = slices.Compact(slices.Sorted(slices.Values(topics)))
	// Metadata of these topics only: listing the cluster's topics reads the
	// configuration of every one, seconds on a cluster with thousands.
	described, err := admin.DescribeTopics(topics)
	if err != nil {
		return fmt.Errorf("describe topics on %v: %w", k.Brokers, err)
	}
	existing := make(map[string]bool, len(described))
	for _, d := range described {
		existing[d.Name] = errors.Is(d.Err, sarama.ErrNoError)
	}
	var created []string
	for _, t := range topics {
		if existing[t] {
			continue
		}
		err := admin.CreateTopic(t, &sarama.TopicDetail{
			NumPartitions:     int32(k.Partitions),
			ReplicationFactor: int16(k.ReplicationFactor),
			ConfigEntries:     createdTopicConfig(k, t),
		}, false)
		if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			return fmt.Errorf("create topic %s (%d partitions, replication %d): %w", t, k.Partitions, k.ReplicationFactor, err)
		}
		created = append(created, t)
	}
	if len(created) == 0 {
		return nil
	}
	// Only the topics created here: one that existed is served already, and
	// a partition of it without a leader (a broker down) is the consumers'
	// and the relay's to wait out, as before, not a reason not to start.
	return awaitTopics(ctx, k, created, topicsVisibleWithin)
}

// kafkaDefaultMaxMessageBytes is a topic's max.message.bytes on a broker of
// Kafka's defaults.
const kafkaDefaultMaxMessageBytes = 1048588

// createdTopicConfig is the configuration of topic when start-up creates
// it: the broker's, unless kafka.max_message_bytes needs more than Kafka's
// default, which start-up would refuse on a topic it had just made itself
// (the hundredth more covers a broker that compresses batches again); and
// the dead-letter topic keeps its records for kafka.dead_letter_retention,
// by default until deleted: at the broker's 7 days, dead letters nobody had
// looked at yet were gone, with the events in them.
func createdTopicConfig(k configs.Kafka, topic string) map[string]*string {
	out := map[string]*string{}
	if need := k.MaxMessageBytes + k.MaxMessageBytes/recompressionMargin; need > kafkaDefaultMaxMessageBytes {
		v := strconv.Itoa(need)
		out["max.message.bytes"] = &v
	}
	if topic == k.Topic(k.DeadLetterTopic) {
		v := "-1"
		if k.DeadLetterRetention > 0 {
			v = strconv.FormatInt(k.DeadLetterRetention.Milliseconds(), 10)
		}
		out["retention.ms"] = &v
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// topicsVisibleWithin bounds how long start-up waits for topics it created
// to be served.
const topicsVisibleWithin = 30 * time.Second

// awaitTopics waits until every broker of the cluster serves every topic
// with a leader for each partition. The controller answers CreateTopics once
// the topic is decided; each broker serves it once it has applied that, a
// moment later or, on a loaded machine, a second or more, and on a cluster
// the brokers apply it tens of milliseconds apart. Start-up reads the new
// topics' retention.ms from any broker, and the relay and the consumers ask
// any broker for metadata: one that did not serve a topic yet failed
// start-up ("does not exist on this broker") or made the relay's first
// produce back off for seconds. Asking one broker was not enough: on three
// brokers another one did not serve a new topic yet in most starts
// (TestEnsureTopicsReturnsOnceEveryBrokerServesThem). The brokers are listed
// afresh on every look: one that stopped leaves the list once the
// controller fences it.
func awaitTopics(ctx context.Context, k configs.Kafka, topics []string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	opts, err := KafkaClientOpts(k)
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(k.Brokers...))...)
	if err != nil {
		return fmt.Errorf("kafka %v: %w", k.Brokers, err)
	}
	defer cl.Close()
	for {
		missing := unserved(ctx, cl, topics)
		if missing == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topics created, but the brokers did not serve them within %s: %w", within, errors.Join(missing, ctx.Err()))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// unserved says which of the topics a broker of the cluster does not serve
// yet, with a leader for each partition; nil when every broker serves all
// of them.
func unserved(ctx context.Context, cl *kgo.Client, topics []string) error {
	cluster, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		return fmt.Errorf("list the brokers: %w", err)
	}
	// Each broker answers for itself, so each is asked; at once, since a
	// start waits for the slowest.
	errs := make([]error, len(cluster.Brokers))
	var wg sync.WaitGroup
	for i, b := range cluster.Brokers {
		wg.Go(func() {
			// A request of its own: the client sets its version as it sends.
			req := kmsg.NewPtrMetadataRequest()
			for _, name := range topics {
				t := kmsg.NewMetadataRequestTopic()
				t.Topic = kmsg.StringPtr(name)
				req.Topics = append(req.Topics, t)
			}
			resp, err := req.RequestWith(ctx, cl.Broker(int(b.NodeID)))
			if err == nil {
				err = servesAll(resp, topics)
			}
			if err != nil {
				errs[i] = fmt.Errorf("broker %d (%s:%d): %w", b.NodeID, b.Host, b.Port, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// servesAll says which of the want topics a broker's metadata answer does
// not serve, with a leader for each partition; nil when it serves all.
func servesAll(resp *kmsg.MetadataResponse, want []string) error {
	byName := make(map[string]*kmsg.MetadataResponseTopic, len(resp.Topics))
	for i, t := range resp.Topics {
		if t.Topic != nil {
			byName[*t.Topic] = &resp.Topics[i]
		}
	}
	for _, name := range want {
		t, ok := byName[name]
		if !ok {
			return fmt.Errorf("topic %s: not described", name)
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return fmt.Errorf("topic %s: %w", name, err)
		}
		if len(t.Partitions) == 0 {
			return fmt.Errorf("topic %s: no partitions yet", name)
		}
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil || p.Leader < 0 {
				return fmt.Errorf("topic %s partition %d: no leader yet (%v)", name, p.Partition, err)
			}
		}
	}
	return nil
}

// oneLineError is err on one line: sarama joins the errors of several
// brokers with newlines, and start-up's last error is printed as it is.
type oneLineError struct{ err error }

func (e oneLineError) Error() string { return strings.ReplaceAll(e.err.Error(), "\n", "; ") }
func (e oneLineError) Unwrap() error { return e.err }

// closedAtOnceLimit is how many connection attempts in a row, 200 ms apart,
// the brokers may close before start-up gives up on the security settings.
const closedAtOnceLimit = 15

// kafkaWaitReportInterval is how often start-up says that it still waits for
// the brokers.
const kafkaWaitReportInterval = 10 * time.Second

// connectAdmin retries until the cluster answers or ctx ends: a broker that is
// still starting is normal at boot. Settings the broker refuses (a wrong
// password, an untrusted certificate) end it at once, naming the key to fix.
// While it retries it warns in logger's output (nil: it does not) at the
// first failure and every kafkaWaitReportInterval: with a typo in
// kafka.brokers, start-up would otherwise say nothing until it gives up.
func connectAdmin(ctx context.Context, k configs.Kafka, sc *sarama.Config, logger *slog.Logger) (sarama.ClusterAdmin, error) {
	brokers := k.Brokers
	var last error
	closedAtOnce := 0
	start := time.Now()
	var reported time.Time
	warn := func(err error) {
		if logger != nil && time.Since(reported) >= kafkaWaitReportInterval {
			reported = time.Now()
			logger.WarnContext(ctx, "Kafka does not answer yet; start-up keeps trying", "brokers", brokers,
				"waited", time.Since(start).Round(time.Second).String(), "error", err)
		}
	}
	giveUp := func() error {
		return fmt.Errorf("reach Kafka at %v: no answer in %s: %w (%w)", brokers, time.Since(start).Round(time.Millisecond), oneLineError{last}, ctx.Err())
	}
	for {
		// A filtered address or a listener that never answers holds one
		// attempt for sarama's dial and read timeouts (30 s each, per
		// broker); say so long before that.
		admin, err := newClusterAdmin(ctx, k, sc, func() { warn(errAttemptUnanswered) })
		if err == nil {
			return admin, nil
		}
		if errors.As(err, new(probeError)) {
			return nil, fmt.Errorf("reach Kafka at %v: %w", brokers, err)
		}
		if ctx.Err() != nil {
			if last == nil {
				last = err
			}
			return nil, giveUp()
		}
		if e := explainKafkaError(err, k); errors.Is(e, errKafkaSetup) {
			return nil, fmt.Errorf("reach Kafka at %v: %w", brokers, e)
		}
		// A broker that is starting refuses connections; one that closes
		// every connection at once, for seconds, is speaking another security
		// protocol than the client (TLS to a PLAINTEXT port, or the reverse).
		if errors.Is(err, io.EOF) {
			closedAtOnce++
		} else {
			closedAtOnce = 0
		}
		if closedAtOnce >= closedAtOnceLimit {
			hint := ""
			if k.SASL.Mechanism != "" {
				hint = ", and kafka.sasl.username and kafka.sasl.password (some brokers close the connection on refused credentials)"
			}
			return nil, fmt.Errorf("reach Kafka at %v: %w: the brokers close every connection at once: check that kafka.tls.enabled (%t) and kafka.sasl.mechanism (%q) match the listener's security protocol (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)%s: %w",
				brokers, errKafkaSetup, k.TLS.Enabled, k.SASL.Mechanism, hint, err)
		}
		last = err
		warn(err)
		select {
		case <-ctx.Done():
			return nil, giveUp()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// slowAttemptAfter is how long one connection attempt may go unanswered
// before start-up says that it waits.
const slowAttemptAfter = 3 * time.Second

// errAttemptUnanswered is why start-up waits while an attempt has no answer.
var errAttemptUnanswered = fmt.Errorf("a connection attempt has had no answer for %s: the address may be filtered by a firewall, or not be a Kafka listener", slowAttemptAfter)

// probeError is what probeTLS found: settings that cannot work. It reads as
// the error it wraps.
type probeError struct{ err error }

func (e probeError) Error() string { return e.err.Error() }
func (e probeError) Unwrap() error { return e.err }

// newClusterAdmin probes the brokers' security protocol (probeTLS) and then
// makes a sarama.ClusterAdmin, bounded by ctx, which sarama does not take:
// when ctx ends first the attempt is left to finish on its own (an admin it
// makes then is closed) and the error is errAttemptUnanswered. slow is called
// once if the attempt takes longer than slowAttemptAfter. A probe's error is
// a probeError.
func newClusterAdmin(ctx context.Context, k configs.Kafka, sc *sarama.Config, slow func()) (sarama.ClusterAdmin, error) {
	type result struct {
		admin sarama.ClusterAdmin
		err   error
	}
	done := make(chan result, 1)
	go func() {
		if err := probeTLS(ctx, k); err != nil {
			done <- result{nil, probeError{err}}
			return
		}
		admin, err := sarama.NewClusterAdmin(k.Brokers, sc)
		done <- result{admin, err}
	}()
	slowTimer := time.NewTimer(slowAttemptAfter)
	defer slowTimer.Stop()
	for {
		select {
		case r := <-done:
			return r.admin, r.err
		case <-slowTimer.C:
			slow()
		case <-ctx.Done():
			go func() {
				if r := <-done; r.err == nil {
					_ = r.admin.Close()
				}
			}()
			return nil, errAttemptUnanswered
		}
	}
}

// PingKafka checks that the cluster answers a metadata request.
func PingKafka(ctx context.Context, k configs.Kafka) error {
	sc, err := SaramaConfig(k)
	if err != nil {
		return err
	}
	sc.Net.DialTimeout = 2 * time.Second
	sc.Metadata.Retry.Max = 0
	done := make(chan error, 1)
	go func() {
		client, err := sarama.NewClient(k.Brokers, sc)
		if err != nil {
			done <- err
			return
		}
		defer client.Close()
		_, err = client.Controller()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("kafka %v: %w", k.Brokers, explainKafkaError(err, k))
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("kafka %v: %w", k.Brokers, ctx.Err())
	}
}

// TopicRetentions reads retention.ms of each topic; -1 (keep forever) is a
// negative duration.
func TopicRetentions(ctx context.Context, k configs.Kafka, topics []string) (map[string]time.Duration, error) {
	values, err := topicConfigs(ctx, k, topics, "retention.ms")
	if err != nil {
		return nil, err
	}
	return retentionsOf(values, topics)
}

// retentionsOf parses the retention.ms that topicConfigs read of topics.
func retentionsOf(values map[string]map[string]string, topics []string) (map[string]time.Duration, error) {
	out := make(map[string]time.Duration, len(topics))
	for _, t := range topics {
		raw, ok := values[t]["retention.ms"]
		if !ok {
			continue // checkInboxRetention says so
		}
		ms, err := strconv.ParseInt(raw, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("topic %s: retention.ms %q: %w", t, raw, err)
		}
		out[t] = time.Duration(ms) * time.Millisecond
	}
	return out, nil
}

// RecordLimit is what one topic takes in a record batch.
type RecordLimit struct {
	// Bytes is its max.message.bytes.
	Bytes int
	// Recompresses says that the broker compresses batches again with a
	// codec of the topic's own (compression.type), and checks Bytes after.
	Recompresses bool
}

// TopicRecordLimits reads max.message.bytes and compression.type of each
// topic.
func TopicRecordLimits(ctx context.Context, k configs.Kafka, topics []string) (map[string]RecordLimit, error) {
	values, err := topicConfigs(ctx, k, topics, recordLimitConfigs...)
	if err != nil {
		return nil, err
	}
	return recordLimitsOf(values)
}

// recordLimitConfigs are the topic configuration entries of a RecordLimit.
var recordLimitConfigs = []string{"max.message.bytes", "compression.type"}

// recordLimitsOf parses the record limits that topicConfigs read.
func recordLimitsOf(values map[string]map[string]string) (map[string]RecordLimit, error) {
	out := make(map[string]RecordLimit, len(values))
	for t, v := range values {
		raw, ok := v["max.message.bytes"]
		if !ok {
			continue
		}
		n, err := strconv.Atoi(raw)
		if err != nil {
			return nil, fmt.Errorf("topic %s: max.message.bytes %q: %w", t, raw, err)
		}
		codec := v["compression.type"]
		out[t] = RecordLimit{Bytes: n, Recompresses: codec != "" && codec != "producer" && codec != "uncompressed"}
	}
	return out, nil
}

// compactedTopics are those of topics whose cleanup.policy compacts
// (compact, or compact,delete), in the order given, each once.
func compactedTopics(values map[string]map[string]string, topics []string) []string {
	var out []string
	for _, t := range topics {
		if slices.Contains(out, t) {
			continue
		}
		for p := range strings.SplitSeq(values[t]["cleanup.policy"], ",") {
			if strings.TrimSpace(p) == "compact" {
				out = append(out, t)
				break
			}
		}
	}
	return out
}

// topicConfigs reads configuration entries of each topic; an entry its
// broker does not report is missing from the result.
func topicConfigs(ctx context.Context, k configs.Kafka, topics []string, names ...string) (map[string]map[string]string, error) {
	sc, err := SaramaConfig(k)
	if err != nil {
		return nil, err
	}
	admin, err := connectAdmin(ctx, k, sc, nil)
	if err != nil {
		return nil, err
	}
	defer admin.Close()
	out := make(map[string]map[string]string, len(topics))
	for _, t := range topics {
		entries, err := describeTopicConfig(ctx, admin, t, names)
		if err != nil {
			return nil, fmt.Errorf("read %s of topic %s: %w", strings.Join(names, ", "), t, err)
		}
		out[t] = map[string]string{}
		for _, e := range entries {
			if slices.Contains(names, e.Name) {
				out[t][e.Name] = e.Value
			}
		}
	}
	return out, nil
}

// describeTopicConfig reads topic's configuration entries names from the broker
// admin asks. A topic that broker does not serve yet is asked for again until
// topicsVisibleWithin or ctx ends: start-up reads topics' configuration after
// EnsureTopics, which waits only for the topics it created itself, and a
// topic another replica created a moment before (replicas starting
// together) is not on every broker yet; one such replica in five exited
// with "does not exist on this broker" on three brokers.
func describeTopicConfig(ctx context.Context, admin sarama.ClusterAdmin, topic string, names []string) ([]sarama.ConfigEntry, error) {
	deadline := time.Now().Add(topicsVisibleWithin)
	for {
		entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: names})
		if !errors.Is(err, sarama.ErrUnknownTopicOrPartition) || time.Now().After(deadline) {
			return entries, err
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(err, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// recompressionMargin is how much below max.message.bytes a batch must stay
// on a topic that compresses batches again: gzip and snappy make an
// incompressible batch a little larger, and Kafka checks the limit after
// (a record of exactly the limit was refused and parked; 1 % more took it).
const recompressionMargin = 100 // a hundredth

// checkRecordLimits refuses a kafka.max_message_bytes above a topic's
// max.message.bytes (less a hundredth on a topic that compresses again). The
// relay puts records up to kafka.max_message_bytes in one record batch, and
// Emit accepts events that large: such a topic refuses them.
func checkRecordLimits(maxBytes int, limits map[string]RecordLimit) error {
	var low []string
	for _, t := range slices.Sorted(maps.Keys(limits)) {
		l := limits[t]
		switch {
		case l.Bytes < maxBytes:
			low = append(low, fmt.Sprintf("%s takes %d", t, l.Bytes))
		case l.Recompresses && l.Bytes < maxBytes+maxBytes/recompressionMargin:
			low = append(low, fmt.Sprintf("%s takes %d and compresses batches again (compression.type), which needs %d", t, l.Bytes, maxBytes+maxBytes/recompressionMargin))
		}
	}
	if len(low) == 0 {
		return nil
	}
	return fmt.Errorf("kafka.max_message_bytes (%s) is %d, above what topics take in one record batch (max.message.bytes): %s; "+
		"set it to at most the smallest, or raise the topics' max.message.bytes",
		configs.EnvName("kafka.max_message_bytes"), maxBytes, strings.Join(low, ", "))
}

// checkInboxRetention refuses an inbox retention that a redelivery can
// outlive: a record still in its topic after its inbox row is gone would run
// its handler again.
func checkInboxRetention(inbox time.Duration, retentions map[string]time.Duration, consumed []string) error {
	if inbox == 0 {
		return nil
	}
	key := "retention.inbox (" + configs.EnvName("retention.inbox") + ")"
	for _, t := range consumed {
		r, ok := retentions[t]
		switch {
		case !ok:
			return fmt.Errorf("%s: %s is set, but topic %s reports no retention.ms to check it against", key, inbox, t)
		case r < 0:
			return fmt.Errorf("%s: %s, but topic %s keeps its records forever (retention.ms -1): a redelivered record would run its handler again once its inbox row is gone; set it to 0 to keep inbox rows", key, inbox, t)
		case inbox <= r:
			return fmt.Errorf("%s: %s is not longer than topic %s's retention (%s): a record redelivered after its inbox row is gone would run its handler again; set it above %s", key, inbox, t, r, r)
		}
	}
	return nil
}
