package dispatch

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

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

// Unfinished reports how many records of the partitions this subscriber
// dispatches are not handled yet: Lag, less the records that finished out of
// order behind an unfinished one. A key being retried counts itself and what
// waits behind it on that key, not the other keys that went past it.
func (s *Subscriber) Unfinished() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for _, p := range s.parts {
		n += max(p.highWatermark-p.next-int64(len(p.done)), 0)
	}
	return n
}

// endOffsetsLoop asks for the ends of topic's partitions every
// EndOffsetsInterval and keeps them as the high watermarks Lag counts from.
// The fetches report ends too, but only as fresh as the fetch: while
// MaxBuffered events wait, fetching pauses, and a backlog in Kafka beyond the
// last fetch would not be counted. One small request per interval.
func (s *Subscriber) endOffsetsLoop(topic string) {
	defer close(s.endsDone)
	ctx, cancel := s.untilClosing()
	defer cancel()
	tick := time.NewTicker(s.cfg.EndOffsetsInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		assigned := len(s.parts) > 0
		s.mu.Unlock()
		if !assigned {
			// A replica without partitions has no lag to count: a request
			// per handler per second saved, with many replicas.
			continue
		}
		askCtx, done := context.WithTimeout(ctx, s.cfg.EndOffsetsInterval)
		ends, err := kadm.NewClient(s.currentClient()).ListEndOffsets(askCtx, topic)
		done()
		if err != nil {
			// A broker that is away shows in the fetches' errors; the ends
			// are asked for again on the next tick.
			continue
		}
		s.mu.Lock()
		ends.Each(func(o kadm.ListedOffset) {
			if o.Err != nil {
				return
			}
			if p := s.parts[topicPartition{o.Topic, o.Partition}]; p != nil && o.Offset > p.highWatermark {
				p.highWatermark = o.Offset
			}
		})
		s.mu.Unlock()
	}
}
