package dispatch

import (
	"context"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Records that Kafka deletes (a topic's retention.ms or retention.bytes,
// kafka-delete-records) before a handler's group fetched them are lost to
// the handler: nothing can bring them back, but nothing may pass over them
// silently either. A group finds out in two places. When it is given a
// partition, its commit may point below the log start (it was stopped
// longer than the retention, or too far behind): resumeInLog. While it
// consumes, the log start may overtake its fetches (a backlog older than
// the retention): noteDeleted. Both log an error and tell Config.Deleted;
// the group goes on at the log start.

// resumeInLog places each partition whose commit is no longer in the log
// at the log start: records were deleted past the commit (reported), or
// the broker lost records the group had consumed (an unclean leader
// election). In the second case the records produced since took those
// offsets again, and how many there are nobody can tell: the partition is
// read again from its start, and the inbox makes the records handled before
// duplicates. Called by franz-go with the group's offsets, before it
// fetches; the offsets of partitions with a commit are remembered for
// noteDeleted. A failure to list the log leaves the offsets as they are:
// franz-go's own reset then resumes within the log the same way, only
// without the report.
func (s *Subscriber) resumeInLog(ctx context.Context, offsets map[string]map[int32]kgo.Offset) map[string]map[int32]kgo.Offset {
	var topics []string
	for topic, ps := range offsets {
		for _, o := range ps {
			if o.EpochOffset().Offset >= 0 {
				topics = append(topics, topic)
				break
			}
		}
	}
	if len(topics) == 0 {
		return offsets
	}
	adm := kadm.NewClient(s.currentClient())
	starts, err := adm.ListStartOffsets(ctx, topics...)
	if err == nil {
		err = starts.Error()
	}
	var ends kadm.ListedOffsets
	if err == nil {
		ends, err = adm.ListEndOffsets(ctx, topics...)
	}
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		s.cfg.Logger.Warn("could not list where the log of the partitions given to this member starts; commits no longer in the log resume at its start unreported",
			"group", s.cfg.Group, "topics", topics, "err", err)
		return offsets
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, ps := range offsets {
		for p, o := range ps {
			committed := o.EpochOffset().Offset
			start, okStart := starts.Lookup(topic, p)
			end, okEnd := ends.Lookup(topic, p)
			if committed < 0 || !okStart || !okEnd {
				continue
			}
			at := committed
			switch {
			case committed < start.Offset:
				at = start.Offset
				s.reportDeleted(topic, p, committed, start.Offset)
			case committed > end.Offset:
				at = start.Offset
				s.cfg.Logger.Warn("kafka lost records this group had consumed (the partition ends before the group's commit: an unclean leader election?); reading the partition again from its start, so that none produced since is skipped (the inbox absorbs those handled before)",
					"group", s.cfg.Group, "topic", topic, "partition", p, "committed", committed, "end", end.Offset, "start", start.Offset)
			}
			if at != committed {
				// In the log, the commit stays as it is, with its leader
				// epoch, which franz-go checks for a log that diverged.
				ps[p] = kgo.NewOffset().At(at)
			}
			s.expected[topicPartition{topic, p}] = at
		}
	}
	return offsets
}

// noteDeleted reports the records a fetch passed over because the log start
// overtook them: a partition's first record fetched lies past the offset
// this member expected next, and the log now starts past it too (a gap
// that the log start does not explain, a compacted topic's, is no loss).
// It remembers the offset expected next of every partition fetched.
func (s *Subscriber) noteDeleted(fetches kgo.Fetches) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fetches.EachPartition(func(fp kgo.FetchTopicPartition) {
		if fp.Err != nil || len(fp.Records) == 0 {
			return
		}
		tp := topicPartition{fp.Topic, fp.Partition}
		if !s.owned[tp] {
			return
		}
		first := fp.Records[0].Offset
		if want, ok := s.expected[tp]; ok && first > want && fp.LogStartOffset > want {
			s.reportDeleted(fp.Topic, fp.Partition, want, min(first, fp.LogStartOffset))
		}
		s.expected[tp] = fp.Records[len(fp.Records)-1].Offset + 1
	})
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
