package relay

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/eventfn/eventfn/internal/testenv"
)

// Variables that make this test binary a lease holder of its own (see
// TestLeaseHolderProcess).
const (
	leaseHolderURLVar  = "EVENTFN_LEASE_HOLDER_URL"
	leaseHolderIdleVar = "EVENTFN_LEASE_HOLDER_IDLE_MS"
)

// testIdleTimeout shortens leaseIdleTimeout in these tests; several
// keepAliveIntervals still fit in it, so a leader slowed by a loaded machine
// keeps its lease.
const testIdleTimeout = 4 * time.Second

func openPostgres(t *testing.T, u string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// acquireAsync starts l.Acquire and returns where its result arrives.
func acquireAsync(ctx context.Context, l *pgLease, standby func()) <-chan error {
	done := make(chan error, 1)
	go func() { done <- l.Acquire(ctx, standby) }()
	return done
}

// TestMain makes this test binary a lease holder of its own when
// leaseHolderURLVar is set (TestAFrozenLeaderLosesTheLease runs it so).
func TestMain(m *testing.M) {
	if u := os.Getenv(leaseHolderURLVar); u != "" {
		if err := holdLease(u); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// holdLease takes the lease, says "leading", and says "lost" once it finds
// its lock session gone; it returns when its stdin closes.
func holdLease(u string) error {
	idle, err := strconv.Atoi(os.Getenv(leaseHolderIdleVar))
	if err != nil {
		return fmt.Errorf("%s: %w", leaseHolderIdleVar, err)
	}
	db, err := sql.Open("pgx", u)
	if err != nil {
		return err
	}
	defer db.Close()
	l := &pgLease{db: db, idleTimeout: time.Duration(idle) * time.Millisecond}
	if err := l.Acquire(context.Background(), nil); err != nil {
		return err
	}
	fmt.Println("leading")
	stdinClosed := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	for l.Leading() {
		select {
		case <-stdinClosed:
			return nil
		case <-time.After(50 * time.Millisecond): // a poll of Leading, which has no channel
		}
	}
	fmt.Println("lost")
	<-stdinClosed
	return nil
}

// TestAFrozenLeaderLosesTheLease: a leader process stopped (SIGSTOP: a
// frozen VM, a debugger, a process swapped out) kept its lock session open,
// so the standby waited without end, healthy by /readyz, while nothing was
// forwarded. PostgreSQL now ends the silent session after the lease's idle
// timeout; the standby takes over, and the leader, once it runs again,
// finds that it lost the lease rather than forwarding beside the new one.
func TestAFrozenLeaderLosesTheLease(t *testing.T) {
	base := testenv.RequirePostgres(t)
	u := testenv.PostgresSchema(t, base)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), leaseHolderURLVar+"="+u, leaseHolderIdleVar+"="+strconv.FormatInt(testIdleTimeout.Milliseconds(), 10))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	said := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			said <- sc.Text()
		}
		close(said)
	}()
	expect := func(want string, within time.Duration) {
		t.Helper()
		deadline := time.After(within)
		for {
			select {
			case line, ok := <-said:
				if !ok {
					t.Fatalf("the holder process ended before saying %q", want)
				}
				if line == want {
					return
				}
			case <-deadline:
				t.Fatalf("the holder process did not say %q within %s", want, within)
			}
		}
	}
	expect("leading", time.Minute)
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	standby := &pgLease{db: openPostgres(t, u), idleTimeout: testIdleTimeout}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stoodBy atomic.Bool
	if err := <-acquireAsync(ctx, standby, func() { stoodBy.Store(true) }); err != nil {
		t.Fatalf("the standby did not take the lease of a frozen leader: %v", err)
	}
	defer standby.Release()
	if !stoodBy.Load() {
		t.Error("the standby took the lease at once: the holder process never held it, and the test proves nothing")
	}
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	expect("lost", time.Minute)
}

// freezeProxy forwards TCP to a server until frozen, from when it forwards
// nothing more either way and closes nothing: a half-open connection, as a
// network partition or a peer's vanished NAT entry leaves it.
type freezeProxy struct {
	ln     net.Listener
	target string
	frozen atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newFreezeProxy(t *testing.T, target string) *freezeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			_ = c.Close()
		}
	})
	go p.serve()
	return p
}

// leaseBehindProxy is a lease on the database at direct (a URL), reached
// through a freezeProxy of its own.
func leaseBehindProxy(t *testing.T, direct string) (*pgLease, *freezeProxy) {
	t.Helper()
	du, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newFreezeProxy(t, du.Host)
	viaProxy := *du
	viaProxy.Host = proxy.ln.Addr().String()
	return &pgLease{db: openPostgres(t, viaProxy.String()), idleTimeout: testIdleTimeout}, proxy
}

