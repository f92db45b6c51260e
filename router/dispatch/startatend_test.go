package dispatch_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/dispatch"
)

// TestAGroupThatStartsAtTheEndKeepsWhereItFirstJoined: a handler's group
// starts at the end (run.start_position latest). Its one replica joins, is
// placed at the end of every partition and has received nothing yet when
// it restarts (a rolling deploy, replicas joining at start-up). Records
// produced meanwhile came after the group first joined, so they must be
// handled. Nothing was committed for a partition before a record of it
// finished, so the next member reset to the end again and skipped them,
// silently, with a lag of 0 (a fresh-eyed attack found 5–14 of 150 orders
// lost when two replicas joined a third at start-up).
func TestAGroupThatStartsAtTheEndKeepsWhereItFirstJoined(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 4)
	g := newEndGroup(t, addrs)
	newSub, fn, was := g.subscriber, g.handle, g.handledAll
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	send := func(v string) {
		t.Helper()
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte(v), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	// placed sends markers until one is handled: the member is placed
	// (at the end) and fetching. Markers sent before that are skipped, as
	// the start position says.
	placed := func(name string) {
		t.Helper()
		for i := 0; ; i++ {
			marker := name + "-marker-" + strconv.Itoa(i)
			send(marker)
			deadline := time.Now().Add(time.Second)
			for time.Now().Before(deadline) {
				if was(marker) {
					return
				}
				time.Sleep(10 * time.Millisecond) // polling interval
			}
			if ctx.Err() != nil {
				t.Fatalf("the %s member never handled a marker", name)
			}
		}
	}

	first, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	first.AddConsumerHandler("h", topic, newSub(), fn)
	done := make(chan error, 1)
	go func() { done <- first.Run(context.Background()) }()
	placed("first")
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	<-done

	const during = 20
	for i := range during {
		send("during-restart-" + strconv.Itoa(i))
	}
	runRouter(t, topic, newSub(), fn)
	placed("second")
	waitFor(t, "every record produced while the group had no member", 30*time.Second, func() bool {
		for i := range during {
			if !was("during-restart-" + strconv.Itoa(i)) {
				return false
			}
		}
		return true
	})
}

// TestPartitionsAddedToATopicAreReadFromTheirStart: partitions added to a
// topic (kafka-topics --alter --partitions) after a group that starts at the
// end started hold only records produced after that. The group placed them
// at their end, as if they had been there when it first joined: found at
// its next metadata refresh (five minutes later, by franz-go's default), by
// a member started while the group had none, or by a second replica joining,
// every record produced to them before was skipped, with no error and a lag
// of 0. Now they are read from their start, on every path.
func TestPartitionsAddedToATopicAreReadFromTheirStart(t *testing.T) {
	tests := []struct {
		name string
		// then is what happens to the group's members once it is placed:
		// before (stop) and after (start) the partitions are added and
		// produced to.
		stopFirst, startAnother bool
	}{
		{name: "while the group runs"},
		{name: "while no member runs", stopFirst: true, startAnother: true},
		{name: "then another replica joins", startAnother: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addedPartitionsAreReadFromTheirStart(t, tt.stopFirst, tt.startAnother)
		})
	}
}

func addedPartitionsAreReadFromTheirStart(t *testing.T, stopFirst, startAnother bool) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 2)
	g := newEndGroup(t, addrs)
	newSub, fn, was := g.subscriber, g.handle, g.handledAll
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// A client's partition count is its metadata's: a produce to a
	// partition past it fails in the client, which does not look again.
	// So each try is a client of its own, made after the partitions exist.
	send := func(value string, partition int32) error {
		cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic),
			kgo.UnknownTopicRetries(-1), kgo.RecordPartitioner(kgo.ManualPartitioner()))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		return cl.ProduceSync(ctx, &kgo.Record{Key: []byte(value), Value: []byte(value), Partition: partition}).FirstErr()
	}

	first, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	first.AddConsumerHandler("h", topic, newSub(), fn)
	done := make(chan error, 1)
	go func() { done <- first.Run(context.Background()) }()
	stop := func() {
		_ = first.Close()
		<-done
	}
	defer func() {
		if !stopFirst {
			stop()
		}
	}()
	g.awaitPlaced(ctx, t, send)
	adm := kadm.NewClient(mustClient(t, addrs))
	// The group is established: its placement is committed (a new group
	// holds that back for a few seconds, see dispatch.addedPartitions).
	waitFor(t, "the group's placement committed", time.Minute, func() bool {
		committed, err := adm.FetchOffsets(ctx, g.name)
		if err != nil {
			return false
		}
		for p := range int32(2) {
			if o, ok := committed.Lookup(topic, p); !ok || o.At < 0 {
				return false
			}
		}
		return true
	})
	if stopFirst {
		stop()
	}

	if resp, err := adm.CreatePartitions(ctx, 2, topic); err != nil || resp.Error() != nil {
		t.Fatalf("add two partitions to %s: %v %v", topic, err, resp.Error())
	}
	var want []string
	for p := int32(2); p < 4; p++ {
		for i := range 10 {
			v := "added-" + strconv.Itoa(int(p)) + "-" + strconv.Itoa(i)
			// Until the broker's metadata has the new partitions, a
			// produce to them fails; retried until the deadline.
			for {
				err := send(v, p)
				if err == nil {
					break
				}
				if ctx.Err() != nil {
					t.Fatalf("produce to new partition %d: %v", p, err)
				}
				time.Sleep(100 * time.Millisecond) // pace of the retries
			}
			want = append(want, v)
		}
	}
	if startAnother {
		runRouter(t, topic, newSub(), fn)
	}
	waitFor(t, "every record produced to the added partitions", time.Minute, func() bool { return was(want...) })
}

