// Package dispatch is a Watermill subscriber for Kafka that runs the events of
// one partition in parallel by key: events of different keys are handed out at
// once, up to MaxInFlight, while the events of one key go out strictly one
// after another (the next only when the one before was acknowledged). Offsets
// are committed only up to the lowest event not yet finished, so a crash
// redelivers every unfinished event and nothing after it is skipped.
//
// A nacked event is handed out again after NackResendSleep and holds back only
// its own key. Close stops fetching, lets the calls in flight finish (up to
// DrainTimeout) without cancelling their contexts, commits, and only then
// closes the message channel and leaves the group.
//
// Watermill's own Kafka subscriber hands out one event per partition at a time
// (Watermill issue #374), so a handler's concurrency could not exceed the
// partition count; this subscriber is why it can.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Config configures a Subscriber.
type Config struct {
	// Brokers are the bootstrap addresses.
	Brokers []string
	// ClientID names the client to the brokers.
	ClientID string
	// Group is the consumer group; a new group starts at the oldest record
	// unless StartAtEnd is set.
	Group string
	// StartAtEnd starts a group that has no committed offset at the end of
	// each partition, skipping the records produced before it first joined.
	// It says nothing of a committed offset that is no longer in the log:
	// the group resumes at the log start, and Deleted is told of the records
	// it missed (see noteDeleted).
	StartAtEnd bool
	// Deleted, if set, is told of records Kafka deleted (retention,
	// DeleteRecords) before this group fetched them: offsets from up to
	// (not including) to of the partition are lost to the handler. The
	// subscriber also logs them as an error.
	Deleted func(topic string, partition int32, from, to int64)
	// NewGroupSettle is how long a member that placed partitions at their
	// end holds its periodic commits back (see addedPartitions); 5 s when
	// zero.
	NewGroupSettle time.Duration
	// Unmarshal maps a record to a message. It cannot fail: a record the
	// handler cannot use is the handler's to dead-letter.
	Unmarshal func(*kgo.Record) *message.Message
	// MaxInFlight caps the events handed out and not yet acknowledged.
	MaxInFlight int
	// MaxBuffered caps the events fetched and not yet finished, in flight or
	// waiting behind their key; fetching pauses at the cap.
	MaxBuffered int
	// NackResendSleep is how long a nacked event waits before it goes out again.
	NackResendSleep time.Duration
	// CommitInterval is how often finished offsets are committed.
	CommitInterval time.Duration
	// EndOffsetsInterval is how often the partitions' ends are asked for, so
	// that Lag and Unfinished count what the fetches have not reached: with
	// MaxBuffered events waiting, fetching pauses, and the ends the fetches
	// report fall behind.
	EndOffsetsInterval time.Duration
	// DrainTimeout bounds how long Close and a rebalance wait for calls in flight.
	DrainTimeout time.Duration
	// Logger receives state changes (never one line per event).
	Logger *slog.Logger
	// Opts are extra franz-go options (security settings, for example).
	Opts []kgo.Opt
}

func (c *Config) setDefaults() {
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 16
	}
	if c.MaxBuffered < c.MaxInFlight {
		c.MaxBuffered = max(4*c.MaxInFlight, 1024)
	}
	if c.NackResendSleep <= 0 {
		c.NackResendSleep = 100 * time.Millisecond
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = 200 * time.Millisecond
	}
	if c.EndOffsetsInterval <= 0 {
		c.EndOffsetsInterval = time.Second
	}
	if c.NewGroupSettle <= 0 {
		c.NewGroupSettle = newGroupSettle
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("dispatch: no brokers")
	case c.Group == "":
		return errors.New("dispatch: no consumer group")
	case c.Unmarshal == nil:
		return errors.New("dispatch: no Unmarshal")
	}
	return nil
}

type topicPartition struct {
	topic     string
	partition int32
}

