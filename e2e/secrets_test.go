package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventfn/eventfn/cli"
	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/wiring"
)

// TestADatabasePasswordIsNeverShown: eventfn is started, at debug level,
// against a PostgreSQL that does not answer, with a password both in the
// URL's user info and as a ?password= parameter. The start fails; neither
// its error nor any log line shows the password. The parameter form once
// reached the log and the /readyz body, and only the user info was masked.
func TestADatabasePasswordIsNeverShown(t *testing.T) {
	t.Parallel()
	const secret = "s3cr3t-marker"
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) {
		c.Database.URL = "postgres://app:" + secret + "@127.0.0.1:1/eventfn?connect_timeout=1&password=" + secret + "&sslpassword=" + secret
	})
	logs := &testenv.LogBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	built, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), logger)
	if err == nil {
		cleanup()
		_ = built
		t.Fatal("eventfn started without its database")
	}
	t.Logf("start-up error: %v", err)
	if strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("the start-up error shows the password: %v", err)
	}
	if !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("the start-up error does not say which database: %v", err)
	}
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "s3cr3t") {
			t.Errorf("a log line shows the password: %s", line)
		}
	}
}

// TestTheDataDirectoryIsPrivate: the data directory holds the embedded
// broker's log and the SQLite database, customer emails both. It was 0755 and
// the database 0644, readable by every user of the host. A data directory
// that exists with wider modes, as every earlier run left it, is narrowed.
func TestTheDataDirectoryIsPrivate(t *testing.T) {
	t.Parallel()
	cfg, err := configs.Load(configs.Options{Profile: "local"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(cfg.DataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = []string{"127.0.0.1:0"}
	cfg.HTTP.Addr = "127.0.0.1:0"
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	built, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	_ = built

	mode := func(path string) os.FileMode {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if m := mode(cfg.DataDir); m != 0o700 {
		t.Errorf("data directory mode %v, want 0700", m)
	}
	db := cfg.Database.SQLitePath(cfg.DataDir)
	for _, f := range []string{db, db + ".migrate-lock", db + "-wal", db + "-shm"} {
		if _, err := os.Stat(f); errors.Is(err, os.ErrNotExist) && f != db && f != db+".migrate-lock" {
			continue // written on the first commit
		}
		if m := mode(f); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", filepath.Base(f), m)
		}
	}
}

// tcpProxy forwards loopback connections to target until Cut, which closes
// the listener and every connection: the database vanishing mid-run.
type tcpProxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln}
	t.Cleanup(p.Cut)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); _ = u.Close() }()
			go func() { _, _ = io.Copy(c, u); _ = c.Close() }()
		}
	}()
	return p
}

func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) Cut() {
	_ = p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// TestNoSecretIsShownWhenEverythingFails: eventfn runs the order flow at
// debug level over SASL_SSL with a recognisable Kafka password and, on the
// real pass, on PostgreSQL through a URL with a recognisable password in its
// user info and as ?password=. Then the broker and the database both go away
// mid-run. Every log line, the /readyz and /metrics bodies, the failing POST
// /orders answers and the `handlers` command's output are searched for the
// secrets and the client key.
func TestNoSecretIsShownWhenEverythingFails(t *testing.T) {
	t.Parallel()
	const kafkaSecret, dbSecret = "kafka-s3cr3t-marker", "db-s3cr3t-marker"
	secured, broker := startSecuredKfake(t, saslSSL, kafkaSecret)
	e := newEngines(t)
	var proxy *tcpProxy
	cfg := e.config(t, func(c *configs.Config) {
		secured.apply(c)
		c.Log.Level = "debug"
		c.Shutdown.Timeout = 2 * time.Second
		if e.realDB {
			u, err := url.Parse(e.databaseURL)
			if err != nil {
				t.Fatal(err)
			}
			proxy = newTCPProxy(t, u.Host)
			u.Host = proxy.Addr()
			u.User = url.UserPassword(u.User.Username(), dbSecret)
			q := u.Query()
			q.Set("password", dbSecret)
			q.Set("connect_timeout", "2")
			u.RawQuery = q.Encode()
			c.Database.URL = u.String()
		}
	})
	a := startApp(t, cfg)
	id := a.placeOrder(t, "leak@example.com")
	a.waitEmailed(t, []string{id}, 60*time.Second)

	shown := &strings.Builder{}
	broker.Close()
	if proxy != nil {
		proxy.Cut()
	}
	for range 3 {
		_, status, body := a.tryPlaceOrder("after@example.com")
		fmt.Fprintf(shown, "POST /orders %d %s\n", status, body)
	}
	eventually(t, 30*time.Second, "/readyz 503 and the outage logged", func() (bool, string) {
		status, body := a.readyz()
		fmt.Fprintf(shown, "GET /readyz %d %s\n", status, body)
		logged := strings.Contains(a.logs.String(), "level=ERROR")
		return status == http.StatusServiceUnavailable && logged, fmt.Sprintf("%d %s; ERROR logged: %t", status, body, logged)
	})
	shown.WriteString(a.get(t, "/metrics"))
	if err := a.shutdown(t); err != nil {
		fmt.Fprintf(shown, "shutdown: %v\n", err) // the outbox cannot be flushed with the broker gone
	}
	shown.WriteString(a.logs.String())

	var out, errOut strings.Builder
	environ := []string{
		"EVENTFN_KAFKA_EMBEDDED=false", "EVENTFN_KAFKA_BROKERS=" + strings.Join(cfg.Kafka.Brokers, ","),
		"EVENTFN_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", "EVENTFN_KAFKA_SASL_USERNAME=eventfn", "EVENTFN_KAFKA_SASL_PASSWORD=" + kafkaSecret,
		"EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_CA_FILE=" + secured.tls.CA,
		"EVENTFN_DATABASE_URL=postgres://app:" + dbSecret + "@127.0.0.1:1/eventfn?password=" + dbSecret,
		"EVENTFN_LOG_LEVEL=debug",
	}
	for _, args := range [][]string{{"handlers"}, {"handlers", "--json"}} {
		if code := cli.Main(context.Background(), args, strings.NewReader(""), &out, &errOut, environ); code != 0 {
			t.Fatalf("eventfn %v: exit %d: %s", args, code, errOut.String())
		}
	}
	shown.WriteString(out.String() + errOut.String())

	key, err := os.ReadFile(secured.tls.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{kafkaSecret, dbSecret, keyBody(key)} {
		for _, line := range strings.Split(shown.String(), "\n") {
			if strings.Contains(line, secret) {
				t.Errorf("a secret is shown: %s", line)
			}
		}
	}
	if !strings.Contains(shown.String(), "level=DEBUG") {
		t.Error("nothing was logged at debug level: the search proves little")
	}
}
