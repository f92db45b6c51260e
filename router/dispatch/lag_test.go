package dispatch_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/dispatch"
)

// TestLagCountsUnfinishedRecordsAndFallsToZero: while the handler holds the
// first of 10 records of one key (so the other 9 wait behind it), the lag of
// the partition is 10; once the handler lets go, it falls to 0.
func TestLagCountsUnfinishedRecordsAndFallsToZero(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	produce(t, addrs, topic, []string{"k"}, 10)

	release := make(chan struct{})
	sub := newSubscriber(t, addrs, testenv.UniqueName("g-"), 4)
	runRouter(t, topic, sub, func(msg *message.Message) error {
		<-release
		return nil
	})
	lagOf := func() string { return fmt.Sprint(sub.Lag()) }
	waitFor(t, "lag 10 while the first record is held", 30*time.Second, func() bool { return lagOf() == "map[0:10]" })
	close(release)
	waitFor(t, "lag 0 once every record finished", 30*time.Second, func() bool { return lagOf() == "map[0:0]" })
}

// TestUnfinishedLeavesOutKeysThatWentPast: of 10 records, five of key a and
// five of key b, the handler holds a's first; b's five finish past it. Lag
// still counts 10 (offsets commit only up to a's first), Unfinished counts
// a's five alone, and both fall to 0 once a's are let go.
func TestUnfinishedLeavesOutKeysThatWentPast(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	produce(t, addrs, topic, []string{"a", "b"}, 5)

	release := make(chan struct{})
	sub := newSubscriber(t, addrs, testenv.UniqueName("g-"), 4)
	runRouter(t, topic, sub, func(msg *message.Message) error {
		if msg.Metadata.Get("key") == "a" {
			<-release
		}
		return nil
	})
	state := func() string { return fmt.Sprintf("lag %v, unfinished %d", sub.Lag(), sub.Unfinished()) }
	want := "lag map[0:10], unfinished 5"
	waitFor(t, want, 30*time.Second, func() bool { return state() == want })
	close(release)
	want = "lag map[0:0], unfinished 0"
	waitFor(t, want, 30*time.Second, func() bool { return state() == want })
}

// TestLagCountsPastAPausedFetch: with MaxBuffered events waiting behind a
// held one, fetching pauses; records produced after that are still counted,
// from the partition's end asked for every EndOffsetsInterval.
func TestLagCountsPastAPausedFetch(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	produce(t, addrs, topic, []string{"k"}, 10)

	sub, err := dispatch.NewSubscriber(dispatch.Config{
		Brokers:            addrs,
		Group:              testenv.UniqueName("g-"),
		Unmarshal:          unmarshal,
		MaxInFlight:        1,
		MaxBuffered:        4,
		EndOffsetsInterval: 50 * time.Millisecond,
		DrainTimeout:       10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	runRouter(t, topic, sub, func(msg *message.Message) error {
		<-release
		return nil
	})
	state := func() string { return fmt.Sprintf("lag %v, unfinished %d", sub.Lag(), sub.Unfinished()) }
	want := "lag map[0:10], unfinished 10"
	waitFor(t, want, 30*time.Second, func() bool { return state() == want })
	produce(t, addrs, topic, []string{"k"}, 90)
	want = "lag map[0:100], unfinished 100"
	waitFor(t, want, 30*time.Second, func() bool { return state() == want })
	close(release)
	want = "lag map[0:0], unfinished 0"
	waitFor(t, want, 30*time.Second, func() bool { return state() == want })
}

// listOffsetsCount counts the ListOffsets requests a client writes.
type listOffsetsCount struct{ n atomic.Int64 }

func (c *listOffsetsCount) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == kmsg.ListOffsets.Int16() && err == nil {
		c.n.Add(1)
	}
}

// TestAMemberWithoutPartitionsAsksForNoEnds: of two members of a group on a
// one-partition topic, the one holding the partition asks for its end every
// EndOffsetsInterval; the other has no lag to count and asks for nothing.
func TestAMemberWithoutPartitionsAsksForNoEnds(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	produce(t, addrs, topic, []string{"k"}, 1)
	group := testenv.UniqueName("g-")
	member := func() (*dispatch.Subscriber, *listOffsetsCount) {
		count := &listOffsetsCount{}
		sub, err := dispatch.NewSubscriber(dispatch.Config{
			Brokers:            addrs,
			Group:              group,
			Unmarshal:          unmarshal,
			EndOffsetsInterval: 20 * time.Millisecond,
			DrainTimeout:       10 * time.Second,
			Opts:               []kgo.Opt{kgo.WithHooks(count)},
		})
		if err != nil {
			t.Fatal(err)
		}
		runRouter(t, topic, sub, func(*message.Message) error { return nil })
		return sub, count
	}
	first, firstAsks := member()
	waitFor(t, "the first member holding the partition", 30*time.Second, func() bool { return len(first.Lag()) == 1 })
	second, secondAsks := member()
	// The end-offsets loops run from Subscribe on: ten asks by the first
	// member are ten intervals of the second's, joined or not.
	joined := firstAsks.n.Load() + 10
	waitFor(t, "ten asks by the first member after the second started", 30*time.Second, func() bool { return firstAsks.n.Load() >= joined })
	holder, holderAsks, idle, idleAsks := first, firstAsks, second, secondAsks
	if len(second.Lag()) == 1 { // the partition moved when the second joined
		holder, holderAsks, idle, idleAsks = second, secondAsks, first, firstAsks
	}
	before := idleAsks.n.Load()
	target := holderAsks.n.Load() + 10
	waitFor(t, "ten more asks by the holder", 30*time.Second, func() bool { return holderAsks.n.Load() >= target })
	if len(idle.Lag()) != 0 || len(holder.Lag()) != 1 {
		t.Fatalf("the partition moved during the test: %v and %v", holder.Lag(), idle.Lag())
	}
	if n := idleAsks.n.Load() - before; n != 0 {
		t.Fatalf("the member without partitions asked for ends %d times while the holder asked 10 times", n)
	}
}
