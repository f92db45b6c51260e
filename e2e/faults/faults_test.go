package faults

import (
	"fmt"
	"testing"
	"time"
)

// rate is the offered load of every scenario, orders per second.
const rate = 25

// drainDeadline bounds how long a scenario waits, after recovery, for every
// accepted order to be emailed.
const drainDeadline = 3 * time.Minute

func TestBaseline(t *testing.T) {
	c := engines(t)
	d := newDeployment(t, c)
	a := d.start(t, "a")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 250)
	tr.end()
	r := d.settle(t, "no fault", tr, time.Now(), drainDeadline)
	d.term(t, a) // a clean shutdown logs no ERROR: its lines count too
	r.errorLines, r.errorSample = d.errorLines()
	r.check(t)
	r.errorsAtMost(t, 0)
}

func TestOneBrokerKilledAndRestarted(t *testing.T) {
	c := engines(t)
	d := newDeployment(t, c)
	d.start(t, "a")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 100)
	leader := c.leaderOf(t, d.prefix+"order.placed")
	c.services(t, "kafka-node", fmt.Sprint(leader), "kill")
	t.Cleanup(func() { c.services(t, "kafka-node", fmt.Sprint(leader), "start") })
	waitAccepted(t, tr, tr.acceptedOrders()+30*rate) // 30 s with the leader gone
	c.services(t, "kafka-node", fmt.Sprint(leader), "start")
	recovered := time.Now()
	c.waitBrokers(t, 3, 2*time.Minute)
	waitAccepted(t, tr, tr.acceptedOrders()+5*rate)
	tr.end()
	r := d.settle(t, fmt.Sprintf("broker %d (partition leader) killed, restarted after 30 s", leader), tr, recovered, drainDeadline)
	r.check(t)
	r.errorsAtMost(t, 5)
}

func TestAllBrokersStoppedForAMinute(t *testing.T) {
	c := engines(t)
	d := newDeployment(t, c)
	d.start(t, "a")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 100)
	for n := 1; n <= 3; n++ {
		c.services(t, "kafka-node", fmt.Sprint(n), "stop")
	}
	t.Cleanup(func() {
		for n := 1; n <= 3; n++ {
			c.services(t, "kafka-node", fmt.Sprint(n), "start")
		}
	})
	// Orders keep being accepted while Kafka is away: they wait in the outbox.
	before := tr.acceptedOrders()
	waitAccepted(t, tr, before+60*rate*9/10)
	for n := 1; n <= 3; n++ {
		c.services(t, "kafka-node", fmt.Sprint(n), "start")
	}
	recovered := time.Now()
	c.waitBrokers(t, 3, 3*time.Minute)
	waitAccepted(t, tr, tr.acceptedOrders()+5*rate)
	tr.end()
	r := d.settle(t, "all three brokers stopped for 60 s", tr, recovered, drainDeadline)
	r.check(t)
	r.errorsAtMost(t, 5)
}

func TestEventfnKilledAndRestarted(t *testing.T) {
	c := engines(t)
	d := newDeployment(t, c)
	a := d.start(t, "a")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 150)
	a.kill()
	d.start(t, "a-restarted")
	recovered := time.Now()
	waitAccepted(t, tr, tr.acceptedOrders()+100)
	tr.end()
	r := d.settle(t, "eventfn killed (SIGKILL) and restarted", tr, recovered, drainDeadline)
	r.check(t)
	r.errorsAtMost(t, 0)
}

func TestPostgresRestarted(t *testing.T) {
	c := engines(t)
	d := newDeployment(t, c)
	d.start(t, "a")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 150)
	c.services(t, "pg", "restart")
	recovered := time.Now()
	waitAccepted(t, tr, tr.acceptedOrders()+150)
	tr.end()
	r := d.settle(t, "PostgreSQL restarted", tr, recovered, drainDeadline)
	r.check(t)
	r.errorsAtMost(t, 5)
}

func TestPostgresFrozen(t *testing.T) {
	postgresOut(t, "pause", "resume", 30*time.Second, "PostgreSQL frozen (SIGSTOP) for 30 s")
}

// TestPostgresStoppedForAMinute: PostgreSQL is shut down (connections
// refused) for 60 s, then started again. Orders are refused meanwhile
// (503); events already on Kafka wait for the database, none is
// dead-lettered, and eventfn recovers by itself.
func TestPostgresStoppedForAMinute(t *testing.T) {
	postgresOut(t, "stop", "start", 60*time.Second, "PostgreSQL stopped for 60 s")
}

// TestPostgresReadOnly: the server takes reads but no writes for 30 s, as
// a managed service does when its disk fills, or a standby before a
// failover completes. Orders are refused meanwhile (503); events already
// on Kafka wait for writes, none is dead-lettered.
func TestPostgresReadOnly(t *testing.T) {
	postgresOut(t, "read-only", "writable", 30*time.Second, "PostgreSQL read-only for 30 s")
}

// TestPostgresLockTableFull: another session fills PostgreSQL's shared lock
// table for 30 s (a job that locks many objects, a pg_dump of very many
// tables): every write and every new connection fails with out of shared
// memory (53200), an error one transaction can also cause alone. Nothing
// else commits meanwhile, so it is the server's: events wait, orders are
// refused (503), nothing is dead-lettered.
func TestPostgresLockTableFull(t *testing.T) {
	postgresOut(t, "fill-locks", "free-locks", 30*time.Second, "PostgreSQL's lock table filled by another session for 30 s")
}

// postgresOut runs one process under traffic, puts PostgreSQL out with the
// services script's fault for length, undoes it, and settles.
func postgresOut(t *testing.T, fault, undo string, length time.Duration, label string) {
	t.Helper()
	c := engines(t)
	d := newDeployment(t, c)
	d.start(t, "a")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 150)
	c.services(t, "pg", fault)
	t.Cleanup(func() { c.services(t, "pg", undo) })
	time.Sleep(length) // the fault's length, not synchronisation
	c.services(t, "pg", undo)
	recovered := time.Now()
	waitAccepted(t, tr, tr.acceptedOrders()+150)
	tr.end()
	r := d.settle(t, label, tr, recovered, drainDeadline)
	r.check(t)
	r.errorsAtMost(t, 5)
}

func TestTwoReplicasOneKilled(t *testing.T) {
	c := engines(t)
	d := newDeployment(t, c)
	a := d.start(t, "a")
	d.start(t, "b")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 150)
	a.kill()
	recovered := time.Now()
	waitAccepted(t, tr, tr.acceptedOrders()+150)
	tr.end()
	r := d.settle(t, "two replicas, one killed (SIGKILL)", tr, recovered, drainDeadline)
	r.check(t)
	r.errorsAtMost(t, 0)
}

func TestRollingRestartOfTwoReplicas(t *testing.T) {
	c := engines(t)
	d := newDeployment(t, c)
	a := d.start(t, "a")
	b := d.start(t, "b")
	tr := d.drive(t, rate)
	waitAccepted(t, tr, 100)
	d.term(t, a)
	d.start(t, "a2")
	waitAccepted(t, tr, tr.acceptedOrders()+50)
	d.term(t, b)
	d.start(t, "b2")
	recovered := time.Now()
	waitAccepted(t, tr, tr.acceptedOrders()+100)
	tr.end()
	r := d.settle(t, "rolling restart of two replicas (SIGTERM)", tr, recovered, drainDeadline)
	// Traffic goes to live processes only, so no request may be refused.
	for status, n := range r.refused {
		t.Errorf("%d requests answered %d during the rolling restart", n, status)
	}
	r.check(t)
	r.errorsAtMost(t, 0)
}
