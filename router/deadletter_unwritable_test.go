package router_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/runtime"
)

// TestADeadLetterTopicThatRefusesWritesHoldsTheEvent: when the dead-letter
// topic refuses the dead letter, the event is not acknowledged as done: its key
// waits and it is tried again, /readyz says why, and once the topic takes it
// the dead letter is written and the key flows on.
func TestADeadLetterTopicThatRefusesWritesHoldsTheEvent(t *testing.T) {
	var mu sync.Mutex
	var handled []string
	h := runtime.NewHandler("signup", func(ctx context.Context, tx runtime.Tx, ev signup) error {
		mu.Lock()
		handled = append(handled, ev.Email)
		mu.Unlock()
		return nil
	}, runtime.WithPolicy(runtime.Policy{MaxRetries: -1}))
	tr := startRuntime(t, nil, h)
	// An operator lowers the dead-letter topic's record size limit far
	// below the dead letter's (start-up refuses such a topic).
	dlq := tr.cfg.Kafka.Topic(tr.cfg.Kafka.DeadLetterTopic)
	adminDo(t, tr.cfg.Kafka.Brokers, func(ctx context.Context, adm *kadm.Client) error {
		limit := "1024"
		_, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: &limit}}, dlq)
		return err
	})
	produceEvent(t, tr, signup{Key: "k", Email: strings.Repeat("x", 4000)})
	produceEvent(t, tr, signup{Key: "k", Email: "ok@example.com"})

	waitUntil(t, "readiness to report the refused dead letter", 30*time.Second, func() bool {
		err := tr.rt.Ready(context.Background())
		return err != nil && strings.Contains(err.Error(), "dead letters cannot be written")
	})
	mu.Lock()
	if len(handled) != 0 {
		t.Fatalf("the event behind an unwritten dead letter ran: %q", handled)
	}
	mu.Unlock()
	if n := tr.metric(t, "eventfn_dead_lettered_total", "handler", "signup"); n != 0 {
		t.Fatalf("eventfn_dead_lettered_total = %v while nothing was written", n)
	}

	adminDo(t, tr.cfg.Kafka.Brokers, func(ctx context.Context, adm *kadm.Client) error {
		limit := "1048588"
		_, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "max.message.bytes", Value: &limit}}, dlq)
		return err
	})
	waitUntil(t, "the event behind it handled", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == 1 && handled[0] == "ok@example.com"
	})
	if got := countRecords(t, tr, tr.cfg.Kafka.DeadLetterTopic); got != 1 {
		t.Fatalf("%d dead letters, want 1", got)
	}
	waitUntil(t, "ready again", 30*time.Second, func() bool { return tr.rt.Ready(context.Background()) == nil })
}

func adminDo(t *testing.T, brokers []string, fn func(context.Context, *kadm.Client) error) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := fn(ctx, kadm.NewClient(cl)); err != nil {
		t.Fatal(err)
	}
}
