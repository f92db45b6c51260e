package main

import (
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"time"
)

// loadResult is everything one load run measured.
type loadResult struct {
	opts loadOptions
	app  string
	pid  int
	// engineProcs are the real engines' processes, when found on this machine.
	engineProcs       engineProcs
	engineProcsErr    error
	engines           string
	env               map[string]string
	started, finished time.Time

	phases      []*phase
	target80    *phase
	interrupted bool // stopped early: no targets, no order check

	txRate, produceRate, consumeRate float64
	txErr, produceErr, consumeErr    error
	txCPU                            cpuTime // during the transaction ceiling
	txCPUErr                         error
	peakRSS                          int64 // eventfn's largest resident set, bytes, after the phases
	peakRSSErr                       error

	checked, dupes int
	violations     []string
	located        []string // where the records of the first violations are
	lostCount      int
	lost           []string
}

func (r *loadResult) plotTitle() string {
	engines := "embedded engines (kfake, SQLite)"
	if r.opts.real {
		engines = "Apache Kafka + PostgreSQL"
	}
	return fmt.Sprintf("eventfn, POST /orders → email.sent, %s, %s", engines, r.started.Format("2006-01-02"))
}

func (r *loadResult) print(out io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(out, format, args...) }
	p("\neventfn-bench load, %s\n", r.started.Format(time.RFC3339))
	p("engines: %s\n", r.engines)
	p("eventfn: %s (pid %d)\n", r.app, r.pid)
	var keys []string
	for k := range r.env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var kv []string
	for _, k := range keys {
		v := r.env[k]
		if k == "EVENTFN_DATABASE_URL" {
			v = redactURL(v)
		}
		kv = append(kv, k+"="+v)
	}
	p("settings: %s\n", strings.Join(kv, " "))
	p("latency: from just before POST /orders until its email.sent record is read from Kafka; %s sending window per phase\n\n", r.opts.duration)

	p("%-24s %9s %7s %8s %7s %-16s %9s %9s %9s %9s %9s  %s\n",
		"phase", "offered/s", "sent", "accepted", "skipped", "failed", "p50", "p90", "p99", "max", "chains/s", "backlog during the window")
	for _, ph := range r.phases {
		offered := "closed"
		if ph.Rate > 0 {
			offered = fmt.Sprintf("%g", ph.Rate)
		}
		backlog := fmt.Sprintf("steady (%+.1f/s)", ph.Slope)
		if ph.Grows {
			backlog = fmt.Sprintf("GROWS %+.0f/s: offered above capacity", ph.Slope)
		}
		if ph.Interrupted {
			backlog = "INTERRUPTED: partial figures"
		}
		p("%-24s %9s %7d %8d %7d %-16s %9s %9s %9s %9s %9.1f  %s\n",
			ph.Name, offered, ph.sent.Load(), ph.accepted.Load(), ph.skipped.Load(), ph.failures(),
			ms(ph.Lat.P50), ms(ph.Lat.P90), ms(ph.Lat.P99), ms(ph.Lat.Max), ph.ChainsPerSec, backlog)
	}
	for _, ph := range r.phases {
		if !ph.Drained {
			p("  %s: %d of %d accepted orders not completed %s after its window\n", ph.Name, int(ph.accepted.Load())-ph.Completed, ph.accepted.Load(), ph.DrainTook.Round(time.Second))
		} else if ph.DrainTook > 5*time.Second {
			p("  %s: its last orders completed %s after its window\n", ph.Name, ph.DrainTook.Round(100*time.Millisecond))
		}
	}

	p("\nceilings, same run:\n")
	line := func(name string, v float64, unit string, err error) {
		if err != nil {
			p("  %-62s not measured: %v\n", name, err)
			return
		}
		p("  %-62s %10.0f %s\n", name, v, unit)
	}
	if !r.opts.ceilings {
		p("  not measured (-ceilings=false)\n")
	} else {
		txName := fmt.Sprintf("order+outbox transactions, %d PostgreSQL clients", ceilingClients)
		if !r.opts.real {
			txName = fmt.Sprintf("order+outbox transactions, %d clients, one SQLite writer (WAL)", ceilingClients)
		}
		line(txName, r.txRate, "tx/s", r.txErr)
		if r.txErr == nil {
			p("  %-62s %10.0f chains/s\n", "  ÷ 4 (one chain = 4 transactions)", r.txRate/4)
		}
		line(fmt.Sprintf("raw batched produce, acks=all, idempotent, %d records", r.opts.ceilingRecords), r.produceRate, "records/s", r.produceErr)
		line("raw consumer-group read of those records", r.consumeRate, "records/s", r.consumeErr)
	}

	if r.txErr == nil && r.txRate > 0 {
		p("\nratios, chains/s ÷ (order+outbox tx/s ÷ 4):\n")
		for _, ph := range r.phases {
			p("  %-24s %6.3f\n", ph.Name, ph.ChainsPerSec/(r.txRate/4))
		}
	}

	r.printCPU(p)

	if r.interrupted {
		p("\ninterrupted: targets and order check not evaluated\n")
		return
	}
	p("\ntargets of issue 6 (reported, not asserted):\n")
	for _, t := range r.targets() {
		p("  %s\n", t)
	}

	p("\norder check: %d orders read from order.placed, payment.confirmed and email.sent", r.checked)
	if r.dupes > 0 {
		p(" (%d duplicate records, at-least-once delivery)", r.dupes)
	}
	p("\n")
	if len(r.violations) == 0 {
		p("  per-key causal order: no violation\n")
	} else {
		p("  per-key causal order: %d VIOLATIONS\n", len(r.violations))
		for i, v := range r.violations {
			if i == 20 {
				p("  ... and %d more\n", len(r.violations)-20)
				break
			}
			p("  %s\n", v)
		}
		for _, l := range r.located {
			p("  %s\n", l)
		}
	}
	if r.lostCount == 0 {
		p("  every accepted order reached email.sent\n")
	} else {
		p("  LOST: %d accepted orders had no email.sent within -drain %s after the last phase (lost, or that far behind): %s\n", r.lostCount, r.opts.drain, strings.Join(first(r.lost, 5), ", "))
	}
}

