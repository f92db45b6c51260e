package router_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/router/relay"
)

// TestJavaPartitionMatchesKafkasGoldenVectors: Kafka's own murmur2 test
// vectors (UtilsTest.testMurmur2), as partitions: toPositive(h) % n.
func TestJavaPartitionMatchesKafkasGoldenVectors(t *testing.T) {
	for _, c := range []struct {
		key  string
		hash int32
	}{
		{"21", -973932308},
		{"foobar", -790332482},
		{"a-little-bit-long-string", -985981536},
		{"a-little-bit-longer-string", -1486304829},
		{"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
		{"abc", 479470107},
	} {
		for _, n := range []int32{1, 3, 4, 7, 100} {
			want := (c.hash & 0x7fffffff) % n
			if got := router.JavaPartition([]byte(c.key), n); got != want {
				t.Errorf("JavaPartition(%q, %d) = %d, want %d", c.key, n, got, want)
			}
		}
	}
}

// TestEveryProducerPartitionsLikeTheJavaClient: the relay (franz-go) and the
// CLI (Sarama) put each key on the partition a Spring Kafka or kafkajs
// producer would, so one order's events from two producers keep their order.
// Sarama's default hash disagreed on 72 of 100 sample keys.
func TestEveryProducerPartitionsLikeTheJavaClient(t *testing.T) {
	brokers := testBrokers(t)
	const partitions = 4
	topic := testenv.UniqueName("partitions-")
	testenv.DeleteTopicsAtCleanup(t, topic)
	admin, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := kadm.NewClient(admin).CreateTopic(ctx, partitions, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for i := range 100 {
		keys = append(keys, fmt.Sprintf("order-%d", i))
	}

	// The relay's producer.
	// The topic was created a moment ago and may not be served yet: retry
	// that until the context's deadline (franz-go gives up after 4 tries).
	p, err := relay.NewProducer(relay.ProducerConfig{Brokers: brokers, MaxRecordBytes: 1 << 20,
		Opts: []kgo.Opt{kgo.UnknownTopicRetries(-1)}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, k := range keys {
		if errs := p.Produce(ctx, []relay.Record{{Topic: topic, Key: []byte(k), Payload: []byte("relay")}}); errs[0] != nil {
			t.Fatal(errs[0])
		}
	}
	// Sarama with eventfn's configuration (the CLI's publish).
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = brokers
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := sarama.NewSyncProducer(brokers, sc)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	for _, k := range keys {
		part, _, err := sp.SendMessage(&sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(k), Value: sarama.StringEncoder("sarama")})
		if err != nil {
			t.Fatal(err)
		}
		if want := router.JavaPartition([]byte(k), partitions); part != want {
			t.Errorf("sarama put %s on partition %d, the Java client on %d", k, part, want)
		}
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	seen := 0
	for seen < 2*len(keys) {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records", seen, 2*len(keys))
		}
		fs.EachRecord(func(r *kgo.Record) {
			seen++
			if want := router.JavaPartition(r.Key, partitions); r.Partition != want {
				t.Errorf("%s put %s on partition %d, the Java client on %d", r.Value, r.Key, r.Partition, want)
			}
		})
	}
}
