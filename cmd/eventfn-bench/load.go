package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

const loadUsage = `usage: eventfn-bench load [flags]

Runs eventfn as a separate process, configured by EVENTFN_* variables, drives
POST /orders over HTTP and times every order until its email.sent record is on
Kafka. Open loop at each of -rates for -duration, then a closed loop of
-closed senders, then (with -target80) an open loop at 80 % of the issue's
target rate. Prints p50/p90/p99/max and chains/s beside the engines' ceilings
measured in the same run, checks that every order's events are in causal order
on Kafka, and optionally writes a latency-against-throughput plot.

Exit status: 0 when the run completed (a missed target is reported, not an
error), 3 when an order's events are out of order or an accepted order never
completed, 1 on any other failure, 2 on bad flags.

flags:
`

// loadOptions are the flags of the load command.
type loadOptions struct {
	warmup         time.Duration
	real           bool
	app            string
	rates          []float64
	duration       time.Duration
	closed         int
	target80       bool
	maxOutstanding int
	reqTimeout     time.Duration
	drain          time.Duration
	readyTimeout   time.Duration
	ceilings       bool
	ceilingDur     time.Duration
	ceilingRecords int
	plots          []string
	keyed          bool
	env            map[string]string
	keep           bool
}

type envFlag map[string]string

func (e envFlag) String() string { return "" }
func (e envFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || !strings.HasPrefix(k, "EVENTFN_") {
		return fmt.Errorf("%q: want EVENTFN_KEY=VALUE", s)
	}
	e[k] = v
	return nil
}

func parseLoadFlags(args []string, out io.Writer) (loadOptions, error) {
	o := loadOptions{env: map[string]string{}}
	fs := flag.NewFlagSet("eventfn-bench load", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprint(out, loadUsage)
		fs.PrintDefaults()
	}
	rates := fs.String("rates", "20,100,400", "open-loop offered rates, orders/s, comma-separated (empty: none)")
	plots := fs.String("plot", "", "write the latency-against-throughput plot to these files, comma-separated (.svg, .png)")
	fs.BoolVar(&o.real, "real", false, "run eventfn on EVENTFN_TEST_KAFKA_BROKERS and EVENTFN_TEST_DATABASE_URL (a fresh schema and topic prefix) instead of its embedded engines")
	fs.StringVar(&o.app, "app", "", "eventfn binary to measure (default: go build the module in the working directory)")
	fs.DurationVar(&o.duration, "duration", 20*time.Second, "sending window of each phase")
	fs.DurationVar(&o.warmup, "warmup", 10*time.Second, "an unreported open-loop phase at 50 orders/s before the measured ones (0: none)")
	fs.IntVar(&o.closed, "closed", 32, "closed-loop senders (0: no closed-loop phase)")
	fs.BoolVar(&o.target80, "target80", true, "add an open-loop phase at 80% of the target rate 0.5 × (order+outbox tx/s ÷ 4)")
	fs.IntVar(&o.maxOutstanding, "max-outstanding", 2000, "open loop: most requests awaiting an answer; an order due beyond it is skipped and counted")
	fs.DurationVar(&o.reqTimeout, "request-timeout", 10*time.Second, "timeout of one POST /orders")
	fs.DurationVar(&o.drain, "drain", 2*time.Minute, "after a phase, longest wait for its accepted orders to complete")
	fs.DurationVar(&o.readyTimeout, "ready-timeout", 2*time.Minute, "longest wait for eventfn's /readyz")
	fs.BoolVar(&o.ceilings, "ceilings", true, "measure the engines' ceilings in the same run")
	fs.DurationVar(&o.ceilingDur, "ceiling-duration", 5*time.Second, "duration of the order+outbox transaction ceiling")
	fs.IntVar(&o.ceilingRecords, "ceiling-records", 100_000, "records of the raw produce and consume ceilings")
	fs.BoolVar(&o.keyed, "idempotency-keys", false, "send each order with an Idempotency-Key of its own")
	fs.Var(envFlag(o.env), "env", "EVENTFN_KEY=VALUE passed to eventfn over the bench's settings (repeatable), e.g. -env EVENTFN_RELAY_BATCH_SIZE=1000")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory, the PostgreSQL schema and the topics")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, r := range splitList(*rates) {
		v, err := strconv.ParseFloat(r, 64)
		if err != nil || v <= 0 {
			return o, fmt.Errorf("-rates: %q is not a positive number", r)
		}
		o.rates = append(o.rates, v)
	}
	o.plots = splitList(*plots)
	switch {
	case o.duration < time.Second:
		return o, errors.New("-duration: at least 1s")
	case o.closed < 0 || o.maxOutstanding < 1 || o.ceilingRecords < 1:
		return o, errors.New("-closed must not be negative; -max-outstanding and -ceiling-records must be at least 1")
	}
	return o, nil
}

