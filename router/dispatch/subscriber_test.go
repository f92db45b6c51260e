package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/dispatch"
)

// brokers returns real Kafka when the environment names it, else a fresh
// embedded broker.
func brokers(t *testing.T) []string {
	t.Helper()
	if b := testenv.KafkaBrokers(); len(b) > 0 {
		return b
	}
	b, err := embedded.Start("127.0.0.1:0", "", 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return []string{b.Addr()}
}

func createTopic(t *testing.T, addrs []string, partitions int32) string {
	t.Helper()
	topic := testenv.UniqueName("dispatch-")
	testenv.DeleteTopicsAtCleanup(t, topic)
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := kadm.NewClient(cl).CreateTopic(ctx, partitions, 1, nil, topic); err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	return topic
}

// produce writes n records per key, value "key/seq", keys interleaved.
func produce(t *testing.T, addrs []string, topic string, keys []string, n int) {
	t.Helper()
	// The topic was created a moment ago and may not be served yet: retry
	// that until the context's deadline (franz-go gives up after 4 tries).
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var recs []*kgo.Record
	for seq := range n {
		for _, k := range keys {
			recs = append(recs, &kgo.Record{Key: []byte(k), Value: []byte(k + "/" + strconv.Itoa(seq))})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

func unmarshal(r *kgo.Record) *message.Message {
	msg := message.NewMessage(fmt.Sprintf("%d/%d", r.Partition, r.Offset), r.Value)
	msg.Metadata.Set("key", string(r.Key))
	return msg
}

func newSubscriber(t *testing.T, addrs []string, group string, inFlight int) *dispatch.Subscriber {
	t.Helper()
	sub, err := dispatch.NewSubscriber(dispatch.Config{
		Brokers:         addrs,
		Group:           group,
		Unmarshal:       unmarshal,
		MaxInFlight:     inFlight,
		NackResendSleep: 10 * time.Millisecond,
		CommitInterval:  20 * time.Millisecond,
		DrainTimeout:    10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return sub
}

// runRouter runs fn as a Watermill handler over sub until the test ends.
func runRouter(t *testing.T, topic string, sub message.Subscriber, fn message.NoPublishHandlerFunc) *message.Router {
	t.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", topic, sub, fn)
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		_ = r.Close()
		<-done
	})
	return r
}

func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestKeysRunInParallelInOrderAndARetriedKeyHoldsOnlyItself is the dispatch
// contract: with one partition and MaxInFlight > 1, events of different keys
// run at once; one key's events run in order; a key that fails and is retried
// holds back only itself, and every other key finishes meanwhile.
func TestKeysRunInParallelInOrderAndARetriedKeyHoldsOnlyItself(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	keys := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
	const perKey = 20
	produce(t, addrs, topic, keys, perKey)

	var (
		mu          sync.Mutex
		seen        = map[string][]int{}
		running     atomic.Int32
		maxRunning  atomic.Int32
		othersDone  = make(chan struct{})
		closeOthers sync.Once
		failures    atomic.Int32
	)
	othersFinished := func() bool {
		for _, k := range keys[1:] {
			if len(seen[k]) < perKey {
				return false
			}
		}
		return true
	}
	sub := newSubscriber(t, addrs, testenv.UniqueName("g-"), 8)
	runRouter(t, topic, sub, func(msg *message.Message) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := maxRunning.Load()
			if n <= m || maxRunning.CompareAndSwap(m, n) {
				break
			}
		}
		key := msg.Metadata.Get("key")
		seq, _ := strconv.Atoi(string(msg.Payload[len(key)+1:]))
		// Key "a" fails at seq 3 until every other key is done: with
		// per-partition sequential dispatch this would never finish.
		if key == "a" && seq == 3 {
			select {
			case <-othersDone:
			default:
				failures.Add(1)
				return errors.New("not yet")
			}
		}
		time.Sleep(time.Millisecond) // a little work, so calls overlap
		mu.Lock()
		defer mu.Unlock()
		seen[key] = append(seen[key], seq)
		if othersFinished() {
			closeOthers.Do(func() { close(othersDone) })
		}
		return nil
	})
	waitFor(t, "every event handled", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen["a"]) == perKey && othersFinished()
	})
	mu.Lock()
	defer mu.Unlock()
	for _, k := range keys {
		for i, seq := range seen[k] {
			if seq != i {
				t.Fatalf("key %s handled out of order: %v", k, seen[k])
			}
		}
	}
	if failures.Load() == 0 {
		t.Fatal("key a never failed: the test did not exercise a retried key")
	}
	if maxRunning.Load() < 2 {
		t.Fatalf("at most %d call ran at once: keys of one partition did not run in parallel", maxRunning.Load())
	}
}

