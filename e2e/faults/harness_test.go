// Package faults is eventfn's fault suite: eventfn runs as real processes on a
// three-broker KRaft cluster (RF 3, min ISR 2) and PostgreSQL, takes orders at
// a steady rate, suffers one fault per scenario, recovers, and then the
// suite counts from the database, the processes' logs and Kafka: every
// accepted order must be emailed, and no payment or email may happen twice.
//
// It runs when EVENTFN_TEST_ENGINES=faults, with the engines of
// `ci/services.sh up --cluster` named by EVENTFN_TEST_KAFKA_BROKERS,
// EVENTFN_TEST_DATABASE_URL and EVENTFN_SERVICES_DIR (see docs/reliability.md);
// .ci/run does that in a network namespace of its own.
package faults

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/internal/testenv"
)

var binary string

func TestMain(m *testing.M) {
	if os.Getenv(testenv.EnginesVar) != "faults" {
		fmt.Println("faults: skipped; .ci/run runs this suite in its own pass (EVENTFN_TEST_ENGINES=faults), see docs/reliability.md")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "eventfn-faults")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "eventfn")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Dir = repoRoot()
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: build eventfn:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string {
	wd, _ := os.Getwd()
	return filepath.Join(wd, "..", "..")
}

// cluster is the engines the suite runs on.
type cluster struct {
	brokers     []string
	baseURL     string
	servicesDir string
}

func engines(t *testing.T) cluster {
	t.Helper()
	c := cluster{brokers: testenv.RequireKafka(t), baseURL: testenv.RequirePostgres(t), servicesDir: os.Getenv("EVENTFN_SERVICES_DIR")}
	if len(c.brokers) != 3 || c.servicesDir == "" {
		t.Fatalf("the fault suite needs the three brokers of `ci/services.sh up --cluster` and its EVENTFN_SERVICES_DIR; got %v and %q", c.brokers, c.servicesDir)
	}
	return c
}

// services runs ci/services.sh with the suite's services directory.
func (c cluster) services(t *testing.T, args ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot(), "ci", "services.sh"), args...)
	cmd.Env = append(os.Environ(), "EVENTFN_SERVICES_DIR="+c.servicesDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ci/services.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// waitBrokers polls until n brokers answer metadata.
func (c cluster) waitBrokers(t *testing.T, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d brokers up", n), func() (bool, string) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...), kgo.DialTimeout(time.Second))
		if err != nil {
			return false, err.Error()
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		m, err := kadm.NewClient(cl).BrokerMetadata(ctx)
		if err != nil {
			return false, err.Error()
		}
		return len(m.Brokers) == n, fmt.Sprintf("%d brokers", len(m.Brokers))
	})
}

// leaderOf returns the node id (1..3) leading partition 0 of topic.
func (c cluster) leaderOf(t *testing.T, topic string) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := kadm.NewClient(cl).Metadata(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := m.Topics[topic].Partitions[0]
	if !ok {
		t.Fatalf("no partition 0 of %s", topic)
	}
	return int(p.Leader)
}

// deployment is one scenario's eventfn: a database schema, a topic prefix,
// and the processes running on them.
type deployment struct {
	c      cluster
	dbURL  string
	prefix string
	mu     sync.Mutex
	procs  []*proc
	db     *sql.DB
}

func newDeployment(t *testing.T, c cluster) *deployment {
	t.Helper()
	d := &deployment{c: c, dbURL: testenv.PostgresSchema(t, c.baseURL), prefix: testenv.UniqueName("f") + "."}
	db, err := sql.Open("pgx", d.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	d.db = db
	t.Cleanup(func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		for _, p := range d.procs {
			p.kill()
		}
	})
	return d
}

// proc is one eventfn process.
type proc struct {
	// retired is set when a load balancer would stop sending to it, before
	// a graceful stop.
	retired atomic.Bool
	// ready is set once /readyz answered 200: traffic goes only to ready processes.
	ready atomic.Bool
	// inflight counts the suite's requests to it not yet answered.
	inflight atomic.Int32
	name     string
	cmd      *exec.Cmd
	base     string
	logs     *os.File
	done     chan struct{}
}