// partition is the dispatch state of one assigned partition.
type partition struct {
	// offsets are fetched offsets not yet known finished, ascending; done
	// marks those finished out of order.
	offsets []int64
	done    map[int64]bool
	// next is the offset to commit: everything before it is finished.
	next, committed int64
	// gaps maps the first offset of a run Kafka deleted before it was
	// fetched to the offset after it: next jumps over it (see skipDeleted).
	gaps map[int64]int64
	// highWatermark is the partition's end as of the latest fetch (see Lag).
	highWatermark int64
	// lanes holds, per key, the records waiting; the head is in flight.
	lanes map[string][]*kgo.Record
	// revoked is closed when the partition is taken away: records not yet
	// handed out are dropped, and nacked ones are not sent again.
	revoked chan struct{}
	active  sync.WaitGroup
	// ctx is the context of the partition's deliveries: it carries revoked
	// and the subscriber's closing, for Pause.
	ctx context.Context
}

// releaseKey is the context key of a delivery's release.
type releaseKey struct{}

// release is what ends a delivery's waits early: its partition revoked, its
// subscriber closing.
type release struct{ revoked, closing <-chan struct{} }

// Pause waits d and reports whether it passed. It ends early, with false,
// when ctx ends and, for the context of a delivery of this package's (or
// one derived from it), when the delivery's partition is revoked or its
// subscriber begins to close: a handler's retries and waits then stop, and
// the event is left to the partition's next owner, or to the restart,
// rather than tried on by a member that no longer owns it.
func Pause(ctx context.Context, d time.Duration) bool {
	rel, _ := ctx.Value(releaseKey{}).(release)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-rel.revoked:
	case <-rel.closing:
	}
	return false
}

// Subscriber implements message.Subscriber for one topic.
type Subscriber struct {
	cfg Config

	mu sync.Mutex
	// client is the group's franz-go client. The poll goroutine replaces it
	// when the topic was deleted (see followRecreated); others read it
	// under mu.
	client *kgo.Client
	topic  string
	parts  map[topicPartition]*partition
	// owned are the partitions the group gave this member and has not
	// taken back (see enqueue).
	owned map[topicPartition]bool
	// commitsHeldUntil is when the commit loop may commit again after
	// this member placed partitions at their end (see addedPartitions);
	// a revoke and Close commit regardless.
	commitsHeldUntil time.Time
	// firstPartitions is, per topic, how many partitions it had when this
	// subscriber placed it for a new group, or -1 when the group had
	// commits on it already (see addedPartitions).
	firstPartitions map[string]int32
	// expected is, per partition owned, the offset this member fetches
	// next, as far as it knows (see noteDeleted).
	expected map[topicPartition]int64
	buffered int
	space    chan struct{} // signalled when buffered drops below the cap
	out      chan *message.Message

	slots      chan struct{}
	closing    chan struct{}
	closeOnce  sync.Once
	pollDone   chan struct{}
	commitDone chan struct{}
	endsDone   chan struct{}
	msgCtx     context.Context
	cancelMsgs context.CancelFunc
	delivering sync.WaitGroup
	errors     *errorReport
}

// NewSubscriber validates cfg; the connection is made by Subscribe.
func NewSubscriber(cfg Config) (*Subscriber, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	msgCtx, cancel := context.WithCancel(context.Background())
	return &Subscriber{
		cfg:        cfg,
		parts:      map[topicPartition]*partition{},
		owned:      map[topicPartition]bool{},
		expected:   map[topicPartition]int64{},
		space:      make(chan struct{}, 1),
		slots:      make(chan struct{}, cfg.MaxInFlight),
		closing:    make(chan struct{}),
		pollDone:   make(chan struct{}),
		commitDone: make(chan struct{}),
		endsDone:   make(chan struct{}),
		msgCtx:     msgCtx,
		cancelMsgs: cancel,
		errors:     &errorReport{logger: cfg.Logger, every: 30 * time.Second},
	}, nil
}

// Subscribe joins the group on topic and returns the channel of its events.
// A Subscriber serves one Subscribe call.
func (s *Subscriber) Subscribe(_ context.Context, topic string) (<-chan *message.Message, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.client != nil {
		return nil, errors.New("dispatch: a Subscriber serves one topic; make another for " + topic)
	}
	select {
	case <-s.closing:
		return nil, errors.New("dispatch: subscriber closed")
	default:
	}
	s.topic = topic
	client, err := s.newClient(false)
	if err != nil {
		return nil, err
	}
	s.client = client
	s.out = make(chan *message.Message)
	go s.poll()
	go s.commitLoop()
	go s.endOffsetsLoop(topic)
	return s.out, nil
}

