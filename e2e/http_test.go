package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
)

// slowClient is a connection that sends POST /orders headers promising a
// large body, then trickles it one byte a second.
type slowClient struct {
	conn net.Conn
	// cut is closed once the server has closed the connection (EOF or reset).
	cut chan struct{}
}

// trickle opens n slow clients to addr; they trickle until ctx ends or the
// server cuts them off.
func trickle(ctx context.Context, t *testing.T, addr string, n int) []*slowClient {
	t.Helper()
	const body = 100_000 // bytes: a day at one a second
	clients := make([]*slowClient, 0, n)
	for range n {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("slow client %d of %d: %v", len(clients)+1, n, err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		if _, err := fmt.Fprintf(conn, "POST /orders HTTP/1.1\r\nHost: eventfn\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n{", body); err != nil {
			t.Fatal(err)
		}
		c := &slowClient{conn: conn, cut: make(chan struct{})}
		go func() {
			// The answer (408), then EOF, or a reset: either way the server let go.
			_, _ = io.Copy(io.Discard, conn)
			close(c.cut)
		}()
		go func() {
			tick := time.NewTicker(time.Second) // the attack's pace, not synchronisation
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-c.cut:
					return
				case <-tick.C:
				}
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}()
		clients = append(clients, c)
	}
	return clients
}

// held counts the slow clients whose connection the server still holds.
func held(clients []*slowClient) int {
	n := 0
	for _, c := range clients {
		select {
		case <-c.cut:
		default:
			n++
		}
	}
	return n
}

// freshGet is a new client's request: a connection of its own (no keep-alive
// connection left over from earlier requests), answered within timeout or not.
func freshGet(url string, timeout time.Duration) (int, time.Duration, error) {
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	start := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		return 0, time.Since(start), err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, time.Since(start), nil
}

// TestSlowClientsHoldNeitherTheServerNorItsShutdown: only a header timeout
// was set, and 200 connections trickling a body to POST /orders were all
// still held 45 s later; on SIGINT the server waited for them until
// shutdown.timeout. Now the read timeout cuts a trickling client off, the
// connection bound keeps them from taking every descriptor, a fresh client is
// still answered, and a stop waits for none of them beyond the read timeout,
// or, when a request outlives shutdown.timeout, closes its connection.
func TestSlowClientsHoldNeitherTheServerNorItsShutdown(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		edit func(*configs.Config)
		// slow clients before the fresh request, and during the stop
		before, during int
		// freshWithin bounds the fresh client's wait; stopWithin, Run's return.
		freshWithin, stopWithin time.Duration
		// stopErr is what Run's error says, or "" for none.
		stopErr string
	}{
		{
			// 200 slow clients against 50 connections: the fresh client waits
			// in the accept queue behind 150 of them, each cut off after 1 s.
			name: "the read timeout cuts slow clients off",
			edit: func(c *configs.Config) {
				c.HTTP.ReadTimeout = time.Second
				c.HTTP.WriteTimeout = 2 * time.Second
				c.HTTP.IdleTimeout = 2 * time.Second
				c.HTTP.MaxConnections = 50
				c.Shutdown.Timeout = 20 * time.Second
			},
			before: 200, during: 40,
			freshWithin: 15 * time.Second, stopWithin: 8 * time.Second,
		},
		{
			// A read timeout longer than the stop's: the requests in flight
			// at the deadline have their connections closed, not left open.
			name: "the shutdown deadline closes what is left",
			edit: func(c *configs.Config) {
				c.HTTP.ReadTimeout = time.Minute
				c.HTTP.WriteTimeout = time.Minute
				c.Shutdown.Timeout = time.Second
			},
			before: 200, during: 0,
			freshWithin: 5 * time.Second, stopWithin: 8 * time.Second,
			stopErr: "cut off",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEngines(t)
			a := startApp(t, e.config(t, tc.edit))
			addr := strings.TrimPrefix(a.base, "http://")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()

			slow := trickle(ctx, t, addr, tc.before)
			status, took, err := freshGet(a.base+"/healthz", tc.freshWithin)
			if err != nil || status != http.StatusOK {
				t.Fatalf("a fresh client behind %d slow ones: %d %v after %s", len(slow), status, err, took)
			}
			t.Logf("a fresh client behind %d slow ones was answered in %s; %d still held", len(slow), took.Round(time.Microsecond), held(slow))

			slow = append(slow, trickle(ctx, t, addr, tc.during)...)
			stillHeld := held(slow)
			start := time.Now()
			a.cancel()
			a.cancel = nil // stopped here, not by the harness
			select {
			case err := <-a.done:
				t.Logf("Run returned %s after the stop with %d slow clients held: %v", time.Since(start).Round(time.Millisecond), stillHeld, err)
				switch {
				case tc.stopErr == "" && err != nil:
					t.Errorf("Run: %v\n%s", err, a.logs.String())
				case tc.stopErr != "" && (err == nil || !strings.Contains(err.Error(), tc.stopErr)):
					t.Errorf("Run: %v, want it to say %q", err, tc.stopErr)
				}
			case <-time.After(tc.stopWithin):
				t.Fatalf("Run did not return within %s of the stop with %d slow clients held", tc.stopWithin, stillHeld)
			}
			a.cleanup()
			eventually(t, 5*time.Second, "every slow client let go", func() (bool, string) {
				n := held(slow)
				return n == 0, fmt.Sprintf("%d of %d still held", n, len(slow))
			})
		})
	}
}