// start runs a new eventfn process and waits until it is ready.
func (d *deployment) start(t *testing.T, name string) *proc {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	logs, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary)
	cmd.Dir = t.TempDir()
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"EVENTFN_PROFILE=test",
		"EVENTFN_KAFKA_EMBEDDED=false",
		"EVENTFN_KAFKA_BROKERS=" + strings.Join(d.c.brokers, ","),
		"EVENTFN_KAFKA_REPLICATION_FACTOR=3",
		"EVENTFN_KAFKA_TOPIC_PREFIX=" + d.prefix,
		"EVENTFN_DATABASE_URL=" + d.dbURL,
		"EVENTFN_HTTP_ADDR=" + addr,
		"EVENTFN_DATA_DIR=" + cmd.Dir,
		"EVENTFN_SHUTDOWN_TIMEOUT=30s",
		// The default poll, not the test profile's 5 ms: replicas wake the
		// leading relay by notifications, and the outages must show that
		// nothing waits on the poll.
		"EVENTFN_RELAY_POLL_INTERVAL=1s",
	}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, base: "http://" + addr, logs: logs, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	d.mu.Lock()
	d.procs = append(d.procs, p)
	d.mu.Unlock()
	eventually(t, 90*time.Second, name+" ready", func() (bool, string) {
		select {
		case <-p.done:
			t.Fatalf("%s exited while starting:\n%s", name, p.log())
		default:
		}
		resp, err := http.Get(p.base + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
	p.ready.Store(true)
	return p
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logs.Name())
	return string(b)
}

// kill ends the process at once (SIGKILL), as a crash would.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term takes the process p out of the traffic, as a load balancer does before
// a rolling restart, then stops it gracefully and waits for it, bounded.
func (d *deployment) term(t *testing.T, p *proc) {
	t.Helper()
	d.mu.Lock()
	p.retired.Store(true)
	d.mu.Unlock()
	eventually(t, 10*time.Second, p.name+"'s requests answered", func() (bool, string) {
		n := p.inflight.Load()
		return n == 0, fmt.Sprint(n)
	})
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.kill()
		t.Fatalf("%s did not stop within 60s of SIGTERM", p.name)
	}
}

// traffic posts orders at a fixed rate to the deployment's live processes,
// as clients that cannot afford to lose an order: each order has an
// Idempotency-Key, and is sent again with it after no answer, a 5xx or a
// 409 (waiting Retry-After, else a pause that grows to 5 s) until it is
// answered 201 or 4xx, or orderDeadline passes.
type traffic struct {
	mu       sync.Mutex
	accepted []string
	statuses map[int]int // every answer, by HTTP status; 0: no answer
	errs     []string    // the first few transport errors, for the log
	orders   int         // orders sent at least once
	resent   int         // requests that sent an order again
	replayed int         // 201s for an order a request before had stored
	gaveUp   int         // orders never answered 201 or 4xx within orderDeadline
	stop     chan struct{}
	done     chan struct{}
}

// orderDeadline bounds how long a client sends one order again: far past
// every scenario's outage, so an order given up is a fault of eventfn's.
const orderDeadline = 4 * time.Minute

func (d *deployment) drive(t *testing.T, perSecond int) *traffic {
	t.Helper()
	tr := &traffic{statuses: map[int]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second}
	go func() {
		defer close(tr.done)
		tick := time.NewTicker(time.Second / time.Duration(perSecond))
		defer tick.Stop()
		var wg sync.WaitGroup
		defer wg.Wait()
		for i := 0; i < 100_000; i++ { // bounded: at most 100,000 orders
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
			wg.Go(func() { tr.order(d, client, i) })
		}
	}()
	return tr
}

