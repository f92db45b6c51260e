package dispatch_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/dispatch"
)

// TestAGroupWhoseRecordsWereDeletedResumesAtTheLogStart: a handler's group
// committed offset 5 of a partition, then stopped for longer than the
// topic's retention, and Kafka deleted records 0–9 (DeleteRecords stands in
// for retention). Records 5–9 are gone; 10–29 still exist and were never
// handled. From either start position the group must handle 10–29 and
// report 5–9 as deleted before it consumed them. A group that starts at the
// end (latest) took Kafka's reset for such a commit and skipped to the end:
// 20 good records, silently, with a lag of 0.
func TestAGroupWhoseRecordsWereDeletedResumesAtTheLogStart(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	for _, c := range []struct {
		name       string
		startAtEnd bool
	}{
		{"earliest", false},
		{"latest", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			topic := createTopic(t, addrs, 1)
			group := testenv.UniqueName("deleted-")
			produce(t, addrs, topic, []string{"k"}, 30) // offsets 0–29
			deleteBefore(t, addrs, group, topic, 5, 10)

			var mu sync.Mutex
			handled := map[int64]bool{}
			var deleted []string
			sub, err := dispatch.NewSubscriber(dispatch.Config{
				Brokers: addrs, Group: group, Unmarshal: unmarshal,
				CommitInterval: 20 * time.Millisecond, DrainTimeout: 10 * time.Second, StartAtEnd: c.startAtEnd,
				Deleted: func(topic string, partition int32, from, to int64) {
					mu.Lock()
					defer mu.Unlock()
					deleted = append(deleted, strconv.Itoa(int(partition))+":"+strconv.FormatInt(from, 10)+"-"+strconv.FormatInt(to, 10))
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			runRouter(t, topic, sub, func(msg *message.Message) error {
				mu.Lock()
				defer mu.Unlock()
				handled[recordOffset(t, msg)] = true
				return nil
			})
			waitFor(t, "records 10–29, which still exist", 30*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				for o := int64(10); o < 30; o++ {
					if !handled[o] {
						return false
					}
				}
				return true
			})
			waitFor(t, "a report of the deleted records", 10*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(deleted) > 0
			})
			mu.Lock()
			defer mu.Unlock()
			for o := range handled {
				if o < 10 {
					t.Errorf("record %d was handled, but Kafka had deleted it", o)
				}
			}
			if len(deleted) != 1 || deleted[0] != "0:5-10" {
				t.Errorf("deleted records reported as %q, want [0:5-10] (partition 0, offsets 5 to 10)", deleted)
			}
		})
	}
}

// deleteBefore commits offset committed of partition 0 for group, as a
// member that had handled the records before it would have, and deletes the
// partition's records before offset before.
func deleteBefore(t *testing.T, addrs []string, group, topic string, committed, before int64) {
	t.Helper()
	commitOffset(t, admin(t, addrs), group, topic, committed)
	deleteRecords(t, addrs, topic, before)
}

// commitOffset commits offset of partition 0 of topic for group.
func commitOffset(t *testing.T, adm *kadm.Client, group, topic string, offset int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var offsets kadm.Offsets
	offsets.AddOffset(topic, 0, offset, -1)
	resp, err := adm.CommitOffsets(ctx, group, offsets)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("commit offset %d of %s for group %s: %v", offset, topic, group, err)
	}
}

