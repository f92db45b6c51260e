package dispatch

import (
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestAFetchWithRecordsAndAnErrorMovesWhereTheNextRecordIsExpected: franz-go
// hands a partition records and an error when it cannot read a batch after
// good ones; the records are handed out all the same. They moved nothing
// in noteDeleted, so a later gap was keyed before them, and the commit
// jumped past them unfinished (a fresh-eyed attack, with a fetch built by
// hand: next 20 past the unfinished record 2).
func TestAFetchWithRecordsAndAnErrorMovesWhereTheNextRecordIsExpected(t *testing.T) {
	s, err := NewSubscriber(Config{Brokers: []string{"127.0.0.1:1"}, Group: "g", Unmarshal: func(*kgo.Record) *message.Message { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	tp := topicPartition{"orders", 0}
	s.owned[tp] = true
	s.noteCommitted(map[string]map[int32]kgo.Offset{"orders": {0: kgo.NewOffset().At(2)}})
	fetch := func(ferr error, offsets ...int64) kgo.Fetches {
		fp := kgo.FetchPartition{Partition: 0, Err: ferr}
		for _, o := range offsets {
			fp.Records = append(fp.Records, &kgo.Record{Topic: "orders", Offset: o})
		}
		return kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "orders", Partitions: []kgo.FetchPartition{fp}}}}}
	}
	s.noteDeleted(fetch(errors.New("a batch after offset 3 could not be read"), 2, 3))
	if got := s.expected[tp]; got != 4 {
		t.Errorf("after records 2–3 came with an error, the next record is expected at %d, want 4", got)
	}
}