// order sends order n until it is answered 201 or 4xx (see traffic).
func (tr *traffic) order(d *deployment, client *http.Client, n int) {
	key := fmt.Sprintf("fault-order-%d", n)
	body := fmt.Sprintf(`{"customer_email": "f%d@example.com", "items": [{"sku": "SKU-1", "quantity": 1, "price_cents": 100}]}`, n)
	giveUp := time.Now().Add(orderDeadline)
	pause := 200 * time.Millisecond
	for attempt := 0; ; attempt++ {
		p := d.pick(n + attempt)
		for ; p == nil; p = d.pick(n + attempt) { // no process takes requests now
			if time.Now().After(giveUp) {
				tr.count(func() { tr.gaveUp++ })
				return
			}
			time.Sleep(100 * time.Millisecond) // a client's pause before it tries again
		}
		tr.count(func() {
			if attempt == 0 {
				tr.orders++
			} else {
				tr.resent++
			}
		})
		status, retryAfter := tr.send(client, p, key, body)
		if status >= 200 && status < 500 && status != http.StatusConflict {
			return
		}
		if time.Now().After(giveUp) {
			tr.count(func() { tr.gaveUp++ })
			return
		}
		wait := max(retryAfter, pause)
		pause = min(2*pause, 5*time.Second)
		time.Sleep(wait/2 + rand.N(wait)) // a client's pause, with jitter so clients spread out
	}
}

// send posts one request for an order to p and records its answer: the
// status (0 for none) and the Retry-After it asked for.
func (tr *traffic) send(client *http.Client, p *proc, key, body string) (int, time.Duration) {
	defer p.inflight.Add(-1)
	req, err := http.NewRequest(http.MethodPost, p.base+"/orders", strings.NewReader(body))
	if err != nil {
		panic(err) // a constant method and a URL the suite built
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := client.Do(req)
	if err != nil {
		tr.count(func() {
			tr.statuses[0]++
			if len(tr.errs) < 5 {
				tr.errs = append(tr.errs, p.name+": "+err.Error())
			}
		})
		return 0, 0
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	retryAfter := time.Duration(0)
	if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
		retryAfter = time.Duration(secs) * time.Second
	}
	tr.count(func() {
		tr.statuses[resp.StatusCode]++
		if resp.StatusCode != http.StatusCreated {
			return
		}
		if m := orderID.FindSubmatch(buf.Bytes()); m != nil {
			tr.accepted = append(tr.accepted, string(m[1]))
		}
		if resp.Header.Get("Idempotent-Replayed") == "true" {
			tr.replayed++
		}
	})
	return resp.StatusCode, retryAfter
}

var orderID = regexp.MustCompile(`"id":"([^"]+)"`)

// count changes the traffic's counts under its lock.
func (tr *traffic) count(change func()) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	change()
}

// end stops the traffic and waits for the requests in flight.
func (tr *traffic) end() {
	close(tr.stop)
	<-tr.done
}

// acceptedOrders is how many orders were answered 201.
func (tr *traffic) acceptedOrders() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return len(tr.accepted)
}

// pick chooses the i-th live process round robin and counts a request to it,
// under the lock term takes to retire a process: a retired process is never
// picked after its in-flight count was read.
func (d *deployment) pick(i int) *proc {
	targets := d.live()
	d.mu.Lock()
	defer d.mu.Unlock()
	var ok []*proc
	for _, p := range targets {
		if p.ready.Load() && !p.retired.Load() {
			ok = append(ok, p)
		}
	}
	if len(ok) == 0 {
		return nil
	}
	p := ok[i%len(ok)]
	p.inflight.Add(1)
	return p
}

// live lists the processes that have not exited.
func (d *deployment) live() []*proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []*proc
	for _, p := range d.procs {
		select {
		case <-p.done:
		default:
			if !p.retired.Load() {
				out = append(out, p)
			}
		}
	}
	return out
}