func admin(t *testing.T, addrs []string) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// TestAGroupWhoseCommitIsPastThePartitionsEndReadsItAgain: the broker
// lost records the group had consumed and committed past (an unclean
// leader election), so the partition now ends before the commit, and the
// records produced since took those offsets again. How many were produced
// since, nobody can tell: resumed at the end, the group would skip them.
// It reads the partition again from its start (the inbox absorbs what it
// had handled), and so handles every record produced since the loss.
func TestAGroupWhoseCommitIsPastThePartitionsEndReadsItAgain(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	for _, startAtEnd := range []bool{false, true} {
		t.Run(fmt.Sprintf("StartAtEnd=%v", startAtEnd), func(t *testing.T) {
			t.Parallel()
			topic := createTopic(t, addrs, 1)
			group := testenv.UniqueName("past-end-")
			produce(t, addrs, topic, []string{"before"}, 20) // offsets 0–19, handled before the loss
			commitOffset(t, admin(t, addrs), group, topic, 40)
			produce(t, addrs, topic, []string{"since"}, 5) // offsets 20–24, produced since
			var mu sync.Mutex
			handled := map[string]int{}
			sub, err := dispatch.NewSubscriber(dispatch.Config{
				Brokers: addrs, Group: group, Unmarshal: unmarshal, StartAtEnd: startAtEnd,
				CommitInterval: 20 * time.Millisecond, DrainTimeout: 10 * time.Second,
			})
			if err != nil {
				t.Fatal(err)
			}
			runRouter(t, topic, sub, func(msg *message.Message) error {
				mu.Lock()
				defer mu.Unlock()
				handled[msg.Metadata.Get("key")]++
				return nil
			})
			if !waitUntil(30*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return handled["since"] == 5
			}) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("the 5 records produced since the loss were not handled within 30s: %v", handled)
			}
		})
	}
}

// TestRecordsDeletedWhileTheGroupWasBehindAreReported: a group falls
// behind (its handler is stuck on the first record), and Kafka deletes
// records it has not fetched yet. franz-go resumes at the new log start, so
// the group goes on; the records it passed over must be reported, and
// every record must be either handled or reported, none silently skipped.
func TestRecordsDeletedWhileTheGroupWasBehindAreReported(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	const n, deleteTo = 30, 20
	for i := range n { // a batch each, so that a fetch of one batch takes one record
		produce(t, addrs, topic, []string{"k" + strconv.Itoa(i)}, 1)
	}
	var mu sync.Mutex
	handled := map[int64]bool{}
	var deleted [][2]int64
	holding, release := make(chan struct{}), make(chan struct{})
	sub, err := dispatch.NewSubscriber(dispatch.Config{
		Brokers: addrs, Group: testenv.UniqueName("behind-"), Unmarshal: unmarshal,
		MaxInFlight: 1, MaxBuffered: 1,
		CommitInterval: 20 * time.Millisecond, DrainTimeout: 10 * time.Second,
		Deleted: func(_ string, _ int32, from, to int64) {
			mu.Lock()
			defer mu.Unlock()
			deleted = append(deleted, [2]int64{from, to})
		},
		Opts: []kgo.Opt{kgo.FetchMaxBytes(1), kgo.FetchMaxPartitionBytes(1)},
	})
	if err != nil {
		t.Fatal(err)
	}
	runRouter(t, topic, sub, func(msg *message.Message) error {
		o := recordOffset(t, msg)
		if o == 0 {
			close(holding)
			<-release
		}
		mu.Lock()
		defer mu.Unlock()
		handled[o] = true
		return nil
	})
	// The handler holds record 0; the group has fetched a record or two.
	select {
	case <-holding:
	case <-time.After(30 * time.Second):
		t.Fatal("record 0 was not handed to the handler within 30s")
	}
	deleteRecords(t, addrs, topic, deleteTo)
	close(release)

	accounted := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for o := int64(0); o < n; o++ {
			if !handled[o] && !slicesContainsOffset(deleted, o) {
				return false
			}
		}
		return true
	}
	if !waitUntil(30*time.Second, accounted) {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("within 30s, not every record was handled or reported deleted: handled %v, deleted %v", handled, deleted)
	}
	mu.Lock()
	defer mu.Unlock()
	for o := int64(deleteTo); o < n; o++ {
		if !handled[o] {
			t.Errorf("record %d, which Kafka kept, was not handled", o)
		}
	}
	for _, d := range deleted {
		for o := d[0]; o < d[1]; o++ {
			if handled[o] {
				t.Errorf("record %d was handled and also reported deleted (%v)", o, deleted)
			}
		}
	}
	if len(deleted) != 1 || deleted[0][1] != deleteTo {
		t.Errorf("deleted records reported as %v, want one range ending at %d", deleted, deleteTo)
	}
}