// TestOffsetsCommitOnlyUpToTheLowestUnfinishedEvent: events after an
// unfinished one are handled, but a new member of the group starts again at
// the unfinished event, so nothing is skipped.
func TestOffsetsCommitOnlyUpToTheLowestUnfinishedEvent(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	group := testenv.UniqueName("g-")
	produce(t, addrs, topic, []string{"stuck", "free"}, 5)

	var mu sync.Mutex
	handled := map[string]int{}
	release := make(chan struct{})
	sub := newSubscriber(t, addrs, group, 4)
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 15 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("h", topic, sub, func(msg *message.Message) error {
		if string(msg.Payload) == "stuck/0" {
			select {
			case <-release:
				return errors.New("stopped before it finished")
			case <-msg.Context().Done():
				return msg.Context().Err()
			}
		}
		mu.Lock()
		handled[string(msg.Payload)]++
		mu.Unlock()
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	waitFor(t, "the free key handled", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled["free/4"] == 1
	})
	// Stop with stuck/0 unfinished: it is nacked on the way out.
	close(release)
	_ = r.Close()
	<-done

	// A new member starts at stuck/0 (offset 0): everything is delivered again.
	var again sync.Map
	sub2 := newSubscriber(t, addrs, group, 4)
	runRouter(t, topic, sub2, func(msg *message.Message) error {
		again.Store(string(msg.Payload), true)
		return nil
	})
	waitFor(t, "stuck/0 redelivered", 30*time.Second, func() bool {
		_, ok := again.Load("stuck/0")
		return ok
	})
	for seq := range 5 {
		v := "stuck/" + strconv.Itoa(seq)
		waitFor(t, v+" redelivered", 30*time.Second, func() bool { _, ok := again.Load(v); return ok })
	}
}

// TestCloseLetsCallsInFlightFinish: closing the subscriber neither cancels the
// context of a call in flight nor returns before the call ended, and the
// message channel is closed when Close returns.
func TestCloseLetsCallsInFlightFinish(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	produce(t, addrs, topic, []string{"k"}, 1)
	sub := newSubscriber(t, addrs, testenv.UniqueName("g-"), 2)
	msgs, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	var msg *message.Message
	select {
	case msg = <-msgs:
	case <-time.After(30 * time.Second):
		t.Fatal("no message within 30s")
	}
	closed := make(chan struct{})
	go func() {
		_ = sub.Close()
		close(closed)
	}()
	select {
	case <-closed:
		t.Fatal("Close returned while a call was in flight")
	case <-msg.Context().Done():
		t.Fatal("Close cancelled the context of the call in flight")
	case <-time.After(200 * time.Millisecond):
	}
	msg.Ack()
	select {
	case <-closed:
	case <-time.After(15 * time.Second):
		t.Fatal("Close did not return after the call finished")
	}
	if _, open := <-msgs; open {
		t.Fatal("the message channel is still open after Close")
	}
}

// TestANewGroupStartsWhereConfigured: a group with no committed offset reads
// the records produced before it joined by default, and skips them with
// StartAtEnd. Markers are produced until one arrives: on one partition, a
// group reading from the start meets every old record before the first marker.
func TestANewGroupStartsWhereConfigured(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	for _, c := range []struct {
		name       string
		startAtEnd bool
		wantOld    int
	}{
		{"earliest", false, 5},
		{"latest", true, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			topic := createTopic(t, addrs, 1)
			produce(t, addrs, topic, []string{"old"}, 5)
			sub, err := dispatch.NewSubscriber(dispatch.Config{
				Brokers: addrs, Group: testenv.UniqueName("start-"), Unmarshal: unmarshal,
				CommitInterval: 20 * time.Millisecond, DrainTimeout: 10 * time.Second, StartAtEnd: c.startAtEnd,
			})
			if err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var old, markers int
			runRouter(t, topic, sub, func(msg *message.Message) error {
				mu.Lock()
				defer mu.Unlock()
				if msg.Metadata.Get("key") == "old" {
					old++
				} else {
					markers++
				}
				return nil
			})
			seenMarker := func() bool {
				mu.Lock()
				defer mu.Unlock()
				return markers > 0
			}
			// A marker produced before the group is placed is skipped too
			// (latest): produce another until one arrives.
			deadline := time.Now().Add(60 * time.Second)
			for !seenMarker() {
				if time.Now().After(deadline) {
					t.Fatal("no marker handled within 60s")
				}
				produce(t, addrs, topic, []string{"marker"}, 1)
				for wait := time.Now().Add(time.Second); !seenMarker() && time.Now().Before(wait); {
					time.Sleep(5 * time.Millisecond) // polling; the condition decides
				}
			}
			// Keys are dispatched in parallel: the marker can be done before
			// the old records are, so wait for them (latest: none will come,
			// as they are before the marker on the one partition).
			handledOld := func() int {
				mu.Lock()
				defer mu.Unlock()
				return old
			}
			for wait := time.Now().Add(30 * time.Second); handledOld() < c.wantOld && time.Now().Before(wait); {
				time.Sleep(5 * time.Millisecond) // polling; the condition decides
			}
			if n := handledOld(); n != c.wantOld {
				t.Errorf("%d records produced before the group joined were handled, want %d", n, c.wantOld)
			}
		})
	}
}
