// Package router assembles eventfn's engine room on Watermill: one Kafka
// subscriber per handler in its own consumer group, the middleware chain around
// each handler, and the relay that forwards the transactional outbox to Kafka.
// Handler authors never import it; wiring builds it from configuration.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/outage"
	"github.com/eventfn/eventfn/router/dispatch"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
	"github.com/eventfn/eventfn/store"
)

// HandlerInfo describes a subscribed handler for people and tools.
type HandlerInfo struct {
	Name    string         `json:"name"`
	Trigger string         `json:"trigger"`
	Topic   string         `json:"topic"`
	Group   string         `json:"consumer_group"`
	Emits   []string       `json:"emits"`
	Policy  runtime.Policy `json:"policy"`
}

// Describe resolves each handler's topic, group and effective policy. It fails on
// an invalid handler, a duplicate name, or configuration for a handler that does
// not exist.
func Describe(cfg configs.Config, handlers []runtime.Handler) ([]HandlerInfo, error) {
	seen := map[string]bool{}
	var infos []HandlerInfo
	for _, h := range handlers {
		if err := h.Validate(); err != nil {
			return nil, err
		}
		if seen[h.Name()] {
			return nil, fmt.Errorf("two handlers are named %q: names are consumer groups and must be unique", h.Name())
		}
		seen[h.Name()] = true
		p, err := effectivePolicy(h, cfg.Handlers[h.Name()])
		if err != nil {
			return nil, err
		}
		infos = append(infos, HandlerInfo{
			Name:    h.Name(),
			Trigger: h.Trigger(),
			Topic:   cfg.Kafka.Topic(h.Trigger()),
			Group:   cfg.Kafka.Group(h.Name()),
			Emits:   h.Emits(),
			Policy:  p,
		})
	}
	// A topic eventfn writes for itself that a handler reads (or writes)
	// would feed back into handlers: one malformed record once looped into
	// 429,362 dead letters in 11 minutes, and every attempt of a handler on
	// the runs topic writes a run record that it then handles.
	for _, own := range []struct{ key, topic, loop string }{
		{"kafka.dead_letter_topic", cfg.Kafka.DeadLetterTopic, "dead letters would be handled, fail and be dead-lettered again without end"},
		{"kafka.runs_topic", cfg.Kafka.RunsTopic, "each attempt writes a run record there, which the handler would handle, without end"},
	} {
		if own.topic == "" {
			continue
		}
		topic := cfg.Kafka.Topic(own.topic)
		for _, info := range infos {
			if info.Topic == topic {
				return nil, fmt.Errorf("%s %q is the topic handler %s consumes: %s; name another topic", own.key, own.topic, info.Name, own.loop)
			}
			for _, e := range info.Emits {
				if cfg.Kafka.Topic(e) == topic {
					return nil, fmt.Errorf("%s %q is the topic of %s, which handler %s emits; name another topic", own.key, own.topic, e, info.Name)
				}
			}
		}
	}
	var unknown []string
	for name := range cfg.Handlers {
		if !seen[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		names := make([]string, 0, len(infos))
		for _, i := range infos {
			names = append(names, i.Name)
		}
		return nil, fmt.Errorf("handlers.%s: no such handler; handlers are: %s", strings.Join(unknown, ", handlers."), strings.Join(names, ", "))
	}
	return infos, nil
}

func effectivePolicy(h runtime.Handler, o configs.HandlerPolicy) (runtime.Policy, error) {
	p := h.Policy()
	if o.MaxRetries != nil {
		p.MaxRetries = *o.MaxRetries
		if p.MaxRetries == 0 {
			p.MaxRetries = -1 // an explicit 0 in configuration means no retries
		}
	}
	if o.InitialBackoff > 0 {
		p.InitialBackoff = o.InitialBackoff
	}
	if o.MaxBackoff > 0 {
		p.MaxBackoff = o.MaxBackoff
	}
	if o.Timeout > 0 {
		p.Timeout = o.Timeout
	}
	if o.Concurrency > 0 {
		p.Concurrency = o.Concurrency
	}
	if o.MaxBatch > 0 {
		p.MaxBatch = o.MaxBatch
	}
	p = p.WithDefaults()
	if err := p.Validate(); err != nil {
		return p, fmt.Errorf("handlers.%s: %w", h.Name(), err)
	}
	return p, nil
}

// selectHandlers keeps the handlers run.handlers names, in their declared
// order; empty names keep them all. An unknown name is refused with the known
// ones: a typo would otherwise leave a handler running nowhere, in silence.
func selectHandlers(names []string, handlers []runtime.Handler, infos []HandlerInfo) ([]runtime.Handler, []HandlerInfo, error) {
	if len(names) == 0 {
		return handlers, infos, nil
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var keptH []runtime.Handler
	var keptI []HandlerInfo
	known := make([]string, 0, len(infos))
	for i, info := range infos {
		known = append(known, info.Name)
		if want[info.Name] {
			keptH = append(keptH, handlers[i])
			keptI = append(keptI, info)
			delete(want, info.Name)
		}
	}
	if len(want) > 0 {
		unknown := make([]string, 0, len(want))
		for n := range want {
			unknown = append(unknown, strconv.Quote(n))
		}
		sort.Strings(unknown)
		return nil, nil, fmt.Errorf("run.handlers (%s): no handler %s; handlers are: %s",
			configs.EnvName("run.handlers"), strings.Join(unknown, ", "), strings.Join(known, ", "))
	}
	return keptH, keptI, nil
}

// Runtime runs the handlers and the relay of one process.
type Runtime struct {
	cfg     configs.Config
	kopts   []kgo.Opt // TLS and SASL of every franz-go client
	cleaner *cleaner
	tracer  trace.Tracer
	runs    *runLog // a record of every handler attempt, for publish --wait
	db      *store.DB
	outbox  *Outbox
	// infos are the handlers this process runs (run.handlers); all are every
	// handler, whose topics the relay may write whichever run here.
	infos    []HandlerInfo
	all      []HandlerInfo
	logger   *slog.Logger
	wlogger  watermill.LoggerAdapter
	producer *relay.Producer
	kafkaPub message.Publisher
	handlers *message.Router
	relay    *relay.Relay
	started  []*message.Handler
	metrics  *metrics
	closing  atomic.Bool
	running  atomic.Bool
	// infra counts events waiting for the database to come back.
	infra infraWatch
	// dlqHealth says whether dead letters can be written.
	dlqHealth *outage.Reporter
	// unfinished counts, per handler, its records not handled yet (see
	// Backlog); filled before Run, read only after.
	unfinished []func() int64
}

// outageReportInterval is how often a lasting failure (dead letters that
// cannot be written) is summarised in the log.
const outageReportInterval = 30 * time.Second

// New builds the runtime; Run starts it. Its metrics are registered in reg.
func New(cfg configs.Config, db *store.DB, outbox *Outbox, handlers []runtime.Handler, reg prometheus.Registerer, logger *slog.Logger, opts ...Option) (*Runtime, error) {
	o := buildOptions(opts)
	all, err := Describe(cfg, handlers)
	if err != nil {
		return nil, err
	}
	handlers, infos, err := selectHandlers(cfg.Run.Handlers, handlers, all)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(reg, outbox)
	if err != nil {
		return nil, err
	}
	// Watermill narrates every subscription at info level; that is debug detail here.
	wlogger := watermill.NewSlogLoggerWithLevelMapping(logger.With("component", "watermill"), map[slog.Level]slog.Level{
		slog.LevelInfo: slog.LevelDebug,
	})
	kopts, err := KafkaClientOpts(cfg.Kafka)
	if err != nil {
		return nil, err
	}
	producer, err := relay.NewProducer(relay.ProducerConfig{
		Brokers:        cfg.Kafka.Brokers,
		ClientID:       cfg.Kafka.ClientID,
		MaxRecordBytes: cfg.Kafka.MaxMessageBytes,
		Opts:           kopts,
	})
	if err != nil {
		return nil, err
	}
	r := &Runtime{cfg: cfg, kopts: kopts, tracer: o.tracer, db: db, outbox: outbox, infos: infos, all: all, logger: logger, wlogger: wlogger,
		producer: producer, kafkaPub: kafkaPublisher{producer: producer}, metrics: m,
		dlqHealth: outage.New("dead letters cannot be written", "dead letters written again", outageReportInterval, logger)}
	if r.runs, err = newRunLog(cfg.Kafka, kopts, reg, logger.With("component", "runs")); err != nil {
		producer.Close()
		return nil, err
	}
	if err := r.buildHandlers(handlers); err != nil {
		producer.Close()
		r.runs.close()
		return nil, err
	}
	rm, err := relay.NewMetrics(reg)
	if err != nil {
		producer.Close()
		r.runs.close()
		return nil, err
	}
	r.relay = relay.New(relay.Config{BatchSize: cfg.Relay.BatchSize, BatchBytes: cfg.Relay.BatchBytes, PollInterval: cfg.Relay.PollInterval, Tracer: o.tracer,
		LostLease: outbox.wake.notifier.Notify},
		outbox.table, producer, relay.NewLease(db), rm, logger.With("component", "relay"))
	outbox.wake.relay.Store(r.relay)
	r.cleaner, err = newCleaner(cfg.Retention, db, outbox.table, reg, logger.With("component", "retention"))
	if err != nil {
		producer.Close()
		r.runs.close()
		return nil, err
	}
	return r, nil
}

func (r *Runtime) buildHandlers(handlers []runtime.Handler) error {
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: r.cfg.Shutdown.Timeout}, r.wlogger)
	if err != nil {
		return fmt.Errorf("handler router: %w", err)
	}
	for i, h := range handlers {
		info := r.infos[i]
		sub, err := dispatch.NewSubscriber(dispatch.Config{
			Brokers:         r.cfg.Kafka.Brokers,
			ClientID:        r.cfg.Kafka.ClientID,
			Group:           info.Group,
			Unmarshal:       unmarshalRecord,
			MaxInFlight:     info.Policy.Concurrency,
			NackResendSleep: 100 * time.Millisecond,
			DrainTimeout:    r.cfg.Shutdown.Timeout,
			StartAtEnd:      r.cfg.StartPosition(h.Name()) == configs.StartLatest,
			Deleted:         deletedCounter(r.metrics.ops.deleted.WithLabelValues(h.Name())),
			Logger:          r.logger.With("component", "consumer", "handler", h.Name()),
			Opts:            r.kopts,
		})
		if err != nil {
			return fmt.Errorf("kafka subscriber for handler %s: %w", h.Name(), err)
		}
		inv := &invoker{handler: h, outbox: r.outbox, logger: r.logger, metrics: r.metrics, tracer: r.tracer,
			runs: r.runs, maxRetries: info.Policy.MaxRetries,
			committer: newCommitter(r.outbox.db, maxBatch(info.Policy, r.outbox.db.Driver), info.Policy.Concurrency, r.metrics.batchCalls.WithLabelValues(h.Name()).Observe)}
		rh := router.AddConsumerHandler(h.Name(), info.Topic, sub, inv.handle)
		mws, err := middlewares(info.Policy, r.kafkaPub, r.cfg.Kafka.Topic(r.cfg.Kafka.DeadLetterTopic), &r.closing,
			r.metrics.deadLettered.WithLabelValues(h.Name()), r.metrics.ops.forHandler(h.Name()), r.cfg.Kafka.MaxMessageBytes, r.dlqHealth, &r.infra, r.logger.With("handler", h.Name()), r.wlogger)
		if err != nil {
			return err
		}
		rh.AddMiddleware(mws...)
		r.metrics.ops.lag.add(h.Name(), sub.Lag)
		r.unfinished = append(r.unfinished, sub.Unfinished)
		r.started = append(r.started, rh)
	}
	r.metrics.instrument(router)
	r.handlers = router
	return nil
}