func mustClient(t *testing.T, addrs []string) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// endGroup is a new consumer group that starts at the end (StartAtEnd),
// with what its members handled.
type endGroup struct {
	t       *testing.T
	addrs   []string
	name    string
	mu      sync.Mutex
	handled map[string]bool
}

func newEndGroup(t *testing.T, addrs []string) *endGroup {
	return &endGroup{t: t, addrs: addrs, name: testenv.UniqueName("latest-"), handled: map[string]bool{}}
}

// subscriber makes a member of the group.
func (g *endGroup) subscriber() *dispatch.Subscriber {
	sub, err := dispatch.NewSubscriber(dispatch.Config{
		Brokers: g.addrs, Group: g.name, Unmarshal: unmarshal, MaxInFlight: 8,
		NackResendSleep: 10 * time.Millisecond, CommitInterval: 20 * time.Millisecond,
		DrainTimeout: 10 * time.Second, StartAtEnd: true,
	})
	if err != nil {
		g.t.Fatal(err)
	}
	return sub
}

// handle is the members' handler: it records the event's payload.
func (g *endGroup) handle(msg *message.Message) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.handled[string(msg.Payload)] = true
	return nil
}

// handledAll says whether every one of payloads was handled.
// awaitPlaced sends a probe to each of the topic's two partitions, with
// send, until one of each is handled: probes sent before the group is
// placed are skipped, as its start position says.
func (g *endGroup) awaitPlaced(ctx context.Context, t *testing.T, send func(value string, partition int32) error) {
	t.Helper()
	for i := 0; ; i++ {
		vs := []string{"probe-0-" + strconv.Itoa(i), "probe-1-" + strconv.Itoa(i)}
		for p, v := range vs {
			if err := send(v, int32(p)); err != nil {
				t.Fatal(err)
			}
		}
		deadline := time.Now().Add(time.Second)
		for !g.handledAll(vs...) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling interval
		}
		if g.handledAll(vs...) {
			return
		}
		if ctx.Err() != nil {
			t.Fatal("the group was never placed on both partitions")
		}
	}
}

func (g *endGroup) handledAll(payloads ...string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, v := range payloads {
		if !g.handled[v] {
			return false
		}
	}
	return true
}

// TestANewGroupCommitsWhereItStartsOnlyOnceItsGenerationHasLooked: replicas
// of a new group that join in one generation (Kafka gathers them for
// group.initial.rebalance.delay.ms, 3 s by default) each place their
// partitions at the end. One that looked at the group's commits after
// another had committed its placement took its own partitions for ones
// added since, and read their history: 90–150 of 240 old records in an
// attack. A member that placed a new group's partitions at their end now
// commits nothing for NewGroupSettle (the others of its generation look
// within milliseconds), but when it leaves, so that the next member starts
// where it did.
func TestANewGroupCommitsWhereItStartsOnlyOnceItsGenerationHasLooked(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cl := mustClient(t, addrs)
	for i := range 10 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte("old-" + strconv.Itoa(i))}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	adm := kadm.NewClient(cl)
	g := newEndGroup(t, addrs)
	sub, err := dispatch.NewSubscriber(dispatch.Config{
		Brokers: addrs, Group: g.name, Unmarshal: unmarshal, MaxInFlight: 8,
		NackResendSleep: 10 * time.Millisecond, CommitInterval: 20 * time.Millisecond,
		DrainTimeout: 10 * time.Second, StartAtEnd: true, NewGroupSettle: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", topic, sub, g.handle)
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	g.awaitPlaced(ctx, t, func(v string, p int32) error {
		return cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Value: []byte(v), Partition: p}).FirstErr()
	})
	committed := func() map[int32]int64 {
		t.Helper()
		resp, err := adm.FetchOffsets(ctx, g.name)
		if err == nil {
			err = resp.Error()
		}
		if err != nil {
			t.Fatalf("fetch the group's offsets: %v", err)
		}
		out := map[int32]int64{}
		for p, o := range resp[topic] {
			if o.At >= 0 {
				out[p] = o.At
			}
		}
		return out
	}
	// Fifty commit intervals: without the hold, the placement and the
	// probes were committed within one.
	for range 50 {
		if c := committed(); len(c) > 0 {
			t.Fatalf("a new group's member committed %v while its generation may still look; want nothing for NewGroupSettle", c)
		}
		time.Sleep(20 * time.Millisecond) // one commit interval
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	if c := committed(); len(c) != 2 {
		t.Fatalf("after the member left, the group committed %v; want both partitions, where it had got to", c)
	}
	if g.handledAll("old-0") {
		t.Fatal("a record produced before the group started was handled")
	}
}
