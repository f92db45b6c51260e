package dispatch

import (
	"context"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestARecordOfAPartitionTakenAwaySincePollIsDropped: the poll goroutine
// takes records, the group takes their partition away (revoked or lost)
// before they are enqueued, and enqueue made state for a partition this
// member no longer owned. Nothing ever released it: an attack that paused
// the poll for 5–50 ms saw the same event run on both members at once, and
// the orphan's unfinished count grow to about 8,700, which holds the
// ingress back. Such a record is now dropped (the partition's next owner
// fetches it from the committed offset); one of a partition owned again
// later is enqueued.
func TestARecordOfAPartitionTakenAwaySincePollIsDropped(t *testing.T) {
	sub, err := NewSubscriber(Config{
		Brokers: []string{"127.0.0.1:1"}, Group: "g",
		Unmarshal: func(r *kgo.Record) *message.Message { return message.NewMessage(string(r.Key), r.Value) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const topic = "orders"
	record := func(part int32, offset int64) *kgo.Record {
		return &kgo.Record{Topic: topic, Partition: part, Offset: offset, Key: []byte("k"), Value: []byte("v")}
	}
	state := func() (parts, buffered int) {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return len(sub.parts), sub.buffered
	}
	for _, how := range []struct {
		name   string
		remove func()
	}{
		{"revoked", func() { sub.revoked(ctx, nil, map[string][]int32{topic: {0}}) }},
		{"lost", func() { sub.lost(ctx, nil, map[string][]int32{topic: {0}}) }},
	} {
		sub.assigned(ctx, nil, map[string][]int32{topic: {0}})
		how.remove()
		sub.enqueue(record(0, 7))
		if parts, buffered := state(); parts != 0 || buffered != 0 {
			t.Fatalf("after partition 0 was %s, its record made state for %d partitions, %d events buffered; want none", how.name, parts, buffered)
		}
	}
	// Never assigned at all: dropped too.
	sub.enqueue(record(1, 0))
	if parts, buffered := state(); parts != 0 || buffered != 0 {
		t.Fatalf("a record of a partition never assigned made state for %d partitions, %d events buffered; want none", parts, buffered)
	}
	// Owned again: its records go through.
	sub.assigned(ctx, nil, map[string][]int32{topic: {0}})
	sub.enqueue(record(0, 8))
	if parts, buffered := state(); parts != 1 || buffered != 1 {
		t.Fatalf("a record of an owned partition made state for %d partitions, %d events buffered; want 1 and 1", parts, buffered)
	}
}
