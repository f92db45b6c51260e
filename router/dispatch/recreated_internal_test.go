package dispatch

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
)

// TestATopicDeletedAndCreatedAgainIsConsumedAgain: an operator deletes a
// handler's topic and creates it again (a purge, or a mistake put right).
// franz-go keeps the deleted topic's id and fails every fetch of the new
// one with UNKNOWN_TOPIC_ID, so the handler's events stopped until a
// restart; and every poll failed at once and the poll loop went straight
// back: some 14,000 failed polls a second and half a core. The subscriber
// now follows the new topic, and polls after a failure back off.
func TestATopicDeletedAndCreatedAgainIsConsumedAgain(t *testing.T) {
	addrs := testenv.KafkaBrokers()
	if len(addrs) == 0 {
		b, err := embedded.Start("127.0.0.1:0", "", 1)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		addrs = []string{b.Addr()}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Records on every partition, and fewer partitions once created again:
	// the failures came from a partition consumed before that is gone.
	const partitions = 6
	topic := testenv.UniqueName("fetch-backoff-")
	testenv.DeleteTopicsAtCleanup(t, topic)
	admin, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic), kgo.UnknownTopicRetries(-1), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	adm := kadm.NewClient(admin)
	if _, err := adm.CreateTopic(ctx, partitions, 1, nil, topic); err != nil {
		t.Fatal(err)
	}
	for p := range int32(partitions) {
		if err := admin.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte("v"), Partition: p}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}

	sub, err := NewSubscriber(Config{
		Brokers:   addrs,
		Group:     testenv.UniqueName("fetch-backoff-"),
		Unmarshal: func(r *kgo.Record) *message.Message { return message.NewMessage(string(r.Value), r.Value) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	msgs, err := sub.Subscribe(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	for range partitions {
		select {
		case m := <-msgs:
			m.Ack()
		case <-ctx.Done():
			t.Fatal("a record was never delivered")
		}
	}

	if _, err := adm.DeleteTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	failures := func() int {
		sub.errors.mu.Lock()
		defer sub.errors.mu.Unlock()
		return sub.errors.count
	}
	for failures() == 0 {
		if ctx.Err() != nil {
			t.Fatal("no fetch failed after the topic was deleted")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	// The topic stays away a while (as long as an operator takes), long
	// enough for the group to give the old partitions up.
	away := time.Now().Add(5 * time.Second)
	for time.Now().Before(away) {
		time.Sleep(10 * time.Millisecond) // polling interval: the time away is the scenario
	}
	// Created again: franz-go keeps the deleted topic's id and fails every
	// fetch at once with UNKNOWN_TOPIC_ID (it will not adopt the new one).
	testenv.CreateTopicAgain(ctx, t, adm, topic, 4)
	admin.PurgeTopicsFromClient(topic) // this producer would keep the old id too
	if err := admin.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte("v2")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	settled := time.Now().Add(2 * time.Second) // the consumer's metadata catches up
	for time.Now().Before(settled) {
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	// Two seconds of a topic deleted and created again: with the backoff
	// about a dozen failed polls (a failure per partition each); without
	// it, tens of thousands.
	const window, most = 2 * time.Second, 100
	before, end := failures(), time.Now().Add(window)
	for time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond) // polling interval: the window is what is measured
	}
	if n := failures() - before; n > most {
		t.Errorf("%d failed fetches in %s of a topic deleted and created again, want at most %d: the poll loop does not back off", n, window, most)
	}
	// And the new topic is consumed: the record produced to it is
	// delivered, without a restart.
	for {
		select {
		case m := <-msgs:
			m.Ack()
			if string(m.Payload) == "v2" {
				return
			}
		case <-ctx.Done():
			t.Fatal("the record produced to the topic created again was never delivered")
		}
	}
}
