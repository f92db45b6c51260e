package router_test

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
)

// TestEnsureTopicsCreatesOnlyWhatIsMissing: start-up creates the topics that
// are not there with the configured partitions, returns once the brokers
// serve them, leaves a topic an operator
// made (with other settings) as it is, and a second start finds all of them.
// It asks the cluster about these topics only; it used to list every topic of
// the cluster with its configuration, seconds of start-up on a broker with
// thousands.
func TestEnsureTopicsCreatesOnlyWhatIsMissing(t *testing.T) {
	brokers := testBrokers(t)
	prefix := testenv.UniqueName("ensure-") + "."
	testenv.DeleteTopicsAtCleanup(t, prefix)
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = brokers
	cfg.Kafka.Partitions = 3
	cfg.Kafka.ReplicationFactor = 1

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	operators, missing := prefix+"made-by-an-operator", prefix+"missing"
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, operators); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second start finds both
		// A name given twice is one topic (the brokers describe it once;
		// start-up once waited 30 s for a second description and failed).
		if err := router.EnsureTopics(ctx, cfg.Kafka, []string{operators, missing, missing}, nil); err != nil {
			t.Fatal(err)
		}
		// What start-up does next: a topic just created is served at once
		// (its retention was once read before the broker had it).
		if _, err := router.TopicRetentions(ctx, cfg.Kafka, []string{operators, missing}); err != nil {
			t.Fatal(err)
		}
	}
	details, err := adm.ListTopics(ctx, operators, missing)
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]int{operators: 1, missing: 3} {
		d, ok := details[topic]
		switch {
		case !ok || d.Err != nil:
			t.Errorf("topic %s: not there (%v)", topic, d.Err)
		case len(d.Partitions) != want:
			t.Errorf("topic %s has %d partitions, want %d", topic, len(d.Partitions), want)
		}
	}
}

// TestStartUpSaysItWaitsForBrokersThatDoNotAnswer: with a typo in
// kafka.brokers start-up waits for the broker as it would for one still
// booting, but it says so at once, naming the brokers and the error, and when
// it gives up the error says how long it tried and why, on one line.
func TestStartUpSaysItWaitsForBrokersThatDoNotAnswer(t *testing.T) {
	closedPort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	// Two brokers: sarama puts a newline between their errors.
	refused, refusedToo := closedPort(), closedPort()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = []string{refused, refusedToo}
	var logs testenv.LogBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	err = router.EnsureTopics(ctx, cfg.Kafka, []string{"never-created"}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err == nil {
		t.Fatal("EnsureTopics reached a broker on a closed port")
	}
	for _, want := range []string{refused, refusedToo, "no answer in", "connection refused", context.DeadlineExceeded.Error()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q spans lines", err)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN", "Kafka does not answer yet", refused, "connection refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("start-up's log %q does not say %q", out, want)
		}
	}
	if n := strings.Count(out, "Kafka does not answer yet"); n != 1 {
		t.Errorf("start-up warned %d times in 1.5 s, want once (then every %s)", n, "10s")
	}
}

// TestStartUpSaysItWaitsForABrokerThatNeverAnswers: an address that takes
// the connection and never answers (a filtered port, another service) holds
// one sarama attempt for its 30 s timeouts. Start-up says it waits after a
// few seconds, not after the first attempt, and gives up when its deadline
// ends, not when the attempt does.
func TestStartUpSaysItWaitsForABrokerThatNeverAnswers(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 16)
	t.Cleanup(func() {
		silent.Close()
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				return
			}
		}
	})
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c:
			default:
				c.Close()
			}
		}
	}()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = []string{silent.Addr().String()}
	var logs testenv.LogBuffer
	const deadline = 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err = router.EnsureTopics(ctx, cfg.Kafka, []string{"never-created"}, slog.New(slog.NewTextHandler(&logs, nil)))
	took := time.Since(start)
	if err == nil {
		t.Fatal("EnsureTopics reached a broker that never answers")
	}
	for _, want := range []string{silent.Addr().String(), "no answer in", "has had no answer", context.DeadlineExceeded.Error()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// sarama's own timeouts would hold it 30 s; the bound here is loose
	// for a loaded machine and still far below that.
	if took > deadline+10*time.Second {
		t.Errorf("EnsureTopics returned %s after its deadline of %s", took-deadline, deadline)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN", "Kafka does not answer yet", silent.Addr().String(), "has had no answer"} {
		if !strings.Contains(out, want) {
			t.Errorf("start-up's log %q does not say %q", out, want)
		}
	}
}