// newClient makes the group's client. afterRecreation starts every
// partition without a committed offset at its start, whatever StartAtEnd
// says: the topic was deleted and created again while the group consumed
// it, so all of the new topic came after the group first joined.
func (s *Subscriber) newClient(afterRecreation bool) (*kgo.Client, error) {
	start := s.startOffset()
	if afterRecreation {
		start = kgo.NewOffset().AtStart()
	}
	opts := append([]kgo.Opt{
		kgo.SeedBrokers(s.cfg.Brokers...),
		kgo.ClientID(s.cfg.ClientID),
		kgo.ConsumerGroup(s.cfg.Group),
		kgo.ConsumeTopics(s.topic),
		kgo.DisableAutoCommit(),
		// Only where a partition without a commit starts. Where a committed
		// offset that is no longer in the log resumes is franz-go's default
		// (ConsumeResetOffset): at the log start when records were deleted,
		// a minute back when the broker lost some. Set to the start offset,
		// as before, a group that starts at the end skipped every record
		// still in the log past a commit that retention had overtaken.
		kgo.ConsumeStartOffset(start),
		// Transaction markers are counted finished at once (see enqueue).
		kgo.KeepControlRecords(),
		// An aborted transaction's records never happened: read
		// uncommitted (Kafka's default), another service's aborted events
		// were handled. eventfn's own relay writes no transactions, so its
		// records are readable as soon as they are acknowledged.
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.FetchMaxWait(100 * time.Millisecond),
		// A member that died (kill -9, a lost host) is noticed after the
		// session timeout, and its partitions wait that long for a new owner;
		// franz-go's default is 45 s. A heartbeat every second keeps a live
		// member well inside 10 s.
		kgo.SessionTimeout(10 * time.Second),
		kgo.HeartbeatInterval(time.Second),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
		// The group leader sees partitions added to the topic when it
		// refreshes metadata; at franz-go's default of five minutes their
		// records waited that long.
		kgo.MetadataMaxAge(metadataMaxAge),
	}, s.cfg.Opts...)
	opts = append(opts, kgo.AdjustFetchOffsetsFn(func(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
		s.noteCommitted(offsets)
		if s.cfg.StartAtEnd && !afterRecreation {
			return s.startAtEnd(ctx, offsets)
		}
		return offsets, nil
	}))
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka consumer for group %s on %s: %w", s.cfg.Group, s.topic, err)
	}
	return client, nil
}

// newGroupSettle is Config.NewGroupSettle's default: the members of one
// generation look at the group's commits within milliseconds of each other.
const newGroupSettle = 5 * time.Second

// metadataMaxAge is how often the group's client refreshes the topic's
// metadata, and so how soon partitions added to it are consumed.
const metadataMaxAge = 10 * time.Second

// currentClient is the group's client now (see client).
func (s *Subscriber) currentClient() *kgo.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.client
}

// startOffset is where a partition without a committed offset starts.
func (s *Subscriber) startOffset() kgo.Offset {
	if s.cfg.StartAtEnd {
		return kgo.NewOffset().AtEnd()
	}
	return kgo.NewOffset().AtStart()
}

// untilClosing returns a context that ends when the subscriber starts
// closing, or when cancel is called.
func (s *Subscriber) untilClosing() (ctx context.Context, cancel context.CancelFunc) {
	ctx, cancel = context.WithCancel(context.Background())
	go func() {
		select {
		case <-s.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

func (s *Subscriber) poll() {
	defer close(s.pollDone)
	ctx, cancel := s.untilClosing()
	defer cancel()
	var backoff time.Duration
	for {
		free := s.waitSpace()
		if free == 0 {
			return
		}
		fetches := s.client.PollRecords(ctx, free)
		if fetches.IsClientClosed() || ctx.Err() != nil {
			return
		}
		failed := false
		recreated := map[string]bool{}
		fetches.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.Canceled) {
				failed = true
				s.errors.report(fmt.Errorf("fetch %s[%d]: %w", topic, p, err))
			}
			if errors.Is(err, kerr.UnknownTopicID) {
				recreated[topic] = true
			}
		})
		for topic := range recreated {
			s.followRecreated(ctx, topic)
		}
		if fetches.NumRecords() > 0 {
			s.errors.recovered()
		}
		s.noteDeleted(fetches)
		fetches.EachRecord(s.enqueue)
		s.noteHighWatermarks(fetches)
		backoff = nextFetchBackoff(backoff, failed && fetches.NumRecords() == 0)
		// ctx carries no partition's release: Pause is a sleep that ends
		// with ctx.
		if backoff > 0 && !Pause(ctx, backoff) {
			return
		}
	}
}