// Backlog is how many events the handlers of this process have not handled
// yet: on the partitions each was given, records not finished, fetched or not.
// It counts only this process's handlers and their partitions; events still
// in the outbox are not in it.
func (r *Runtime) Backlog() int64 {
	var n int64
	for _, unfinished := range r.unfinished {
		n += unfinished()
	}
	return n
}

// Handlers describes the subscribed handlers.
func (r *Runtime) Handlers() []HandlerInfo { return r.infos }

// Topics lists every topic the runtime reads or writes.
func Topics(cfg configs.Config, infos []HandlerInfo) []string {
	set := map[string]bool{cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic): true}
	if cfg.Kafka.RunsTopic != "" {
		set[cfg.Kafka.Topic(cfg.Kafka.RunsTopic)] = true
	}
	for _, i := range infos {
		set[i.Topic] = true
		for _, e := range i.Emits {
			set[cfg.Kafka.Topic(e)] = true
		}
	}
	out := make([]string, 0, len(set))
	for t := range set {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// checkTopicConfigs reads the topics' configuration once and refuses a
// kafka.max_message_bytes or a retention.inbox that they make unsafe. It
// warns of a handler's topic, or the dead-letter topic, that compacts.
func (r *Runtime) checkTopicConfigs(ctx context.Context, topics []string) error {
	names := append(slices.Clip(recordLimitConfigs), "cleanup.policy")
	if r.cfg.Retention.Inbox > 0 {
		names = append(slices.Clip(names), "retention.ms")
	}
	values, err := topicConfigs(ctx, r.cfg.Kafka, topics, names...)
	if err != nil {
		if r.cfg.Retention.Inbox > 0 {
			return fmt.Errorf("retention.inbox needs the handlers' topics' retention: %w", err)
		}
		// No reason not to start (an ACL without DescribeConfigs, say): a
		// topic that refuses a record batch as too large is warned of then.
		r.logger.Warn("cannot check kafka.max_message_bytes against the topics' max.message.bytes", "err", err)
		return nil
	}
	// Any of them may get events from the outbox: the handlers' emits, the
	// HTTP ingress's, dead letters and runs.
	if limits, err := recordLimitsOf(values); err != nil {
		r.logger.Warn("cannot check kafka.max_message_bytes against the topics' max.message.bytes", "err", err)
	} else if err := checkRecordLimits(r.cfg.Kafka.MaxMessageBytes, limits); err != nil {
		return err
	}
	consumed := make([]string, 0, len(r.infos))
	for _, i := range r.infos {
		consumed = append(consumed, i.Topic)
	}
	// Compaction deletes a record once a later one with its key is
	// written, whether a handler had it or not: events lost without a
	// report (the log start, which the consumers watch, does not move).
	for _, t := range compactedTopics(values, append(slices.Clip(consumed), r.cfg.Kafka.Topic(r.cfg.Kafka.DeadLetterTopic))) {
		r.logger.Warn("kafka topic compacts (cleanup.policy compact): Kafka deletes an event once a later one with the same key is written, handled or not, and such losses are not reported; set cleanup.policy=delete",
			"topic", t, "cleanup.policy", values[t]["cleanup.policy"])
	}
	if r.cfg.Retention.Inbox <= 0 {
		return nil
	}
	retentions, err := retentionsOf(values, consumed)
	if err != nil {
		return fmt.Errorf("retention.inbox needs the handlers' topics' retention: %w", err)
	}
	return checkInboxRetention(r.cfg.Retention.Inbox, retentions, consumed)
}

// Run creates missing topics and outbox tables, starts the relay and the
// handlers, and blocks until ctx ends; then it shuts down gracefully: handlers
// stop taking events and finish the calls in flight, the relay forwards what
// they committed, and offsets are committed, all within shutdown.timeout.
func (r *Runtime) Run(ctx context.Context, extraTopics ...string) error {
	setupCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// Every handler's topics, not only those of the handlers run here: the
	// relay of every replica forwards whatever the outbox holds.
	topics := append(Topics(r.cfg, r.all), extraTopics...)
	if err := EnsureTopics(setupCtx, r.cfg.Kafka, topics, r.logger); err != nil {
		return err
	}
	if err := r.checkTopicConfigs(setupCtx, topics); err != nil {
		return err
	}

	// The routers get contexts of their own: ctx ending starts the shutdown
	// sequence below rather than cutting every subscription at once.
	relayCtx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRelay()
	handlersCtx, stopHandlers := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHandlers()
	relayDone := make(chan error, 1)
	handlersDone := make(chan error, 1)
	go func() { relayDone <- r.relay.Run(relayCtx) }()
	cleanerDone := make(chan struct{})
	go func() { r.cleaner.run(relayCtx); close(cleanerDone) }()
	// Commits of other processes wake this relay, and this process's wake
	// the leader of another when this relay does not lead (PostgreSQL).
	wakeDone := make(chan struct{}, 2)
	go func() {
		relay.Listen(relayCtx, r.db, r.relay.Nudge, r.logger.With("component", "relay"))
		wakeDone <- struct{}{}
	}()
	go func() {
		if n := r.outbox.wake.notifier; n != nil {
			n.Run(relayCtx, r.logger.With("component", "relay"))
		}
		wakeDone <- struct{}{}
	}()
	go func() { handlersDone <- r.handlers.Run(handlersCtx) }()
	r.running.Store(true)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-relayDone:
		runErr = fmt.Errorf("outbox relay stopped: %w", err)
		relayDone <- err
	case err := <-handlersDone:
		runErr = fmt.Errorf("handler router stopped: %w", err)
		handlersDone <- err
	}
	r.running.Store(false)
	err := errors.Join(runErr, r.shutdown(handlersDone, relayDone, stopRelay))
	stopRelay()
	<-cleanerDone // a sweep in flight ends with the relay's context
	<-wakeDone
	<-wakeDone
	return err
}