// result is what a scenario counts after recovery.
type result struct {
	scenario      string
	accepted      int
	refused       map[int]int // answers other than 201, every request's
	orders        int         // orders sent
	resent        int         // requests that sent an order again
	replayed      int         // 201s for an order a request before had stored
	gaveUp        int         // orders never answered 201 or 4xx
	emailed       int
	stuck         int
	unknown       int // orders stored whose client got no 201
	unknownStuck  int
	doubleOrders  int // keys with more than one order
	doubleCharges int
	doubleEmails  int
	deadLettered  int
	drain         time.Duration
	errorLines    int      // level=ERROR lines in every process's log
	errorSample   []string // the first few distinct ERROR messages
}

var (
	chargedLine = regexp.MustCompile(`msg="payment charged".*order_id=(\S+)`)
	emailedLine = regexp.MustCompile(`msg="email sent".*subject="Your order (\S+) is confirmed"`)
	logMsg      = regexp.MustCompile(`msg=("[^"]*"|\S+)`)
)

// settle waits until every accepted order is emailed (or the deadline
// passes), then counts.
func (d *deployment) settle(t *testing.T, name string, tr *traffic, recovered time.Time, deadline time.Duration) result {
	t.Helper()
	tr.mu.Lock()
	accepted := append([]string(nil), tr.accepted...)
	refused := map[int]int{}
	for s, n := range tr.statuses {
		if s != http.StatusCreated {
			refused[s] = n
		}
	}
	r := result{scenario: name, accepted: len(accepted), refused: refused,
		orders: tr.orders, resent: tr.resent, replayed: tr.replayed, gaveUp: tr.gaveUp}
	errs := tr.errs
	tr.mu.Unlock()
	if len(errs) > 0 {
		t.Logf("requests without an answer, the first few: %v", errs)
	}
	want := map[string]bool{}
	for _, id := range accepted {
		want[id] = true
	}
	end := time.Now().Add(deadline)
	for {
		r.emailed, r.stuck = 0, 0
		rows, err := d.db.Query(`SELECT id, status FROM orders`)
		if err == nil {
			r.unknown, r.unknownStuck = 0, 0
			for rows.Next() {
				var id, status string
				if rows.Scan(&id, &status) != nil {
					continue
				}
				switch {
				case want[id] && status == "emailed":
					r.emailed++
				case want[id]:
					r.stuck++
				case status == "emailed":
					r.unknown++
				default:
					r.unknown++
					r.unknownStuck++
				}
			}
			_ = rows.Close()
		}
		if err == nil && r.emailed == len(accepted) && r.unknownStuck == 0 {
			r.drain = time.Since(recovered)
			break
		}
		if time.Now().After(end) {
			r.stuck = len(accepted) - r.emailed
			r.drain = -1
			break
		}
		time.Sleep(200 * time.Millisecond) // polling interval; the counts decide
	}
	charges, emails := map[string]int{}, map[string]int{}
	r.errorLines, r.errorSample = d.errorLines()
	for _, p := range d.allProcs() {
		sc := bufio.NewScanner(strings.NewReader(p.log()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if m := chargedLine.FindStringSubmatch(sc.Text()); m != nil {
				charges[m[1]]++
			}
			if m := emailedLine.FindStringSubmatch(sc.Text()); m != nil {
				emails[m[1]]++
			}
		}
	}
	for _, n := range charges {
		if n > 1 {
			r.doubleCharges++
		}
	}
	for _, n := range emails {
		if n > 1 {
			r.doubleEmails++
		}
	}
	if err := d.db.QueryRow(`SELECT COUNT(*) FROM (SELECT idempotency_key FROM orders GROUP BY idempotency_key HAVING COUNT(*) > 1) twice`).Scan(&r.doubleOrders); err != nil {
		t.Fatalf("count keys stored twice: %v", err)
	}
	r.deadLettered = d.deadLetters(t)
	return r
}

// errorLines counts the level=ERROR lines of every process the deployment
// started, with the first few distinct messages.
func (d *deployment) errorLines() (int, []string) {
	n, seen := 0, map[string]bool{}
	var sample []string
	for _, p := range d.allProcs() {
		sc := bufio.NewScanner(strings.NewReader(p.log()))
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if !strings.Contains(sc.Text(), " level=ERROR ") {
				continue
			}
			n++
			msg := sc.Text()
			if m := logMsg.FindStringSubmatch(msg); m != nil {
				msg = m[1]
			}
			if !seen[msg] && len(sample) < 8 {
				seen[msg] = true
				sample = append(sample, p.name+": "+sc.Text())
			}
		}
	}
	return n, sample
}