// TestMetricsOnTheirOwnAddress: with http.metrics_addr set, /metrics is not
// exposed with the API, and the metrics address serves nothing else.
func TestMetricsOnTheirOwnAddress(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	for _, tc := range []struct {
		name        string
		metricsAddr string
	}{
		{"with the API", ""},
		{"on an address of their own", "127.0.0.1:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := startApp(t, e.config(t, func(c *configs.Config) { c.HTTP.MetricsAddr = tc.metricsAddr }))
			metrics := a.base
			want := map[string]int{a.base + "/metrics": http.StatusOK, a.base + "/healthz": http.StatusOK}
			if tc.metricsAddr != "" {
				if a.MetricsAddr() == "" {
					t.Fatal("no metrics address bound")
				}
				metrics = "http://" + a.MetricsAddr()
				want = map[string]int{
					a.base + "/metrics":  http.StatusNotFound,
					a.base + "/healthz":  http.StatusOK,
					metrics + "/metrics": http.StatusOK,
					metrics + "/healthz": http.StatusNotFound,
					metrics + "/orders":  http.StatusNotFound,
				}
			}
			for url, status := range want {
				resp, err := http.Get(url)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != status {
					t.Errorf("GET %s: %d, want %d", url, resp.StatusCode, status)
				}
				if strings.HasPrefix(url, metrics+"/metrics") && status == http.StatusOK && !strings.Contains(string(body), "eventfn_outbox_pending") {
					t.Errorf("GET %s serves no eventfn metric:\n%.500s", url, body)
				}
			}
		})
	}
}

// countingBroker is an embedded Kafka broker that counts the connections it
// accepts and the Metadata requests it serves.
type countingBroker struct {
	cluster  *kfake.Cluster
	conns    atomic.Int64
	metadata atomic.Int64
}

func startCountingBroker(t *testing.T) *countingBroker {
	t.Helper()
	b := &countingBroker{}
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(4),
		kfake.AllowAutoTopicCreation(),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			l, err := net.Listen(network, "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			return countingListener{Listener: l, n: &b.conns}, nil
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(c.Close) })
	// Observe only: not handled, so the broker answers as usual and the
	// function stays for the next request.
	c.ControlKey(kmsg.Metadata.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		b.metadata.Add(1)
		return nil, nil, false
	})
	b.cluster = c
	return b
}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// TestReadyzDoesNotReachTheBrokerPerCall: /readyz ran the runtime's check on
// every call, a Metadata request to Kafka and a database ping each, so any
// caller could make eventfn send requests to its broker as fast as it could
// call. Now N calls send none of their own: the check runs in the background
// at its own pace. A stopped broker still shows as 503 within a few seconds.
// It counts at the broker, so it runs on the embedded one.
func TestReadyzDoesNotReachTheBrokerPerCall(t *testing.T) {
	t.Parallel()
	if testenvRealKafka() {
		t.Skip("counts requests at the broker and stops it: runs in the embedded pass")
	}
	b := startCountingBroker(t)
	e := engines{brokers: b.cluster.ListenAddrs(), databaseURL: "sqlite://" + t.TempDir() + "/eventfn.db"}
	if u := testenv.DatabaseURL(); u != "" {
		e.databaseURL = testenv.PostgresSchema(t, u)
	}
	a := startApp(t, e.config(t, func(c *configs.Config) { c.Shutdown.Timeout = 3 * time.Second }))

	const calls = 200
	conns, metadata := b.conns.Load(), b.metadata.Load()
	start := time.Now()
	client := &http.Client{Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 10 {
		wg.Go(func() {
			for range calls / 10 {
				resp, err := client.Get(a.base + "/readyz")
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	newConns, newMetadata := b.conns.Load()-conns, b.metadata.Load()-metadata
	t.Logf("%d /readyz calls in %s: %d broker connections opened, %d Metadata requests served (all clients of the process)",
		calls, took.Round(time.Millisecond), newConns, newMetadata)
	if failed.Load() > 0 {
		t.Fatalf("%d of %d /readyz calls were not 200", failed.Load(), calls)
	}
	// The background check may run a few times meanwhile (every 2 s), and
	// the consumers refresh their metadata now and then: a handful, never
	// one per call.
	if newMetadata >= calls/4 {
		t.Errorf("%d /readyz calls made the broker serve %d Metadata requests", calls, newMetadata)
	}
	if newConns >= calls/4 {
		t.Errorf("%d /readyz calls opened %d broker connections", calls, newConns)
	}

	stopped := time.Now()
	b.cluster.Close()
	eventually(t, 15*time.Second, "/readyz 503 with the broker stopped", func() (bool, string) {
		status, _, err := freshGet(a.base+"/readyz", 5*time.Second)
		return err == nil && status == http.StatusServiceUnavailable, fmt.Sprintf("%d %v", status, err)
	})
	t.Logf("/readyz turned 503 %s after the broker stopped", time.Since(stopped).Round(time.Millisecond))

	// The broker is gone for good: the stop cannot flush or commit, and says
	// so; that it returns is what matters here.
	a.cancel()
	a.cancel = nil
	select {
	case <-a.done:
	case <-time.After(60 * time.Second):
		t.Errorf("the app did not stop with the broker gone")
	}
	a.cleanup()
}