// TestEnsureTopicsReturnsOnceEveryBrokerServesThem: on a cluster of several
// brokers the controller answers CreateTopics once a topic is decided, and
// each broker serves it once it has applied that, tens of milliseconds apart
// on a loaded machine. Start-up goes on to read retention.ms from any broker,
// and the relay and the consumers ask any broker for metadata: every one of
// them must serve the new topics when EnsureTopics returns. On one broker
// this holds trivially; ci/faults.sh runs it on three.
func TestEnsureTopicsReturnsOnceEveryBrokerServesThem(t *testing.T) {
	brokers := testBrokers(t)
	prefix := testenv.UniqueName("ensure-all-") + "."
	testenv.DeleteTopicsAtCleanup(t, prefix)
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cluster, err := kadm.NewClient(cl).BrokerMetadata(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = brokers
	cfg.Kafka.Partitions = 3
	cfg.Kafka.ReplicationFactor = min(3, len(cluster.Brokers))
	t.Logf("%d broker(s), replication %d", len(cluster.Brokers), cfg.Kafka.ReplicationFactor)

	// Each round is a race between the brokers applying the new topics and
	// the asks below; rounds make a broker that lags likely to be seen.
	const rounds = 15
	for round := range rounds {
		topics := make([]string, 3)
		for i := range topics {
			topics[i] = fmt.Sprintf("%sr%d.t%d", prefix, round, i)
		}
		if err := router.EnsureTopics(ctx, cfg.Kafka, topics, nil); err != nil {
			t.Fatal(err)
		}
		// Every broker at once, straight after the return.
		errs := make(chan error, len(cluster.Brokers))
		for _, b := range cluster.Brokers {
			go func() { errs <- brokerServes(ctx, cl, b.NodeID, topics, cfg.Kafka.Partitions) }()
		}
		for range cluster.Brokers {
			if err := <-errs; err != nil {
				t.Errorf("round %d: EnsureTopics returned, but %v", round, err)
			}
		}
	}
}

// brokerServes asks one broker, and only it, for the topics' metadata: nil
// when it serves each of them with a leader for every partition.
func brokerServes(ctx context.Context, cl *kgo.Client, node int32, topics []string, partitions int) error {
	req := kmsg.NewPtrMetadataRequest()
	for _, name := range topics {
		rt := kmsg.NewMetadataRequestTopic()
		rt.Topic = kmsg.StringPtr(name)
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, cl.Broker(int(node)))
	if err != nil {
		return fmt.Errorf("broker %d: metadata: %w", node, err)
	}
	for _, rt := range resp.Topics {
		var name string
		if rt.Topic != nil {
			name = *rt.Topic
		}
		if err := kerr.ErrorForCode(rt.ErrorCode); err != nil {
			return fmt.Errorf("broker %d does not serve topic %s: %w", node, name, err)
		}
		if len(rt.Partitions) != partitions {
			return fmt.Errorf("broker %d serves topic %s with %d partitions, want %d", node, name, len(rt.Partitions), partitions)
		}
		for _, p := range rt.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil || p.Leader < 0 {
				return fmt.Errorf("broker %d: topic %s partition %d has no leader (%v)", node, name, p.Partition, err)
			}
		}
	}
	if len(resp.Topics) != len(topics) {
		return fmt.Errorf("broker %d described %d of %d topics", node, len(resp.Topics), len(topics))
	}
	return nil
}

// TestRetentionsWaitForATopicAnotherReplicaIsCreating: replicas starting
// together on three brokers. One creates the topics; another finds them
// created, waits for nothing, and reads their retention from a broker that
// does not serve them yet: it exited with "does not exist on this broker"
// (3 of 16 starts of four replicas, found by a fresh-eyed attack). Here
// the topic is created half a second after the read began: the read waits
// for it.
func TestRetentionsWaitForATopicAnotherReplicaIsCreating(t *testing.T) {
	topic := testenv.UniqueName("retention-")
	testenv.DeleteTopicsAtCleanup(t, topic)
	k, cl := testKafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type result struct {
		retentions map[string]time.Duration
		err        error
	}
	read := make(chan result, 1)
	go func() {
		r, err := router.TopicRetentions(ctx, k, []string{topic})
		read <- result{r, err}
	}()
	select {
	case r := <-read:
		t.Fatalf("the retention of a topic not created yet was read: %v, %v", r.retentions, r.err)
	case <-time.After(500 * time.Millisecond): // the other replica creates it a moment later
	}
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{"retention.ms": kadm.StringPtr("3600000")}, topic); err != nil {
		t.Fatal(err)
	}
	r := <-read
	if r.err != nil {
		t.Fatalf("reading the retention of a topic created a moment later: %v", r.err)
	}
	if got := r.retentions[topic]; got != time.Hour {
		t.Fatalf("retention %s, want 1h", got)
	}
}