// followRecreated consumes topic anew after it was deleted (and perhaps
// created again). franz-go keeps consuming the topic id it first met and
// fails every fetch with UNKNOWN_TOPIC_ID, also once the topic exists again
// (it surfaces that only after several in a row: a topic just created
// answers so for a moment), and the handler's events stopped for good
// until a restart. The old topic's partitions are let go without a commit
// (their offsets would skip records of the new topic's partitions), and
// the client is replaced, as a restart would: this member leaves the group
// and joins it again with a client that knows only the new topic, and
// starts it from its start (Kafka dropped the group's offsets with the old
// topic). Purging the topic from the live client and adding it back, which
// franz-go also offers, let a fetch of the old topic that was finishing
// write its offset over the new topic's start now and then: a fresh-eyed
// attack saw 13 records of a new partition skipped, silently, in 2 of 52
// runs. Runs on the poll goroutine, the only one that replaces the client.
func (s *Subscriber) followRecreated(ctx context.Context, topic string) {
	s.mu.Lock()
	old := map[string][]int32{}
	for tp := range s.parts {
		if tp.topic == topic {
			old[topic] = append(old[topic], tp.partition)
		}
	}
	// The new topic's offsets start again; where the old one's were says
	// nothing of them (see noteDeleted).
	for tp := range s.expected {
		if tp.topic == topic {
			delete(s.expected, tp)
		}
	}
	s.mu.Unlock()
	s.release(ctx, old, false)
	// Leaving the group calls revoked, which finds nothing left of the
	// topic to commit.
	s.client.Close()
	client, err := s.newClient(true)
	if err != nil {
		// The same options made the first client: this does not happen.
		s.cfg.Logger.Error("kafka topic was deleted; its consumer could not be made again, restart the process", "topic", topic, "err", err)
		return
	}
	s.mu.Lock()
	s.client = client
	s.mu.Unlock()
	s.cfg.Logger.Warn("kafka topic was deleted (and perhaps created again); consuming it anew from its start once it exists", "topic", topic)
}

// A fetch that fails at once, every time, was polled again at once: with
// a topic deleted (or deleted and created again, which franz-go will not
// follow by itself) that was some 14,000 failed polls a second and half a
// core. The poll after a failed fetch that gave no records waits, from
// minFetchBackoff doubling up to maxFetchBackoff.
const (
	minFetchBackoff = 50 * time.Millisecond
	maxFetchBackoff = time.Second
)

// nextFetchBackoff is the wait before the next poll after one whose fetch
// failed with no records (failed) or did not (0: poll at once).
func nextFetchBackoff(last time.Duration, failed bool) time.Duration {
	if !failed {
		return 0
	}
	return min(max(2*last, minFetchBackoff), maxFetchBackoff)
}

// waitSpace blocks until fewer than MaxBuffered events are buffered and
// returns how many more may be fetched; 0 means the subscriber is closing.
func (s *Subscriber) waitSpace() int {
	for {
		s.mu.Lock()
		free := s.cfg.MaxBuffered - s.buffered
		s.mu.Unlock()
		if free > 0 {
			return free
		}
		select {
		case <-s.space:
		case <-s.closing:
			return 0
		}
	}
}