// slicesContainsOffset says whether o lies in one of the ranges [from, to).
func slicesContainsOffset(ranges [][2]int64, o int64) bool {
	for _, r := range ranges {
		if o >= r[0] && o < r[1] {
			return true
		}
	}
	return false
}

// waitUntil polls cond until it holds or timeout passes, and says which.
func waitUntil(timeout time.Duration, cond func() bool) bool {
	for deadline := time.Now().Add(timeout); !cond(); {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond) // polling; the condition decides
	}
	return true
}

// produceTxn writes n records to partition 0 of topic in one committed
// transaction: offsets for the n records, then one for the commit marker.
func produceTxn(t *testing.T, addrs []string, topic string, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID(testenv.UniqueName("txn-")), kgo.RecordPartitioner(kgo.ManualPartitioner()), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cl.BeginTransaction(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: []byte("k" + strconv.Itoa(i)), Value: []byte("v"), Partition: 0}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.EndTransaction(ctx, kgo.TryCommit); err != nil {
		t.Fatal(err)
	}
}

// TestATransactionsMarkerIsNotReportedDeleted: a transactional producer
// wrote offsets 0–4 and its commit marker took offset 5. The group handles
// 0–4; then the partition is quiet for longer than its retention, and Kafka
// deletes the whole log (DeleteRecords to its end stands in). No event was
// lost. The commit stopped at the marker (5), and the marker, once deleted,
// was reported as a lost record, by a member that restarted and by one that
// ran on; the lag of such a partition stayed at 1 for good. The commit now
// moves past the marker, and nothing is reported.
func TestATransactionsMarkerIsNotReportedDeleted(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	for _, restart := range []bool{false, true} {
		t.Run(fmt.Sprintf("restart=%v", restart), func(t *testing.T) {
			t.Parallel()
			adm := admin(t, addrs)
			topic := createTopic(t, addrs, 1)
			group := testenv.UniqueName("txn-")
			produceTxn(t, addrs, topic, 5)
			var mu sync.Mutex
			handled := map[int64]bool{}
			var deleted [][2]int64
			newSub := func() *dispatch.Subscriber {
				sub, err := dispatch.NewSubscriber(dispatch.Config{
					Brokers: addrs, Group: group, Unmarshal: unmarshal,
					CommitInterval: 20 * time.Millisecond, DrainTimeout: 10 * time.Second,
					Deleted: func(_ string, _ int32, from, to int64) {
						mu.Lock()
						defer mu.Unlock()
						deleted = append(deleted, [2]int64{from, to})
					},
				})
				if err != nil {
					t.Fatal(err)
				}
				return sub
			}
			handle := func(msg *message.Message) error {
				o := recordOffset(t, msg)
				mu.Lock()
				defer mu.Unlock()
				handled[o] = true
				return nil
			}
			first := runRouter(t, topic, newSub(), handle)
			waitFor(t, "the commit past the marker", 30*time.Second, func() bool {
				c, err := adm.FetchOffsets(context.Background(), group)
				o, ok := c.Lookup(topic, 0)
				return err == nil && ok && o.At == 6
			})
			if restart {
				if err := first.Close(); err != nil {
					t.Fatal(err)
				}
			}
			deleteRecords(t, addrs, topic, 6)
			if restart {
				runRouter(t, topic, newSub(), handle)
			}
			produceTxn(t, addrs, topic, 3) // offsets 6–8, the marker at 9
			waitFor(t, "the records after the deletion handled", 30*time.Second, func() bool {
				mu.Lock()
				defer mu.Unlock()
				return handled[6] && handled[7] && handled[8]
			})
			mu.Lock()
			defer mu.Unlock()
			if len(deleted) > 0 || len(handled) != 8 {
				t.Errorf("reported deleted %v and handled %v; want nothing deleted and 0–4, 6–8 handled", deleted, handled)
			}
		})
	}
}