// printCPU prints what each phase cost in CPU per order, beside what the
// transaction ceiling cost per transaction: a comparison a noisy machine
// disturbs far less than it disturbs throughput.
func (r *loadResult) printCPU(p func(format string, args ...any)) {
	p("\nCPU per accepted order, from the start of a phase until its orders completed (/proc):\n")
	split := r.opts.real && r.engineProcs.found()
	if split {
		p("  %-24s %10s %10s %10s %10s %10s %10s\n", "phase", "eventfn", "bench", "engines", "PostgreSQL", "Kafka", "machine")
	} else {
		p("  %-24s %10s %10s %10s %10s\n", "phase", "eventfn", "bench", "engines", "machine")
	}
	for _, ph := range r.phases {
		c, ok := ph.cpuPerOrder()
		if !ok {
			why := "no order accepted"
			if ph.CPUErr != nil {
				why = ph.CPUErr.Error()
			}
			p("  %-24s not measured: %s\n", ph.Name, why)
			continue
		}
		engines := fmt.Sprintf("%7.3f ms", msf(c.engines()))
		if !r.opts.real {
			engines = "in eventfn"
		}
		if split {
			p("  %-24s %7.3f ms %7.3f ms %10s %7.3f ms %7.3f ms %7.3f ms\n", ph.Name, msf(c.app), msf(c.bench), engines, msf(c.postgres), msf(c.kafka), msf(c.machine))
			continue
		}
		p("  %-24s %7.3f ms %7.3f ms %10s %7.3f ms\n", ph.Name, msf(c.app), msf(c.bench), engines, msf(c.machine))
	}
	if r.peakRSSErr != nil {
		p("  eventfn's peak resident memory: not measured: %v\n", r.peakRSSErr)
	} else {
		p("  eventfn's peak resident memory (VmHWM): %.0f MiB\n", float64(r.peakRSS)/(1<<20))
	}
	if r.opts.real {
		p("  (engines: the machine less eventfn and the bench: PostgreSQL, Kafka and the kernel's work for them; a difference of two tick counts, so a few per cent either way)\n")
		switch {
		case split:
			p("  (PostgreSQL, Kafka: their process trees, postmaster pid %v, Kafka pid %v; what is left of engines is the kernel's work outside any process, and other processes')\n", r.engineProcs.postgres, r.engineProcs.kafka)
		case r.engineProcsErr != nil:
			p("  (PostgreSQL and Kafka not told apart: %v)\n", r.engineProcsErr)
		default:
			p("  (PostgreSQL and Kafka not told apart: no process of this machine listens on both their ports; they run elsewhere)\n")
		}
	}
	txs := r.txRate * r.opts.ceilingDur.Seconds()
	if !r.opts.ceilings || r.txErr != nil || r.txCPUErr != nil || txs < 1 {
		return
	}
	perTx := r.txCPU.machine / time.Duration(txs)
	p("  order+outbox ceiling: %.3f ms of the machine per transaction, %.3f ms per 4\n", msf(perTx), 4*msf(perTx))
	if r.opts.real {
		p("  ratios, 4 ceiling transactions ÷ an order, machine CPU (and the engines' CPU alone):\n")
	} else {
		p("  ratios, 4 ceiling transactions ÷ an order, machine CPU:\n")
	}
	for _, ph := range r.phases {
		c, ok := ph.cpuPerOrder()
		switch {
		case !ok || c.machine <= 0:
		case r.opts.real && c.engines() > 0:
			p("    %-22s %6.3f (%.3f)\n", ph.Name, 4*msf(perTx)/msf(c.machine), 4*msf(perTx)/msf(c.engines()))
		default:
			p("    %-22s %6.3f\n", ph.Name, 4*msf(perTx)/msf(c.machine))
		}
	}
}