func (p *freezeProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go p.pipe(up, c)
		go p.pipe(c, up)
	}
}

// pipe copies from src to dst until either ends; bytes read once frozen are
// never written.
func (p *freezeProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.frozen.Load() {
			// Swallow everything from here on, as a partition does.
			_, _ = io.Copy(io.Discard, src)
			return
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			_ = dst.Close()
			return
		}
	}
}

// TestALeaderCutOffByAHalfOpenConnectionLosesTheLease: a leader whose
// connection to PostgreSQL went half-open (no reset, no more packets) kept
// its lock on the server, which saw an idle session, and believed it led
// while its checks waited for answers: nobody forwarded. Now the server ends
// the silent session, the standby takes over, and the leader's own check
// gives up within its timeout and reports the lease lost.
func TestALeaderCutOffByAHalfOpenConnectionLosesTheLease(t *testing.T) {
	direct := testenv.PostgresSchema(t, testenv.RequirePostgres(t))
	leader, proxy := leaseBehindProxy(t, direct)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := leader.Acquire(ctx, nil); err != nil {
		t.Fatal(err)
	}
	defer leader.Release()
	proxy.frozen.Store(true)
	standby := &pgLease{db: openPostgres(t, direct), idleTimeout: testIdleTimeout}
	if err := <-acquireAsync(ctx, standby, nil); err != nil {
		t.Fatalf("the standby did not take the lease of a leader cut off: %v", err)
	}
	defer standby.Release()
	for leader.Leading() {
		if ctx.Err() != nil {
			t.Fatal("the leader cut off from PostgreSQL still believes it leads, beside the standby that took over")
		}
		time.Sleep(20 * time.Millisecond) // a poll of Leading, which has no channel
	}
}

// TestAStandbyWaitsThroughTheRolesTimeouts: with statement_timeout and
// lock_timeout set for the database (as managed services and careful
// operators do), the standby's wait inside pg_advisory_lock was cancelled
// every few hundred milliseconds: each time an ERROR in the log and /readyz
// flapping to 503. The standby now waits as long as the leader leads, and
// takes over when it lets go.
func TestAStandbyWaitsThroughTheRolesTimeouts(t *testing.T) {
	base := testenv.RequirePostgres(t)
	d := testenv.NewPostgresDatabase(t, base)
	admin := openPostgres(t, base)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d.Set(t, "statement_timeout", "200ms")
	d.Set(t, "lock_timeout", "100ms")
	leader := &pgLease{db: openPostgres(t, d.URL), idleTimeout: testIdleTimeout}
	if err := leader.Acquire(ctx, nil); err != nil {
		t.Fatal(err)
	}
	standby := &pgLease{db: openPostgres(t, d.URL), idleTimeout: testIdleTimeout}
	got := acquireAsync(ctx, standby, nil)
	// The standby's wait outlasts both timeouts many times over.
	testenv.AwaitAdvisoryLockWait(ctx, t, admin, d.Name(), 2*time.Second, got, "the standby's Acquire")
	leader.Release()
	if err := <-got; err != nil {
		t.Fatalf("the standby did not take over when the leader let go: %v", err)
	}
	standby.Release()
}