// TestDeletedRecordsAreReportedOnceAcrossARestart: records 2–19 are deleted
// while the group is behind, and reported. The first record after them
// (20) fails and is retried, and the member restarts meanwhile (a deploy).
// The group's commit was 2, the offset after the last record finished, below
// the log start: the next member reported 2–19 again, and the counter said
// 36 records for 18. The commit now passes a reported gap as soon as what
// came before it is finished.
func TestDeletedRecordsAreReportedOnceAcrossARestart(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	group := testenv.UniqueName("once-")
	const n, deleteTo = 30, 20
	for i := range n { // a batch each, so that a fetch of one batch takes one record
		produce(t, addrs, topic, []string{"k" + strconv.Itoa(i)}, 1)
	}
	var mu sync.Mutex
	var deleted [][2]int64
	config := dispatch.Config{
		Brokers: addrs, Group: group, Unmarshal: unmarshal,
		MaxInFlight: 1, MaxBuffered: 1,
		CommitInterval: 20 * time.Millisecond, DrainTimeout: time.Second,
		Deleted: func(_ string, _ int32, from, to int64) {
			mu.Lock()
			defer mu.Unlock()
			deleted = append(deleted, [2]int64{from, to})
		},
		Opts: []kgo.Opt{kgo.FetchMaxBytes(1), kgo.FetchMaxPartitionBytes(1)},
	}
	holding, release := make(chan struct{}), make(chan struct{})
	failing := make(chan struct{}, 1)
	sub, err := dispatch.NewSubscriber(config)
	if err != nil {
		t.Fatal(err)
	}
	first := runRouter(t, topic, sub, func(msg *message.Message) error {
		switch o := recordOffset(t, msg); {
		case o == 0:
			close(holding)
			<-release
		case o >= deleteTo:
			select {
			case failing <- struct{}{}:
			default:
			}
			return fmt.Errorf("record %d fails for now", o)
		}
		return nil
	})
	<-holding
	deleteRecords(t, addrs, topic, deleteTo)
	close(release)
	select {
	case <-failing:
	case <-time.After(30 * time.Second):
		t.Fatal("the first record after the deleted ones was not handed out within 30s")
	}
	if err := first.Close(); err != nil { // a deploy, while 20 is retried
		t.Fatal(err)
	}

	var last atomic.Bool
	sub, err = dispatch.NewSubscriber(config)
	if err != nil {
		t.Fatal(err)
	}
	runRouter(t, topic, sub, func(msg *message.Message) error {
		if recordOffset(t, msg) == n-1 {
			last.Store(true)
		}
		return nil
	})
	waitFor(t, "the records after the deleted ones handled", 30*time.Second, last.Load)
	mu.Lock()
	defer mu.Unlock()
	if len(deleted) != 1 || deleted[0][1] != deleteTo {
		t.Errorf("deleted records reported as %v, want one range ending at %d", deleted, deleteTo)
	}
}

// TestARecordStuckWhenItsMemberRestartsIsNotSkipped: the member's first
// record since it got the partition fails and is retried when the member
// is restarted (a deploy). Nothing was committed for the partition until
// that record finished, so the group's position stayed where it was: with
// a commit past the partition's end (the broker lost records), the next
// member resumed there once producers had written that far, and 20
// records (the stuck one among them) were handled by neither member; in a
// group with no commit yet, the stuck record went unreported once Kafka
// deleted it. The first record's offset is now committed at once.
func TestARecordStuckWhenItsMemberRestartsIsNotSkipped(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	group := testenv.UniqueName("stuck-")
	produce(t, addrs, topic, []string{"before"}, 20) // 0–19
	commitOffset(t, admin(t, addrs), group, topic, 40)
	produce(t, addrs, topic, []string{"since"}, 5) // 20–24
	config := dispatch.Config{
		Brokers: addrs, Group: group, Unmarshal: unmarshal,
		NackResendSleep: 10 * time.Millisecond,
		CommitInterval:  20 * time.Millisecond, DrainTimeout: time.Second,
	}
	var mu sync.Mutex
	handled := map[int64]bool{}
	sub, err := dispatch.NewSubscriber(config)
	if err != nil {
		t.Fatal(err)
	}
	var tried atomic.Bool
	first := runRouter(t, topic, sub, func(msg *message.Message) error {
		o := recordOffset(t, msg)
		if o == 0 {
			tried.Store(true)
			return errors.New("record 0 fails for now")
		}
		mu.Lock()
		defer mu.Unlock()
		handled[o] = true
		return nil
	})
	waitFor(t, "record 0 tried", 30*time.Second, tried.Load)
	produce(t, addrs, topic, []string{"later"}, 20) // 25–44: past the old commit
	waitFor(t, "record 44 handled by the first member", 30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled[44]
	})
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	sub, err = dispatch.NewSubscriber(config)
	if err != nil {
		t.Fatal(err)
	}
	runRouter(t, topic, sub, func(msg *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		handled[recordOffset(t, msg)] = true
		return nil
	})
	if !waitUntil(30*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled[0]
	}) {
		mu.Lock()
		defer mu.Unlock()
		var missing []int64
		for o := int64(0); o < 45; o++ {
			if !handled[o] {
				missing = append(missing, o)
			}
		}
		t.Fatalf("records handled by neither member: %v", missing)
	}
}