// TestTopicRecordLimitsReadEachTopicsLimitAndCodec: start-up's check of
// kafka.max_message_bytes reads each topic's max.message.bytes and whether
// the broker compresses its batches again (compression.type).
func TestTopicRecordLimitsReadEachTopicsLimitAndCodec(t *testing.T) {
	prefix := testenv.UniqueName("limits-") + "."
	testenv.DeleteTopicsAtCleanup(t, prefix)
	k, cl := testKafka(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want := map[string]router.RecordLimit{
		prefix + "plain":           {Bytes: 100_000},
		prefix + "gzipped":         {Bytes: 1_000_000, Recompresses: true},
		prefix + "by-the-producer": {Bytes: 2_000_000},
	}
	codecs := map[string]string{prefix + "plain": "uncompressed", prefix + "gzipped": "gzip", prefix + "by-the-producer": "producer"}
	for topic, l := range want {
		if _, err := kadm.NewClient(cl).CreateTopic(ctx, 1, 1, map[string]*string{
			"max.message.bytes": kadm.StringPtr(fmt.Sprint(l.Bytes)), "compression.type": kadm.StringPtr(codecs[topic])}, topic); err != nil {
			t.Fatal(err)
		}
	}
	got, err := router.TopicRecordLimits(ctx, k, slices.Collect(maps.Keys(want)))
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("limits %v, want %v", got, want)
	}
}

// testKafka is the test profile's Kafka configuration on the test brokers,
// and a client of them closed when the test ends.
func testKafka(t *testing.T) (configs.Kafka, *kgo.Client) {
	t.Helper()
	brokers := testBrokers(t)
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = brokers
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cfg.Kafka, cl
}

// TestTopicsCreatedForALargeRecordLimitTakeIt: with kafka.max_message_bytes
// above the broker's default, start-up created topics of that default and
// then refused them, on every start (found by a fresh-eyed attack). Topics
// it creates now take kafka.max_message_bytes and a hundredth.
func TestTopicsCreatedForALargeRecordLimitTakeIt(t *testing.T) {
	topic := testenv.UniqueName("large-limit-")
	testenv.DeleteTopicsAtCleanup(t, topic)
	k, _ := testKafka(t)
	k.MaxMessageBytes = 2_000_000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := router.EnsureTopics(ctx, k, []string{topic}, nil); err != nil {
		t.Fatal(err)
	}
	got, err := router.TopicRecordLimits(ctx, k, []string{topic})
	if err != nil {
		t.Fatal(err)
	}
	if got[topic].Bytes != 2_020_000 {
		t.Fatalf("the topic takes %d bytes, want 2,020,000", got[topic].Bytes)
	}
}

// TestTheDeadLetterTopicKeepsDeadLettersAsConfigured: start-up creates the
// dead-letter topic with kafka.dead_letter_retention as its retention.ms,
// by default forever (-1). At the broker's default of 7 days, dead letters
// nobody had looked at were deleted, and with them the events in them.
// Other topics keep the broker's retention.
func TestTheDeadLetterTopicKeepsDeadLettersAsConfigured(t *testing.T) {
	brokers := testBrokers(t)
	for _, c := range []struct {
		name      string
		retention time.Duration
		want      time.Duration
	}{
		{"by default until deleted", 0, -time.Millisecond},
		{"for a configured time", 72 * time.Hour, 72 * time.Hour},
	} {
		t.Run(c.name, func(t *testing.T) {
			prefix := testenv.UniqueName("dlq-retention-") + "."
			testenv.DeleteTopicsAtCleanup(t, prefix)
			cfg, err := configs.Load(configs.Options{Profile: "test"})
			if err != nil {
				t.Fatal(err)
			}
			cfg.Kafka.Brokers = brokers
			cfg.Kafka.ReplicationFactor = 1
			cfg.Kafka.TopicPrefix = prefix
			cfg.Kafka.DeadLetterRetention = c.retention
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			dlq, other := cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic), cfg.Kafka.Topic("order.placed")
			if err := router.EnsureTopics(ctx, cfg.Kafka, []string{dlq, other}, nil); err != nil {
				t.Fatal(err)
			}
			got, err := router.TopicRetentions(ctx, cfg.Kafka, []string{dlq, other})
			if err != nil {
				t.Fatal(err)
			}
			if got[dlq] != c.want {
				t.Errorf("the dead-letter topic's retention.ms is %s, want %s", got[dlq], c.want)
			}
			if r, ok := got[other]; ok && r == c.want {
				t.Errorf("%s got the dead-letter topic's retention too (%s)", other, r)
			}
		})
	}
}
