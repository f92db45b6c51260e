package dispatch

import (
	"github.com/twmb/franz-go/pkg/kgo"
)

// Records that Kafka deletes (a topic's retention.ms or retention.bytes,
// kafka-delete-records) before a handler's group fetched them are lost to
// the handler: nothing can bring them back, but nothing may pass over them
// silently either. The group's commit, or the offset a member fetched up
// to, is where it expects the next record; when the first record a fetch
// brings lies past that and the log now starts past it too, the records
// between were deleted unread (a gap the log start does not explain, a
// compacted topic's, is no loss). franz-go itself goes on at the log start
// (its reset for a commit below it); noteDeleted logs an error, tells
// Config.Deleted, and moves the group's commit past the gap as soon as what
// came before it is finished, so that the next owner of the partition does
// not report the same records again. Nothing is asked of the brokers for
// it: a list of the partitions' starts when they were assigned, as first
// written, held every assignment for 50 s while one broker did not answer.
//
// Transaction markers take offsets too. The subscriber asks for them
// (kgo.KeepControlRecords) and counts them finished at once, so that a
// commit moves past a transaction's marker, as the Java consumer's does:
// without that, a quiet partition of a transactional producer kept a lag of
// 1, and once retention deleted its last segment the marker was reported
// as a lost record.

// noteCommitted remembers, for noteDeleted, the offsets of the group's
// commits on the partitions franz-go is about to fetch (AdjustFetchOffsetsFn).
func (s *Subscriber) noteCommitted(offsets map[string]map[int32]kgo.Offset) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, ps := range offsets {
		for p, o := range ps {
			if at := o.EpochOffset().Offset; at >= 0 {
				s.expected[topicPartition{topic, p}] = at
			}
		}
	}
}

// noteDeleted reports the records each fetched partition passed over
// because the log start overtook them, and remembers the offset this
// member expects next of every partition fetched.
func (s *Subscriber) noteDeleted(fetches kgo.Fetches) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		// A fetch may bring records and an error (a batch it could not
		// read after good ones): the records are handed out all the same,
		// so they move expected too. Left behind, a later gap was keyed
		// before them, and the commit jumped past them unfinished.
		if len(fp.Records) == 0 {
			return
		}
		tp := topicPartition{fp.Topic, fp.Partition}
		if !s.owned[tp] {
			return
		}
		first := fp.Records[0].Offset
		want, known := s.expected[tp]
		switch {
		case !known:
		case first > want && fp.LogStartOffset > want:
			to := min(first, fp.LogStartOffset)
			s.reportDeleted(fp.Topic, fp.Partition, want, to)
			s.skipDeleted(tp, want, to)
		case first < want:
			// franz-go read the partition again from before where this
			// member was: the broker lost records (an unclean leader
			// election), and the records produced since took their
			// offsets. The inbox absorbs those handled before.
			s.cfg.Logger.Warn("kafka lost records this group had consumed (the partition ended before the group's offset: an unclean leader election?); reading it again from an earlier offset, so that none produced since is skipped",
				"group", s.cfg.Group, "topic", fp.Topic, "partition", fp.Partition, "expected", want, "from_offset", first)
		}
		s.expected[tp] = fp.Records[len(fp.Records)-1].Offset + 1
	})
}

// skipDeleted lets the partition's commit pass the deleted offsets from up
// to to once everything before them is finished. With no state for the
// partition yet (its first fetch since it came to this member), enqueue
// commits the first record's offset at once. Called with mu held.
func (s *Subscriber) skipDeleted(tp topicPartition, from, to int64) {
	p := s.parts[tp]
	switch {
	case p == nil:
	case len(p.offsets) == 0:
		p.next = max(p.next, to)
	default:
		if p.gaps == nil {
			p.gaps = map[int64]int64{}
		}
		p.gaps[from] = to
	}
}

// reportDeleted logs and tells Config.Deleted that offsets from up to to of
// a partition were deleted before this group fetched them. Called with mu
// held: Deleted must not block.
func (s *Subscriber) reportDeleted(topic string, partition int32, from, to int64) {
	s.cfg.Logger.Error("kafka deleted records before this handler's group consumed them (the topic's retention, or kafka-delete-records); they are lost to the handler, which goes on at the partition's log start",
		"group", s.cfg.Group, "topic", topic, "partition", partition, "from_offset", from, "to_offset", to-1, "records", to-from)
	if s.cfg.Deleted != nil {
		s.cfg.Deleted(topic, partition, from, to)
	}
}

// forgetExpected drops what noteDeleted expects of partitions this member
// no longer owns. Called with mu held.
func (s *Subscriber) forgetExpected(topic string, partitions []int32) {
	for _, p := range partitions {
		delete(s.expected, topicPartition{topic, p})
	}
}