// TestAnAbortedTransactionsRecordsAreNotHandled: a transactional producer
// (another service writing a handler's topic) commits a transaction,
// aborts one, and commits another. The aborted records never happened, to
// that producer and to Kafka's read_committed consumers; eventfn read
// uncommitted records, Kafka's default, and handled them. Only the
// committed ones are handled now, and the group's commit still reaches the
// partition's end, past both markers.
func TestAnAbortedTransactionsRecordsAreNotHandled(t *testing.T) {
	t.Parallel()
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	group := testenv.UniqueName("aborted-")
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic),
		kgo.TransactionalID(testenv.UniqueName("txn-")), kgo.UnknownTopicRetries(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	transaction := func(value string, end kgo.TransactionEndTry) {
		t.Helper()
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			r := &kgo.Record{Key: []byte("k" + strconv.Itoa(i)), Value: []byte(value)}
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		if err := cl.EndTransaction(ctx, end); err != nil {
			t.Fatal(err)
		}
	}
	transaction("committed-1", kgo.TryCommit)
	transaction("aborted", kgo.TryAbort)
	transaction("committed-2", kgo.TryCommit) // offsets 0–2, 3; 4–6, 7; 8–10, 11
	var mu sync.Mutex
	handled := map[string]int{}
	sub, err := dispatch.NewSubscriber(dispatch.Config{
		Brokers: addrs, Group: group, Unmarshal: unmarshal,
		CommitInterval: 20 * time.Millisecond, DrainTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	runRouter(t, topic, sub, func(msg *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		handled[string(msg.Payload)]++
		return nil
	})
	adm := admin(t, addrs)
	if !waitUntil(30*time.Second, func() bool {
		c, err := adm.FetchOffsets(ctx, group)
		o, ok := c.Lookup(topic, 0)
		return err == nil && ok && o.At == 12
	}) {
		c, err := adm.FetchOffsets(ctx, group)
		o, _ := c.Lookup(topic, 0)
		t.Fatalf("the group's commit did not reach the partition's end (12) within 30s: %d (%v)", o.At, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if handled["committed-1"] != 3 || handled["committed-2"] != 3 || handled["aborted"] != 0 {
		t.Errorf("handled %v, want 3 of each committed transaction and none of the aborted one", handled)
	}
}

// recordOffset is the offset of the record msg was made of (see unmarshal).
func recordOffset(t *testing.T, msg *message.Message) int64 {
	t.Helper()
	_, offset, _ := strings.Cut(msg.UUID, "/")
	o, err := strconv.ParseInt(offset, 10, 64)
	if err != nil {
		t.Errorf("message id %q: %v", msg.UUID, err)
	}
	return o
}

// deleteRecords deletes the records of partition 0 of topic before offset
// before, as retention would.
func deleteRecords(t *testing.T, addrs []string, topic string, before int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var to kadm.Offsets
	to.AddOffset(topic, 0, before, -1)
	resp, err := admin(t, addrs).DeleteRecords(ctx, to)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("delete the records of %s before %d: %v", topic, before, err)
	}
}
