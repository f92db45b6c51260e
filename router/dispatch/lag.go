package dispatch

import "github.com/twmb/franz-go/pkg/kgo"

// noteHighWatermarks keeps the newest high watermark each fetch reports for
// the partitions being dispatched; it runs after the fetch's records were
// enqueued, so a partition's first fetch counts too.
func (s *Subscriber) noteHighWatermarks(fetches kgo.Fetches) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if fp.Err != nil {
			return
		}
		if p := s.parts[topicPartition{fp.Topic, fp.Partition}]; p != nil && fp.HighWatermark > p.highWatermark {
			p.highWatermark = fp.HighWatermark
		}
	})
}

// Lag reports, per partition this subscriber dispatches, how many records
// are not finished yet: the high watermark of the latest fetch minus the
// offset after the last event finished in order. Records fetched and waiting,
// in flight, being retried or not fetched yet all count; a partition taken
// away by a rebalance is no longer reported.
func (s *Subscriber) Lag() map[int32]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int32]int64, len(s.parts))
	for tp, p := range s.parts {
		out[tp.partition] = max(p.highWatermark-p.next, 0)
	}
	return out
}