// msf is d in milliseconds, with fractions.
func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// targets are the PASS/FAIL lines of issue 6's targets.
func (r *loadResult) targets() []string {
	var out []string
	add := func(name string, pass bool, detail string) {
		v := "FAIL"
		if pass {
			v = "PASS"
		}
		out = append(out, fmt.Sprintf("%s  %s: %s", v, name, detail))
	}
	skip := func(name, why string) { out = append(out, fmt.Sprintf("SKIP  %s: %s", name, why)) }
	incomplete := func(ph *phase) string {
		if ph.Drained {
			return ""
		}
		return fmt.Sprintf(", %d orders not completed", int(ph.accepted.Load())-ph.Completed)
	}

	var at100 *phase
	for _, ph := range r.phases {
		if ph.Rate == 100 {
			at100 = ph
		}
	}
	if r.opts.real {
		name := "100 orders/s: p50 ≤ 15 ms and p99 ≤ 50 ms"
		if at100 == nil {
			skip(name, "no 100/s phase in -rates")
		} else {
			add(name, at100.Drained && at100.Lat.N > 0 && at100.Lat.P50 <= 15*time.Millisecond && at100.Lat.P99 <= 50*time.Millisecond,
				fmt.Sprintf("p50 %s, p99 %s%s", ms(at100.Lat.P50), ms(at100.Lat.P99), incomplete(at100)))
		}
	} else {
		name := "embedded, 100 orders/s: p99 ≤ 50 ms"
		if at100 == nil {
			skip(name, "no 100/s phase in -rates")
		} else {
			add(name, at100.Drained && at100.Lat.N > 0 && at100.Lat.P99 <= 50*time.Millisecond,
				fmt.Sprintf("p99 %s%s", ms(at100.Lat.P99), incomplete(at100)))
		}
	}

	// Sustained: the most chains/s any phase completed within its window,
	// open or closed loop. The closed loop alone undercounts: its senders
	// wait only for the HTTP answer, so the ingress admits orders faster than
	// the chain completes them and takes the CPU the handlers need (on the
	// embedded engines, SQLite's one writer too); an open loop near capacity
	// completes more.
	var sustained *phase
	for _, ph := range r.phases {
		if sustained == nil || ph.ChainsPerSec > sustained.ChainsPerSec {
			sustained = ph
		}
	}
	name := "sustained chains/s ≥ 0.5 × (order+outbox tx/s ÷ 4)"
	switch {
	case sustained == nil:
		skip(name, "no phase ran")
	case r.txErr != nil || r.txRate == 0:
		skip(name, "no transaction ceiling")
	default:
		goal := 0.5 * r.txRate / 4
		add(name, sustained.ChainsPerSec >= goal,
			fmt.Sprintf("%s %.1f chains/s against %.1f (ratio %.3f of tx/s ÷ 4)", sustained.Name, sustained.ChainsPerSec, goal, sustained.ChainsPerSec/(r.txRate/4)))
	}
	if !r.opts.real {
		name := "embedded, sustained ≥ 1000 chains/s"
		if sustained == nil {
			skip(name, "no phase ran")
		} else {
			add(name, sustained.ChainsPerSec >= 1000, fmt.Sprintf("%s %.1f chains/s", sustained.Name, sustained.ChainsPerSec))
		}
	}
	name = "at 80 % of that target rate: p99 < 250 ms, no growing backlog"
	switch t := r.target80; {
	case !r.opts.target80:
		skip(name, "-target80=false")
	case t == nil:
		skip(name, "no transaction ceiling to derive the rate from")
	default:
		add(name, t.Drained && t.Lat.N > 0 && t.Lat.P99 < 250*time.Millisecond && !t.Grows,
			fmt.Sprintf("%s: p99 %s, backlog %s, %.1f chains/s%s", t.Name, ms(t.Lat.P99), map[bool]string{true: "grows", false: "steady"}[t.Grows], t.ChainsPerSec, incomplete(t)))
	}
	return out
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// redactURL drops a password from a URL.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}