func (r *Runtime) shutdown(handlersDone, relayDone <-chan error, stopRelay func()) error {
	deadline := time.Now().Add(r.cfg.Shutdown.Timeout)
	r.logger.Info("shutting down: finishing handler calls in flight")
	r.closing.Store(true)
	var errs []error
	if err := r.handlers.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close handlers: %w", err))
	}
	<-handlersDone
	r.logger.Info("shutting down: flushing the outbox to Kafka")
	if err := r.drainOutbox(deadline); err != nil {
		errs = append(errs, err)
	}
	stopRelay()
	<-relayDone
	r.producer.Close()
	r.runs.close()
	r.logger.Info("shut down")
	return errors.Join(errs...)
}

// drainCheckInterval is how often shutdown counts the rows the relay has
// still to forward.
const drainCheckInterval = 10 * time.Millisecond

// drainOutbox waits until the relay has forwarded every committed outbox row.
// Rows left at the deadline stay in the outbox and go out after a restart.
func (r *Runtime) drainOutbox(deadline time.Time) error {
	return drainUntil(deadline, r.outbox.Pending)
}

// drainUntil waits until pending counts no rows, or the deadline passes.
func drainUntil(deadline time.Time, pending func(context.Context) (int64, error)) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	tick := time.NewTicker(drainCheckInterval)
	defer tick.Stop()
	for {
		n, err := pending(ctx)
		if err == nil && n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				// The last count failed (the database did not answer in
				// time): a 0 here said the outbox was empty when it was not.
				return fmt.Errorf("outbox not flushed by the shutdown deadline; the events still pending could not be counted, and wait for the next start: %w", errors.Join(err, ctx.Err()))
			}
			return fmt.Errorf("outbox not flushed by the shutdown deadline (%d events wait for the next start): %w", n, ctx.Err())
		case <-tick.C:
		}
	}
}

// Ready reports why the runtime cannot serve yet: the database or Kafka is
// unreachable, or a handler has not subscribed.
func (r *Runtime) Ready(ctx context.Context) error {
	if !r.running.Load() {
		return errors.New("runtime is not running")
	}
	for i, h := range r.started {
		select {
		case <-h.Started():
		default:
			return fmt.Errorf("handler %s has not subscribed yet", r.infos[i].Name)
		}
	}
	if err := r.relay.Healthy(); err != nil {
		return err
	}
	if err := r.infra.Err(); err != nil {
		return err
	}
	if err := r.dlqHealth.Err(); err != nil {
		return err
	}
	// The read pool answers for the database: on SQLite the one writer
	// connection may be held by a handler's transaction for as long as the
	// handler runs, and that is load, not unreadiness.
	if err := r.db.Read.PingContext(ctx); err != nil {
		return fmt.Errorf("database %s: %w", r.db.Where, err)
	}
	// The relay's client and its open connections answer; readiness opens none.
	if err := r.producer.Client().Ping(ctx); err != nil {
		return fmt.Errorf("kafka %v: %w", r.cfg.Kafka.Brokers, err)
	}
	return nil
}
