package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// watcher reads the flow's three topics from a timestamp just before the run.
// For every order (the record key is the order id) it keeps the Kafka
// timestamp of the first record of each type, and the local time at which its
// email.sent record was first read: that ends the order's latency.
//
// It reads with two clients. One reads email.sent as soon as a record is
// there, for the latency. The other reads the two topics only the order check
// needs, in large fetches: read as promptly as email.sent, they were a third
// of the broker's requests at 100 orders/s, load the bench added to the CPU
// eventfn is measured on.
type watcher struct {
	client  *kgo.Client // email.sent, at once
	checks  *kgo.Client // order.placed and payment.confirmed, in bulk
	topics  [3]string   // order.placed, payment.confirmed, email.sent
	fromMs  int64
	start   kadm.ListedOffsets // where reading began, per partition
	done    sync.WaitGroup
	mu      sync.Mutex
	chains  map[string]chainRecords
	emailAt map[string]time.Time
	next    map[string]map[int32]int64 // topic → partition → offset after the last record read
	dupes   int
	err     error
}

func startWatcher(ctx context.Context, brokers []string, topics [3]string, from time.Time) (*watcher, error) {
	w := &watcher{
		topics: topics, fromMs: from.UnixMilli(),
		chains: map[string]chainRecords{}, emailAt: map[string]time.Time{}, next: map[string]map[int32]int64{},
	}
	// The start offsets are resolved here, once, before any order is sent:
	// a reset to a timestamp resolved lazily by the consumer can land on a
	// partition's end after the first record arrived, and skip that record.
	adm, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return nil, err
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start, err := kadm.NewClient(adm).ListOffsetsAfterMilli(lctx, w.fromMs, topics[:]...)
	adm.Close()
	if err == nil {
		err = start.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list the offsets of %v after %s: %w", topics, from.Format(time.RFC3339Nano), err)
	}
	w.start = start
	parts := map[string]map[int32]kgo.Offset{}
	for _, t := range topics {
		if len(start[t]) == 0 {
			return nil, fmt.Errorf("topic %s does not exist: is the app the eventfn with the order flow?", t)
		}
		parts[t] = map[int32]kgo.Offset{}
		for p, o := range start[t] {
			parts[t][p] = kgo.NewOffset().At(o.Offset)
		}
	}
	w.client, err = kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ClientID("eventfn-bench-watch"),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topics[2]: parts[topics[2]]}),
		kgo.FetchMaxWait(200*time.Millisecond),
	)
	if err != nil {
		return nil, err
	}
	w.checks, err = kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ClientID("eventfn-bench-check"),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topics[0]: parts[topics[0]], topics[1]: parts[topics[1]]}),
		kgo.FetchMinBytes(1<<20),
		kgo.FetchMaxWait(time.Second),
	)
	if err != nil {
		w.client.Close()
		return nil, err
	}
	w.done.Add(2)
	go w.run(w.client)
	go w.run(w.checks)
	return w, nil
}

func (w *watcher) run(cl *kgo.Client) {
	defer w.done.Done()
	for {
		fs := cl.PollFetches(context.Background())
		if fs.IsClientClosed() {
			return
		}
		now := time.Now()
		fs.EachError(func(t string, p int32, err error) {
			w.mu.Lock()
			if w.err == nil {
				w.err = fmt.Errorf("read %s[%d]: %w", t, p, err)
			}
			w.mu.Unlock()
		})
		w.mu.Lock()
		fs.EachRecord(func(r *kgo.Record) {
			if w.next[r.Topic] == nil {
				w.next[r.Topic] = map[int32]int64{}
			}
			w.next[r.Topic][r.Partition] = r.Offset + 1
			id := string(r.Key)
			c := w.chains[id]
			var slot *time.Time
			switch r.Topic {
			case w.topics[0]:
				slot = &c.Placed
			case w.topics[1]:
				slot = &c.Confirmed
			case w.topics[2]:
				slot = &c.Emailed
				if _, seen := w.emailAt[id]; !seen {
					w.emailAt[id] = now
				}
			default:
				return
			}
			if slot.IsZero() {
				*slot = r.Timestamp
			} else {
				w.dupes++
			}
			w.chains[id] = c
		})
		w.mu.Unlock()
	}
}

// emailed is when the order's email.sent record was first read.
func (w *watcher) emailed(id string) (time.Time, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	t, ok := w.emailAt[id]
	return t, ok
}

// caughtUp waits until every record appended to the three topics since the
// start timestamp has been read, or the deadline passes.
func (w *watcher) caughtUp(ctx context.Context, timeout time.Duration) error {
	adm := kadm.NewClient(w.client)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := w.start
	end, err := adm.ListEndOffsets(ctx, w.topics[:]...)
	if err == nil {
		err = end.Error()
	}
	if err != nil {
		return fmt.Errorf("list end offsets: %w", err)
	}
	for {
		behind := 0
		w.mu.Lock()
		end.Each(func(o kadm.ListedOffset) {
			s, _ := start.Lookup(o.Topic, o.Partition)
			if o.Offset > s.Offset && w.next[o.Topic][o.Partition] < o.Offset {
				behind++
			}
		})
		werr := w.err
		w.mu.Unlock()
		if behind == 0 {
			return nil
		}
		if werr != nil {
			return werr
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the order check's reader is %d partition(s) behind the end of the topics: %w", behind, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// snapshot copies what was read so far.
func (w *watcher) snapshot() (map[string]chainRecords, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]chainRecords, len(w.chains))
	for k, v := range w.chains {
		out[k] = v
	}
	return out, w.dupes
}

func (w *watcher) close() {
	w.client.Close()
	w.checks.Close()
	stopped := make(chan struct{})
	go func() {
		w.done.Wait()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
	}
}

// locate reads the three topics from their start with a fresh client and
// says where each record of the given orders is: it tells a record the
// order check's reader missed from one that is not on Kafka at all.
func locate(ctx context.Context, brokers []string, topics [3]string, ids []string) (map[string][]string, error) {
	want := map[string]bool{}
	for _, id := range ids {
		want[id] = true
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topics[:]...),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	end, err := kadm.NewClient(cl).ListEndOffsets(ctx, topics[:]...)
	if err == nil {
		err = end.Error()
	}
	if err != nil {
		return nil, err
	}
	left := map[string]map[int32]int64{}
	end.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			if left[o.Topic] == nil {
				left[o.Topic] = map[int32]int64{}
			}
			left[o.Topic][o.Partition] = o.Offset
		}
	})
	out := map[string][]string{}
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		fs.EachRecord(func(r *kgo.Record) {
			if want[string(r.Key)] {
				out[string(r.Key)] = append(out[string(r.Key)], fmt.Sprintf("%s[%d]@%d ts %s", r.Topic, r.Partition, r.Offset, stamp(r.Timestamp)))
			}
			if e, ok := left[r.Topic][r.Partition]; ok && r.Offset+1 >= e {
				delete(left[r.Topic], r.Partition)
				if len(left[r.Topic]) == 0 {
					delete(left, r.Topic)
				}
			}
		})
	}
	return out, nil
}
