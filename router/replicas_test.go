package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router/relay"
	"github.com/eventfn/eventfn/runtime"
)

// hourlyPoll gives a replica an hour's poll: only a nudge or a notification
// makes its relay read.
func hourlyPoll(c *configs.Config) { c.Relay.PollInterval = time.Hour }

func probeReader() runtime.Handler {
	return runtime.NewHandler("probe-reader", func(context.Context, runtime.Tx, probe) error { return nil })
}

// startLeadingReplica starts a replica whose relay leads: it has forwarded
// an event (probe 0).
func startLeadingReplica(t *testing.T) *testRuntime {
	t.Helper()
	tr := startRuntime(t, hourlyPoll, probeReader())
	tr.emit(t, probe{N: 0})
	tr.records(t, "probe.sent", 1)
	return tr
}

// startReplicaBeside starts a second replica on first's schema and topics;
// its relay waits for the lease.
func startReplicaBeside(t *testing.T, first *testRuntime) *testRuntime {
	t.Helper()
	return startRuntime(t, func(c *configs.Config) {
		hourlyPoll(c)
		c.Kafka.TopicPrefix = first.cfg.Kafka.TopicPrefix
		c.Database.URL = first.cfg.Database.URL
	}, probeReader())
}

// TestAReplicasCommitsWakeTheLeadingRelayOfAnother: of two replicas on one
// PostgreSQL schema one relay forwards. Events committed in the other
// replica reach Kafka through a notification to the leader, not its poll:
// the poll here is an hour, and before notifications the leader found them
// only by polling (every 10 ms by default, at a cost while idle). The
// leader's listening connection is then cut, as a restart of PostgreSQL
// would: it listens again by itself, and what was committed meanwhile goes
// out too.
func TestAReplicasCommitsWakeTheLeadingRelayOfAnother(t *testing.T) {
	testenv.RequirePostgres(t)
	leader := startLeadingReplica(t)
	other := startReplicaBeside(t, leader)

	const each = 5
	for i := 1; i <= each; i++ {
		other.emit(t, probe{N: i})
	}
	leader.records(t, "probe.sent", 1+each)

	// The listener's session ends (pg_terminate_backend, as a restart of
	// the server ends it); the events of the other replica still go out.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Both replicas listen on the channel of their schema; other tests'
	// listeners, on channels of their own schemas, are left alone.
	var channel string
	if err := leader.db.QueryRowContext(ctx, `SELECT 'eventfn_outbox_' || hashtext(current_schema())::text`).Scan(&channel); err != nil {
		t.Fatal(err)
	}
	var pids []int
	listening := func() bool {
		pids = testenv.Column[int](ctx, t, leader.db, `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %' AND position($1 in query) > 0`, channel)
		return len(pids) == 2
	}
	waitUntil(t, "one listening session per replica", time.Minute, listening)
	for _, pid := range pids {
		if _, err := leader.db.ExecContext(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
			t.Fatal(err)
		}
	}
	for i := each + 1; i <= 2*each; i++ {
		other.emit(t, probe{N: i})
	}
	leader.records(t, "probe.sent", 1+2*each)
}

// leaseHolder is the PostgreSQL backend that holds the relay lease of tr's
// schema, or 0.
func leaseHolder(t *testing.T, tr *testRuntime) int {
	t.Helper()
	var pid int
	if err := tr.db.QueryRowContext(context.Background(), `SELECT COALESCE(MAX(pid), 0) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND classid = $1
		AND objid::bigint = (hashtext(current_schema())::bigint & 4294967295)
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, relay.LeaseKey).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestALeaderThatLostItsLeaseWhileIdleHandsOver: the leader's lock session
// ends while its process is idle (a restart of PostgreSQL ends it, so does
// idle_session_timeout) and the other replica takes the lease. The old
// leader does not know until it finds rows of its own to send: its next
// commit nudged only itself. It then tells the new leader, which forwards
// the event at once (the poll here is an hour), and it stands by without
// reporting an outage: before, the event waited for the new leader's poll,
// and the old leader logged an ERROR and answered /readyz with 503 until it
// led again.
func TestALeaderThatLostItsLeaseWhileIdleHandsOver(t *testing.T) {
	testenv.RequirePostgres(t)
	old := startLeadingReplica(t)
	lastBatch := time.Now()
	holder := leaseHolder(t, old)
	if holder == 0 {
		t.Fatal("no replica holds the relay lease")
	}
	other := startReplicaBeside(t, old)
	if _, err := old.db.ExecContext(context.Background(), `SELECT pg_terminate_backend($1)`, holder); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the other replica to take the lease", time.Minute, func() bool {
		p := leaseHolder(t, old)
		return p != 0 && p != holder
	})
	// The old leader checks its lock session at most once a second before a
	// batch; within a second of its last one it would still forward itself.
	waitUntil(t, "the old leader's session check to be due", time.Minute, func() bool { return time.Since(lastBatch) > 1500*time.Millisecond })
	old.emit(t, probe{N: 1})
	old.records(t, "probe.sent", 2)
	waitUntil(t, "the old leader ready as a standby", time.Minute, func() bool { return old.rt.Ready(context.Background()) == nil })
	if strings.Contains(old.logs.String(), "level=ERROR") {
		t.Errorf("the hand-over was logged as an error:\n%s", old.logs.String())
	}
	_ = other
}