// loadMain runs the load command and returns the exit status.
func loadMain(args []string) int {
	o, err := parseLoadFlags(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "eventfn-bench load:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := runLoad(ctx, o)
	if res != nil {
		res.print(os.Stdout)
		if len(o.plots) > 0 {
			if perr := writePlot(o.plots, res.plotTitle(), res.phases); perr != nil {
				fmt.Fprintln(os.Stderr, "eventfn-bench load:", perr)
			} else {
				fmt.Printf("\nplot: %s\n", strings.Join(o.plots, ", "))
			}
		}
	}
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, "eventfn-bench load:", err)
		return 1
	case res != nil && (len(res.violations) > 0 || res.lostCount > 0):
		return 3
	}
	return 0
}

// runLoad starts eventfn, runs the phases and the ceilings, and stops
// eventfn. It returns what it measured, even when it stops early.
func runLoad(ctx context.Context, o loadOptions) (res *loadResult, err error) {
	defer func() {
		if res != nil && ctx.Err() != nil {
			res.interrupted = true
		}
	}()
	dir, err := os.MkdirTemp("", "eventfn-load")
	if err != nil {
		return nil, err
	}
	if o.keep {
		fmt.Fprintln(os.Stderr, "load: keeping", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	bin := o.app
	if bin == "" {
		fmt.Fprintln(os.Stderr, "load: building eventfn")
		if bin, err = buildApp(ctx, dir); err != nil {
			return nil, err
		}
	}
	httpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	env := map[string]string{
		"EVENTFN_PROFILE":   "local",
		"EVENTFN_DATA_DIR":  filepath.Join(dir, "data"),
		"EVENTFN_HTTP_ADDR": httpAddr,
		"EVENTFN_LOG_LEVEL": "warn",
	}
	res = &loadResult{opts: o, app: bin, started: time.Now()}
	var txDriver, txDSN string
	if o.real {
		brokers, dbURL := os.Getenv("EVENTFN_TEST_KAFKA_BROKERS"), os.Getenv("EVENTFN_TEST_DATABASE_URL")
		if brokers == "" || dbURL == "" {
			return nil, errors.New(`-real needs EVENTFN_TEST_KAFKA_BROKERS and EVENTFN_TEST_DATABASE_URL (ci/services.sh up; eval "$(ci/services.sh env)")`)
		}
		suffix := strings.ReplaceAll(uuid.NewString()[:8], "-", "")
		schema := "load_" + suffix
		url, err := withSearchPath(dbURL, schema)
		if err != nil {
			return nil, err
		}
		admin, err := sql.Open("pgx", dbURL)
		if err != nil {
			return nil, err
		}
		defer admin.Close()
		if _, err := admin.ExecContext(ctx, `CREATE SCHEMA `+quoteIdent(schema)); err != nil {
			return nil, fmt.Errorf("create schema %s: %w", schema, err)
		}
		if !o.keep {
			defer func() {
				if _, derr := admin.ExecContext(context.Background(), `DROP SCHEMA `+quoteIdent(schema)+` CASCADE`); derr != nil {
					fmt.Fprintf(os.Stderr, "load: drop schema %s: %v\n", schema, derr)
				}
			}()
		}
		env["EVENTFN_KAFKA_EMBEDDED"] = "false"
		env["EVENTFN_KAFKA_BROKERS"] = brokers
		env["EVENTFN_DATABASE_URL"] = url
		env["EVENTFN_KAFKA_TOPIC_PREFIX"] = "load" + suffix + "."
		txDriver, txDSN = "pgx", url
		res.engines = fmt.Sprintf("real: Kafka %s, PostgreSQL %s (schema %s)", brokers, redactURL(dbURL), schema)
		res.engineProcs, res.engineProcsErr = findEngines(dbURL, strings.Split(brokers, ","))
	} else {
		kafkaAddr, err := freeAddr()
		if err != nil {
			return nil, err
		}
		env["EVENTFN_KAFKA_EMBEDDED"] = "true"
		env["EVENTFN_KAFKA_BROKERS"] = kafkaAddr
		txDriver, txDSN = "sqlite", sqliteCeilingDSN(filepath.Join(dir, "ceiling.db"))
		res.engines = "embedded: kfake " + kafkaAddr + ", SQLite in " + env["EVENTFN_DATA_DIR"]
	}
	for k, v := range o.env {
		env[k] = v
	}
	res.env = env
	brokers := strings.Split(env["EVENTFN_KAFKA_BROKERS"], ",")
	prefix := env["EVENTFN_KAFKA_TOPIC_PREFIX"]
	partitions, rf := envInt(env, "EVENTFN_KAFKA_PARTITIONS", 4), envInt(env, "EVENTFN_KAFKA_REPLICATION_FACTOR", 1)

	if o.real && !o.keep {
		defer deleteTopics(brokers, prefix) // after eventfn stopped: the deferred stop below runs first
	}
	fmt.Fprintf(os.Stderr, "load: starting %s (%s)\n", bin, res.engines)
	app, err := startApp(ctx, bin, env, filepath.Join(dir, "eventfn.log"), o.readyTimeout)
	if err != nil {
		return nil, err
	}
	res.pid = app.cmd.Process.Pid
	defer func() {
		if serr := app.stop(45 * time.Second); serr != nil && err == nil {
			err = serr
		}
	}()

	topics := [3]string{prefix + "order.placed", prefix + "payment.confirmed", prefix + "email.sent"}
	w, err := startWatcher(ctx, brokers, topics, time.Now().Add(-time.Second))
	if err != nil {
		return nil, err
	}
	defer w.close()

	// The transaction ceiling first, with eventfn idle: the target phase's rate
	// derives from it.
	if o.ceilings {
		fmt.Fprintf(os.Stderr, "load: order+outbox transaction ceiling, %d clients, %s\n", ceilingClients, o.ceilingDur)
		cpuBefore, cpuErr := readCPU(res.pid, res.engineProcs)
		res.txRate, res.txErr = txCeiling(ctx, txDriver, txDSN, o.ceilingDur, 10_000_000)
		res.txCPU, res.txCPUErr = cpuSince(res.pid, res.engineProcs, cpuBefore, cpuErr)
	}

	var plan []*phase
	for _, r := range o.rates {
		plan = append(plan, newPhase(fmt.Sprintf("open %g/s", r), r, 0))
	}
	if o.closed > 0 {
		plan = append(plan, newPhase(fmt.Sprintf("closed %d", o.closed), 0, o.closed))
	}
	if o.target80 && res.txRate > 0 {
		r := float64(int(0.8 * 0.5 * res.txRate / 4))
		if r >= 1 {
			p := newPhase(fmt.Sprintf("open %g/s (80%% target)", r), r, 0)
			plan = append(plan, p)
			res.target80 = p
		}
	}

	drv := newDriver(app.url, o.maxOutstanding, o.reqTimeout, o.keyed)
	rep := startReporter(w)
	if o.warmup > 0 {
		// Not reported: the broker's JIT, the connection pools and the
		// consumer groups settle, so the phases measure steady state. Its
		// orders are still in the per-key order check.
		warm := newPhase("warm-up (not reported)", 50, 0)
		warm.Start = time.Now()
		warm.End = warm.Start.Add(o.warmup)
		rep.set(warm, "sending")
		drv.openLoop(ctx, warm)
		rep.set(warm, "draining")
		warm.finish(ctx, w, o.drain)
	}
	for _, p := range plan {
		if err := ctx.Err(); err != nil {
			break
		}
		if err := app.alive(); err != nil {
			rep.close()
			return res, err
		}
		cpuBefore, cpuErr := readCPU(res.pid, res.engineProcs)
		p.Start = time.Now()
		p.End = p.Start.Add(o.duration)
		rep.set(p, "sending")
		if p.Senders > 0 {
			drv.closedLoop(ctx, p)
		} else {
			drv.openLoop(ctx, p)
		}
		rep.set(p, "draining")
		p.finish(ctx, w, o.drain)
		p.CPU, p.CPUErr = cpuSince(res.pid, res.engineProcs, cpuBefore, cpuErr)
		res.phases = append(res.phases, p)
	}
	rep.close()
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("interrupted: %w", err)
	}
	if err := app.alive(); err != nil {
		return res, err
	}

	res.peakRSS, res.peakRSSErr = peakMemory(res.pid)

	// Every accepted order must complete; then every record of the three
	// topics since the start is read and the per-key order checked.
	deadline := time.Now().Add(o.drain)
	for {
		res.lostCount = 0
		for _, p := range res.phases {
			res.lostCount += len(p.lost(w))
		}
		if res.lostCount == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, p := range res.phases {
		res.lost = append(res.lost, p.lost(w)...)
	}
	if err := w.caughtUp(ctx, 2*time.Minute); err != nil {
		return res, err
	}
	chains, dupes := w.snapshot()
	res.violations = orderViolations(chains)
	res.checked, res.dupes = len(chains), dupes
	if len(res.violations) > 0 {
		// Where are the records of the first few? A fresh reader from the
		// start of the topics tells a missed record from a missing one.
		var ids []string
		for _, v := range first(res.violations, 5) {
			ids = append(ids, strings.TrimSuffix(strings.Fields(v)[1], ":"))
		}
		found, lerr := locate(ctx, brokers, topics, ids)
		for _, id := range ids {
			res.located = append(res.located, fmt.Sprintf("order %s on Kafka: %s", id, strings.Join(found[id], ", ")))
		}
		if lerr != nil {
			res.located = append(res.located, "locating them failed: "+lerr.Error())
		}
	}

	if o.ceilings {
		fmt.Fprintf(os.Stderr, "load: raw produce and consume ceilings, %d records\n", o.ceilingRecords)
		topic := prefix + "bench.ceiling." + uuid.NewString()[:8]
		res.produceRate, res.produceErr = produceCeiling(ctx, brokers, topic, partitions, rf, o.ceilingRecords, 3*time.Minute)
		if res.produceErr == nil {
			res.consumeRate, res.consumeErr = consumeCeiling(ctx, brokers, prefix+"bench-ceiling-"+uuid.NewString()[:8], topic, o.ceilingRecords, 3*time.Minute)
		} else {
			res.consumeErr = errors.New("not measured: the produce ceiling failed")
		}
	}
	res.finished = time.Now()
	return res, nil
}

// cpuSince is the CPU time spent since before was read.
func cpuSince(pid int, eng engineProcs, before cpuTime, beforeErr error) (cpuTime, error) {
	if beforeErr != nil {
		return cpuTime{}, beforeErr
	}
	now, err := readCPU(pid, eng)
	if err != nil {
		return cpuTime{}, err
	}
	return now.sub(before), nil
}

func envInt(env map[string]string, key string, def int) int {
	if v, err := strconv.Atoi(env[key]); err == nil {
		return v
	}
	return def
}

// deleteTopics removes every topic whose name starts with prefix.
func deleteTopics(brokers []string, prefix string) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		return
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	adm := kadm.NewClient(cl)
	td, err := adm.ListTopics(ctx)
	if err != nil {
		return
	}
	var names []string
	for _, t := range td.Names() {
		if strings.HasPrefix(t, prefix) {
			names = append(names, t)
		}
	}
	if len(names) > 0 {
		_, _ = adm.DeleteTopics(ctx, names...)
	}
}