func (s *Subscriber) enqueue(r *kgo.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tp := topicPartition{r.Topic, r.Partition}
	if !s.owned[tp] {
		// Taken away between the poll that fetched r and now: the next
		// owner fetches it from the committed offset. Enqueued, it made
		// state for a partition this member no longer owns, which nothing
		// released: its events ran here beside the new owner, and its
		// unfinished count grew without end, holding the ingress back.
		return
	}
	p := s.parts[tp]
	if p == nil {
		// The first record fetched since the partition came to this
		// member: everything before it is behind the group (finished, or
		// deleted and reported), so the commit loop commits its offset at
		// once. Left uncommitted until the record finished, a group with
		// no commit yet, or one whose commit was past the partition's end,
		// skipped the record silently when it was restarted while the
		// record was stuck (a fresh-eyed attack: 20 records handled by
		// neither member).
		p = s.newPartition(r.Offset, -1)
		s.parts[tp] = p
	}
	p.offsets = append(p.offsets, r.Offset)
	if r.Attrs.IsControl() {
		// A transaction's commit or abort marker: no event, finished now.
		p.done[r.Offset] = true
		p.advance()
		return
	}
	s.buffered++
	key := string(r.Key)
	p.lanes[key] = append(p.lanes[key], r)
	if len(p.lanes[key]) == 1 {
		s.start(p, r)
	}
}

// advance moves next past the offsets finished in order, and past the
// deleted ones reported after them (see skipDeleted).
func (p *partition) advance() {
	for len(p.offsets) > 0 && p.done[p.offsets[0]] {
		delete(p.done, p.offsets[0])
		p.next = p.offsets[0] + 1
		p.offsets = p.offsets[1:]
		if to, ok := p.gaps[p.next]; ok {
			delete(p.gaps, p.next)
			p.next = to
		}
	}
}

// newPartition is the state of a partition whose offsets before next are
// finished, committed up to committed.
func (s *Subscriber) newPartition(next, committed int64) *partition {
	p := &partition{done: map[int64]bool{}, lanes: map[string][]*kgo.Record{}, next: next, committed: committed, revoked: make(chan struct{})}
	p.ctx = context.WithValue(s.msgCtx, releaseKey{}, release{revoked: p.revoked, closing: s.closing})
	return p
}