// TestTheLeasesSessionSettingsStayWithTheLease: the lease turns a session's
// timeouts off while it waits and gives it an idle timeout while it leads.
// A standby that took over kept the timeouts off for its own statements
// (a hold's UPDATE could wait on a row lock without end), and behind a
// pooler in session mode with an empty server_reset_query the settings
// outlived the lease: the next client of the pool got no statement_timeout
// and was ended after 10 s idle; cleaned with DISCARD ALL, it lost the
// search_path the pooler's connect_query had set. The leader now has the
// session's timeouts, and the pool's next client gets the session as it
// was.
func TestTheLeasesSessionSettingsStayWithTheLease(t *testing.T) {
	base := testenv.RequirePostgres(t)
	d := testenv.NewPostgresDatabase(t, base)
	admin := openPostgres(t, base)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d.Set(t, "statement_timeout", "30s")
	d.Set(t, "lock_timeout", "20s")
	// One server session, kept from client to client as it is, whose
	// search_path the pooler sets when it connects.
	su, err := url.Parse(testenv.PostgresSchema(t, d.URL))
	if err != nil {
		t.Fatal(err)
	}
	schema := su.Query().Get("search_path")
	pooled := testenv.PgBouncer(t, d.URL, "session", 1, schema, "server_reset_query =")
	settings := func(e interface {
		QueryRowContext(context.Context, string, ...any) *sql.Row
	}) string {
		t.Helper()
		var st, lt, it, cs string
		if err := e.QueryRowContext(ctx, `SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('idle_session_timeout'), current_schema()`).Scan(&st, &lt, &it, &cs); err != nil {
			t.Fatalf("read the session's settings: %v", err)
		}
		return fmt.Sprintf("statement_timeout=%s lock_timeout=%s idle_session_timeout=%s schema=%s", st, lt, it, cs)
	}

	// The leader in the same schema, so that the two want one lock.
	leader := &pgLease{db: openPostgres(t, su.String()), idleTimeout: testIdleTimeout}
	if err := leader.Acquire(ctx, nil); err != nil {
		t.Fatal(err)
	}
	standby := &pgLease{db: openPostgres(t, pooled), idleTimeout: testIdleTimeout}
	got := acquireAsync(ctx, standby, nil)
	testenv.AwaitAdvisoryLockWait(ctx, t, admin, d.Name(), 500*time.Millisecond, got, "the standby's Acquire")
	leader.Release()
	if err := <-got; err != nil {
		t.Fatalf("the standby did not take over: %v", err)
	}
	var leading string
	if err := standby.Fenced(ctx, func(ctx context.Context, e Execer) error {
		conn, ok := e.(*sql.Conn)
		if !ok {
			return fmt.Errorf("the lease's session is a %T, not a *sql.Conn", e)
		}
		leading = settings(conn)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := "statement_timeout=30s lock_timeout=20s idle_session_timeout=" + fmt.Sprint(testIdleTimeout.Seconds()) + "s schema=" + schema; leading != want {
		t.Errorf("the former standby leads with %s; want %s", leading, want)
	}
	standby.Release()

	next := openPostgres(t, pooled)
	next.SetMaxOpenConns(1)
	if after, want := settings(next), "statement_timeout=30s lock_timeout=20s idle_session_timeout=0 schema="+schema; after != want {
		t.Errorf("the pool's next client has %s; want the session as it was, %s", after, want)
	}
}

// TestABusyLeaderLearnsSoonThatItsSessionEnded: once the lock session has
// ended (terminated, a restart), a standby takes the lock at once, and the
// leader forwards beside it until its next check. Checks a second apart
// sent most of a 3,000-row backlog twice; the relay asks Held after every
// read, and a check older than heldCheckInterval is made again.
func TestABusyLeaderLearnsSoonThatItsSessionEnded(t *testing.T) {
	base := testenv.RequirePostgres(t)
	admin := openPostgres(t, base)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	leader := &pgLease{db: openPostgres(t, testenv.PostgresSchema(t, base)), idleTimeout: testIdleTimeout}
	if err := leader.Acquire(ctx, nil); err != nil {
		t.Fatal(err)
	}
	defer leader.Release()
	var pid int
	if err := leader.Fenced(ctx, func(ctx context.Context, e Execer) error {
		return e.(*sql.Conn).QueryRowContext(ctx, `SELECT pg_backend_pid()`).Scan(&pid)
	}); err != nil {
		t.Fatal(err)
	}
	if !leader.Held(ctx) {
		t.Fatal("the lease is not held before its session ended")
	}
	if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend($1)`, pid); err != nil {
		t.Fatal(err)
	}
	for {
		var alive bool
		if err := admin.QueryRowContext(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)`, pid).Scan(&alive); err != nil {
			t.Fatal(err)
		}
		if !alive {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the lock session was never terminated")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	// Time passes, as it does while a relay reads and produces; not
	// synchronisation: Held's answer depends only on how long it was.
	const bound = 100 * time.Millisecond
	time.Sleep(bound)
	if leader.Held(ctx) {
		t.Fatalf("the leader still believes it holds the lease %v after its session ended", bound)
	}
}

// TestAReleaseDoesNotWaitForAKeepAliveThatGetsNoAnswer: the keep-alive
// holds the lease's mutex while it checks the lock session, and Release
// waited for that mutex: against a database that did not answer, a stop
// waited out the check's leasePingTimeout (5 s) before its own bounded
// unlock (found by a fresh-eyed attack). Release now ends the check first.
func TestAReleaseDoesNotWaitForAKeepAliveThatGetsNoAnswer(t *testing.T) {
	leader, proxy := leaseBehindProxy(t, testenv.PostgresSchema(t, testenv.RequirePostgres(t)))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := leader.Acquire(ctx, nil); err != nil {
		t.Fatal(err)
	}
	proxy.frozen.Store(true)
	// The keep-alive's next check waits for an answer, holding the mutex.
	for held := 0; held < 5; {
		if leader.mu.TryLock() {
			leader.mu.Unlock()
			held = 0
		} else {
			held++
		}
		if ctx.Err() != nil {
			t.Fatal("the keep-alive never checked the lock session")
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	start := time.Now()
	leader.Release()
	// Its own unlock is bounded by 2 s; the check it waited for, by 5 s.
	if took := time.Since(start); took >= leasePingTimeout-time.Second {
		t.Fatalf("Release took %v: it waited for the keep-alive's check", took)
	}
}