// errorsAtMost fails the scenario when its processes logged more than max
// ERROR lines: an outage is reported once and summarised at a bounded rate,
// and a clean shutdown logs none.
func (r result) errorsAtMost(t *testing.T, max int) {
	t.Helper()
	if r.errorLines > max {
		t.Errorf("%d ERROR lines, want at most %d; the first distinct ones:\n%s", r.errorLines, max, strings.Join(r.errorSample, "\n"))
	}
}

func (d *deployment) allProcs() []*proc {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]*proc(nil), d.procs...)
}

// deadLetters counts the records on the deployment's dead-letter topic.
func (d *deployment) deadLetters(t *testing.T) int {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(d.c.brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := d.prefix + "eventfn.dead-letter"
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatalf("dead-letter offsets: %v", err)
	}
	n := 0
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err == nil {
			n += int(o.Offset)
		}
	})
	return n
}

// check reports the scenario's row and fails on any loss or double effect.
func (r result) check(t *testing.T) {
	t.Helper()
	row := fmt.Sprintf("| %s | %d of %d | %s | %d (%d stored before) | %d | %d | %d | %d (%d stuck) | %d / %d / %d | %d | %s | %d |",
		r.scenario, r.accepted, r.orders, refusedText(r.refused), r.resent, r.replayed, r.gaveUp, r.emailed, r.stuck,
		r.unknown, r.unknownStuck, r.doubleOrders, r.doubleCharges, r.doubleEmails, r.deadLettered, r.drainText(), r.errorLines)
	t.Log(row)
	if len(r.errorSample) > 0 {
		t.Logf("ERROR lines, the first distinct ones:\n%s", strings.Join(r.errorSample, "\n"))
	}
	if f := os.Getenv("EVENTFN_FAULTS_REPORT"); f != "" {
		if out, err := os.OpenFile(f, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintln(out, row)
			_ = out.Close()
		}
	}
	if r.accepted == 0 {
		t.Fatal("no order was accepted: the scenario tested nothing")
	}
	if r.stuck > 0 || r.unknownStuck > 0 {
		t.Errorf("%d accepted orders and %d unanswered ones did not reach emailed", r.stuck, r.unknownStuck)
	}
	if r.gaveUp > 0 || r.accepted != r.orders {
		t.Errorf("%d of %d orders were answered 201; %d were never answered within %s", r.accepted, r.orders, r.gaveUp, orderDeadline)
	}
	if r.doubleOrders > 0 || r.doubleCharges > 0 || r.doubleEmails > 0 {
		t.Errorf("double effects: %d keys stored twice, %d orders charged twice, %d emailed twice", r.doubleOrders, r.doubleCharges, r.doubleEmails)
	}
	if r.deadLettered > 0 {
		t.Errorf("%d good events were dead-lettered", r.deadLettered)
	}
}

func (r result) drainText() string {
	if r.drain < 0 {
		return "not drained"
	}
	return r.drain.Round(100 * time.Millisecond).String()
}

func refusedText(m map[int]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for s, n := range m {
		label := fmt.Sprint(s)
		if s == 0 {
			label = "no answer"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", label, n))
	}
	return strings.Join(parts, ", ")
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %s: %s", what, timeout, detail)
		}
		time.Sleep(100 * time.Millisecond) // polling interval; the condition decides
	}
}

// waitAccepted blocks until the traffic has n accepted orders.
func waitAccepted(t *testing.T, tr *traffic, n int) {
	t.Helper()
	eventually(t, 60*time.Second, fmt.Sprintf("%d orders accepted", n), func() (bool, string) {
		c := tr.acceptedOrders()
		return c >= n, fmt.Sprint(c)
	})
}