// startAtEnd places a group that starts at the end (StartAtEnd) at the
// partitions' ends as they are now, and commits that: a partition
// assigned with no committed offset is given its end offset, exactly, and
// the commit loop commits it. Before, nothing was committed for a
// partition until a record of it finished, so when it moved to another
// member before that (a replica restarted, replicas joining at start-up)
// the new owner reset to the end again and skipped every record produced
// meanwhile, with no error and a lag of 0. Called by franz-go after it
// fetched the group's offsets and before it fetches records.
//
// A partition added to the topic after the group started (kafka-topics
// --alter --partitions) holds only records produced since, so it starts at
// its beginning (see addedPartitions): at its end, the records produced to
// it before the group noticed it were skipped, with no error and a lag of 0.
func (s *Subscriber) startAtEnd(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	// The topics to list: those with a partition to reset, and, once, every
	// topic, to learn whether the group had commits on it (see
	// addedPartitions).
	var topics []string
	s.mu.Lock()
	for topic, ps := range offsets {
		if _, seen := s.firstPartitions[topic]; !seen {
			topics = append(topics, topic)
			continue
		}
		for _, o := range ps {
			if o.EpochOffset().Offset < 0 { // no committed offset: the reset
				topics = append(topics, topic)
				break
			}
		}
	}
	s.mu.Unlock()
	if len(topics) == 0 {
		return offsets, nil
	}
	adm := kadm.NewClient(s.currentClient())
	ends, err := adm.ListEndOffsets(ctx, topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		// franz-go joins again and asks once more; meanwhile nothing is
		// fetched from partitions whose start is not known.
		return nil, fmt.Errorf("list the end offsets where group %s starts: %w", s.cfg.Group, err)
	}
	fromStart, err := s.addedPartitions(ctx, adm, offsets, topics, ends)
	if err != nil {
		return nil, err
	}
	var starts kadm.ListedOffsets
	if len(fromStart) > 0 {
		startTopics := map[string]bool{}
		for tp := range fromStart {
			startTopics[tp.topic] = true
		}
		starts, err = adm.ListStartOffsets(ctx, slices.Collect(maps.Keys(startTopics))...)
		if err == nil {
			err = starts.Error()
		}
		if err != nil {
			return nil, fmt.Errorf("list the start offsets of partitions added to %v, where group %s starts: %w", slices.Collect(maps.Keys(startTopics)), s.cfg.Group, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, ps := range offsets {
		for part, o := range ps {
			if o.EpochOffset().Offset >= 0 {
				continue
			}
			tp := topicPartition{topic, part}
			from, ok := ends.Lookup(topic, part)
			where := "end"
			if fromStart[tp] {
				from, ok = starts.Lookup(topic, part)
				where = "start"
			}
			if !ok {
				return nil, fmt.Errorf("group %s starts at the %s of %s[%d], which Kafka did not list", s.cfg.Group, where, topic, part)
			}
			if where == "end" {
				s.commitsHeldUntil = time.Now().Add(s.cfg.NewGroupSettle)
			}
			if where == "start" {
				s.cfg.Logger.Info("a partition with no committed offset in a group that has some was added to the topic after the group started: it is read from its start", "topic", topic, "partition", part, "group", s.cfg.Group, "offset", from.Offset)
			}
			ps[part] = kgo.NewOffset().At(from.Offset)
			if s.parts[tp] == nil {
				s.parts[tp] = s.newPartition(from.Offset, -1)
			}
		}
	}
	return offsets, nil
}

// addedPartitions says which of the partitions in offsets with no committed
// offset were added to their topic after the group started, and so start at
// their beginning. When this subscriber first met the topic, the group had
// commits on it, or it had none (a new group, placed at the end). In the
// first case every partition without a commit was added since: a group
// commits where it starts, and a partition is committed before it moves to
// another member. In the second, those numbered past the partitions the
// topic had then were. The second rule catches what the first cannot:
// partitions added while no member ran, or given to a replica that started
// after they were added (all 20, and 10 of 20, records produced to them
// were skipped, with a lag of 0).
//
// Replicas of a new group that join in one generation (Kafka's
// group.initial.rebalance.delay.ms, 3 s by default, gathers them) each
// place their partitions at the end; one whose look at the group's commits
// came after another's first commit took its own partitions for added ones
// and read their history (90–150 old records of 240). So a member that
// places partitions at their end commits nothing, but on a revoke and at
// Close, for newGroupSettle: the others of its generation have looked by
// then. Left: a member of an established group that is new to it, and is
// given a partition whose placement commit was lost (its member died
// within newGroupSettle of a new group's first join), reads that
// partition's history; and partitions added within newGroupSettle of a
// new group's first join, before anything was committed, are placed at
// their end by a member new to the group.
func (s *Subscriber) addedPartitions(ctx context.Context, adm *kadm.Client, offsets map[string]map[int32]kgo.Offset, topics []string, ends kadm.ListedOffsets) (map[topicPartition]bool, error) {
	fromStart := map[topicPartition]bool{}
	// unsure holds, per topic met for the first time, its partitions with
	// no commit when none assigned here says whether the group has commits.
	unsure := map[string][]int32{}
	s.mu.Lock()
	if s.firstPartitions == nil {
		s.firstPartitions = map[string]int32{}
	}
	for _, topic := range topics {
		var reset []int32
		committed := false
		for part, o := range offsets[topic] {
			if o.EpochOffset().Offset >= 0 {
				committed = true
			} else {
				reset = append(reset, part)
			}
		}
		first, seen := s.firstPartitions[topic]
		switch {
		case seen && first < 0:
			// This member joined a group that had commits on the topic:
			// any partition without one was added since.
			for _, part := range reset {
				fromStart[topicPartition{topic, part}] = true
			}
		case seen:
			// This member placed the topic's first partitions for a new
			// group: one of them with no commit lost its placement commit
			// with a member that died, and starts at the end, where the
			// group started; only those past them were added.
			for _, part := range reset {
				if part >= first {
					fromStart[topicPartition{topic, part}] = true
				}
			}
		case committed:
			s.firstPartitions[topic] = -1
			for _, part := range reset {
				fromStart[topicPartition{topic, part}] = true
			}
		case len(reset) > 0:
			unsure[topic] = reset
		}
	}
	s.mu.Unlock()
	established := map[string]bool{}
	if len(unsure) > 0 {
		committed, err := adm.FetchOffsets(ctx, s.cfg.Group)
		if err == nil {
			err = committed.Error()
		}
		if err != nil {
			// franz-go joins again and asks once more.
			return nil, fmt.Errorf("fetch the committed offsets of group %s, to tell partitions added to %v from those it starts at the end of: %w", s.cfg.Group, slices.Collect(maps.Keys(unsure)), err)
		}
		for topic := range unsure {
			established[topic] = slices.ContainsFunc(slices.Collect(maps.Values(committed[topic])), func(o kadm.OffsetResponse) bool { return o.At >= 0 })
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, reset := range unsure {
		if established[topic] {
			s.firstPartitions[topic] = -1
			for _, part := range reset {
				fromStart[topicPartition{topic, part}] = true
			}
		} else {
			// A new group: its first partitions are those there now.
			s.firstPartitions[topic] = int32(len(ends[topic]))
		}
	}
	return fromStart, nil
}

// start hands r out in a goroutine of its own; the caller holds s.mu.
func (s *Subscriber) start(p *partition, r *kgo.Record) {
	p.active.Add(1)
	s.delivering.Add(1)
	go func() {
		defer s.delivering.Done()
		defer p.active.Done()
		finished := s.deliver(p, r)
		s.finish(p, r, finished)
	}()
}

// deliver sends r until it is acknowledged (true) or abandoned because the
// subscriber closes or the partition was revoked (false): an abandoned event
// is not committed, so the group delivers it again.
func (s *Subscriber) deliver(p *partition, r *kgo.Record) bool {
	select {
	case s.slots <- struct{}{}:
	case <-s.closing:
		return false
	case <-p.revoked:
		return false
	}
	defer func() { <-s.slots }()
	for {
		msg := s.cfg.Unmarshal(r)
		msg.SetContext(p.ctx)
		select {
		case s.out <- msg:
		case <-s.closing:
			return false
		case <-p.revoked:
			return false
		}
		select {
		case <-msg.Acked():
			return true
		case <-msg.Nacked():
		}
		t := time.NewTimer(s.cfg.NackResendSleep)
		select {
		case <-t.C:
		case <-s.closing:
			t.Stop()
			return false
		case <-p.revoked:
			t.Stop()
			return false
		}
	}
}

// finish records the outcome of r and starts the next event of its key.
func (s *Subscriber) finish(p *partition, r *kgo.Record, finished bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buffered--
	select {
	case s.space <- struct{}{}:
	default:
	}
	key := string(r.Key)
	lane := p.lanes[key]
	if !finished {
		// Drop the whole lane: what waits behind an abandoned event must not
		// overtake it. The group delivers all of it again.
		s.buffered -= len(lane) - 1
		delete(p.lanes, key)
		return
	}
	p.done[r.Offset] = true
	p.advance()
	lane = lane[1:]
	if len(lane) == 0 {
		delete(p.lanes, key)
		return
	}
	p.lanes[key] = lane
	select {
	case <-p.revoked:
		s.buffered -= len(lane)
		delete(p.lanes, key)
	case <-s.closing:
		s.buffered -= len(lane)
		delete(p.lanes, key)
	default:
		s.start(p, lane[0])
	}
}

func (s *Subscriber) commitLoop() {
	defer close(s.commitDone)
	t := time.NewTicker(s.cfg.CommitInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			s.mu.Lock()
			held := time.Now().Before(s.commitsHeldUntil)
			s.mu.Unlock()
			if !held {
				s.commit(context.Background(), nil)
			}
		case <-s.closing:
			return
		}
	}
}

// commit commits the finished offsets of the partitions in only (all when nil).
func (s *Subscriber) commit(ctx context.Context, only map[topicPartition]bool) {
	s.mu.Lock()
	offsets := map[string]map[int32]kgo.EpochOffset{}
	for tp, p := range s.parts {
		if (only != nil && !only[tp]) || p.next <= p.committed {
			continue
		}
		if offsets[tp.topic] == nil {
			offsets[tp.topic] = map[int32]kgo.EpochOffset{}
		}
		offsets[tp.topic][tp.partition] = kgo.EpochOffset{Epoch: -1, Offset: p.next}
	}
	s.mu.Unlock()
	if len(offsets) == 0 {
		return
	}
	var reqErr, partErr error
	s.currentClient().CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		reqErr = err
		if err != nil || resp == nil {
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if e := kerr.ErrorForCode(p.ErrorCode); e != nil {
					partErr = errors.Join(partErr, fmt.Errorf("%s[%d]: %w", t.Topic, p.Partition, e))
					delete(offsets[t.Topic], p.Partition)
				}
			}
		}
	})
	// Offsets that did not commit are committed again on the next tick; a
	// crash meanwhile only redelivers finished events, which the inbox absorbs.
	if reqErr != nil {
		if !errors.Is(reqErr, context.Canceled) {
			s.errors.report(fmt.Errorf("commit offsets of group %s: %w", s.cfg.Group, reqErr))
		}
		return
	}
	if partErr != nil {
		s.errors.report(fmt.Errorf("commit offsets of group %s: %w", s.cfg.Group, partErr))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, ps := range offsets {
		for part, eo := range ps {
			if p := s.parts[topicPartition{topic, part}]; p != nil && eo.Offset > p.committed {
				p.committed = eo.Offset
			}
		}
	}
}

// revoked is called by the group before partitions move to another member:
// their calls in flight finish (up to DrainTimeout), their offsets are
// committed, and their waiting events are dropped for the new owner.
// assigned is called when the group gives this member partitions, before
// any of them is fetched.
func (s *Subscriber) assigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for topic, ps := range assigned {
		for _, part := range ps {
			s.owned[topicPartition{topic, part}] = true
		}
	}
}

func (s *Subscriber) revoked(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
	s.release(ctx, revoked, true)
}

// lost is called when the group was lost outright: nothing can be committed.
func (s *Subscriber) lost(ctx context.Context, _ *kgo.Client, lost map[string][]int32) {
	s.release(ctx, lost, false)
}

func (s *Subscriber) release(ctx context.Context, tps map[string][]int32, commit bool) {
	s.mu.Lock()
	var gone []*partition
	only := map[topicPartition]bool{}
	for topic, ps := range tps {
		s.forgetExpected(topic, ps)
		for _, part := range ps {
			tp := topicPartition{topic, part}
			delete(s.owned, tp)
			if p := s.parts[tp]; p != nil {
				close(p.revoked)
				gone = append(gone, p)
				only[tp] = true
			}
		}
	}
	s.mu.Unlock()
	waitAll(gone, s.cfg.DrainTimeout)
	if commit {
		s.commit(ctx, only)
	}
	s.mu.Lock()
	for tp := range only {
		delete(s.parts, tp)
	}
	s.mu.Unlock()
}

func waitAll(ps []*partition, timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		for _, p := range ps {
			p.active.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Close stops fetching, waits for the calls in flight (up to DrainTimeout;
// then their contexts are cancelled), commits what finished, closes the
// message channel and leaves the group.
func (s *Subscriber) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.mu.Lock()
		client := s.client
		s.mu.Unlock()
		if client == nil {
			s.cancelMsgs()
			return
		}
		<-s.pollDone
		<-s.commitDone
		<-s.endsDone
		if !waitGroup(&s.delivering, s.cfg.DrainTimeout) {
			s.cfg.Logger.Warn("calls still running at the drain deadline; cancelling them", "group", s.cfg.Group)
			s.cancelMsgs()
			waitGroup(&s.delivering, 5*time.Second)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s.commit(ctx, nil)
		cancel()
		close(s.out)
		client.Close()
		s.cancelMsgs()
	})
	return nil
}

func waitGroup(wg *sync.WaitGroup, timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// errorReport logs an outage of the group's fetches or offset commits (each
// error says which) once when it starts, then at most every `every`,
// and once when it ends, instead of a line per failed fetch.
type errorReport struct {
	logger *slog.Logger
	every  time.Duration
	mu     sync.Mutex
	since  time.Time
	last   time.Time
	count  int
}

func (e *errorReport) report(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	e.count++
	switch {
	case e.since.IsZero():
		e.since, e.last = now, now
		e.logger.Warn("kafka consumer failing (fetch or offset commit); retrying", "err", err)
	case now.Sub(e.last) >= e.every:
		e.last = now
		e.logger.Warn("kafka consumer still failing (fetch or offset commit)", "since", e.since.UTC(), "failures", e.count, "err", err)
	}
}

func (e *errorReport) recovered() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.since.IsZero() {
		e.logger.Info("kafka consumer recovered", "after", time.Since(e.since).Round(time.Millisecond), "failures", e.count)
		e.since, e.count = time.Time{}, 0
	}
}
