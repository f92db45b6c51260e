package configs_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
)

func TestProfilesLoad(t *testing.T) {
	for _, p := range configs.Profiles() {
		t.Run(p, func(t *testing.T) {
			cfg, err := configs.Load(configs.Options{Profile: p})
			if err != nil {
				t.Fatal(err)
			}
			if cfg.Profile != p {
				t.Errorf("Profile = %q", cfg.Profile)
			}
		})
	}
	local, _ := configs.Load(configs.Options{})
	if local.Profile != "local" || !local.Kafka.Embedded || local.Database.URL != "" || local.HTTP.Addr != "127.0.0.1:8080" {
		t.Errorf("default profile is not the zero-infrastructure one: %+v", local)
	}
	compose, _ := configs.Load(configs.Options{Profile: "compose"})
	if compose.Kafka.Embedded || compose.Kafka.ReplicationFactor != 3 || !strings.HasPrefix(compose.Database.URL, "postgres://") {
		t.Errorf("compose profile: %+v", compose)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	cfg, err := configs.Load(configs.Options{Environ: []string{
		"EVENTFN_PROFILE=compose",
		"EVENTFN_KAFKA_BROKERS=k1:9092, k2:9092 ", // spaces were kept, and " k2" never resolved
		"EVENTFN_DATABASE_URL=postgres://u:p@db:5432/x",
		"EVENTFN_RELAY_POLL_INTERVAL=25ms",
		"EVENTFN_KAFKA_PARTITIONS=12",
		"EVENTFN_KAFKA_EMBEDDED=false",
		"UNRELATED=1",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Profile != "compose" || !slices.Equal(cfg.Kafka.Brokers, []string{"k1:9092", "k2:9092"}) ||
		cfg.Database.URL != "postgres://u:p@db:5432/x" || cfg.Relay.PollInterval != 25*time.Millisecond || cfg.Kafka.Partitions != 12 {
		t.Errorf("overrides not applied: %+v", cfg)
	}
}

func TestFileAndFlagOverrides(t *testing.T) {
	path := filepath.Join(t.TempDir(), "prod.yaml")
	if err := os.WriteFile(path, []byte("kafka:\n  embedded: false\n  brokers: [a:1]\nhandlers:\n  charge-payment:\n    max_retries: 9\n    timeout: 3s\n    max_batch: 4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(configs.Options{File: path, Overrides: map[string]any{"http.addr": "0.0.0.0:9000"}})
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.Handlers["charge-payment"]
	if cfg.Kafka.Brokers[0] != "a:1" || p.MaxRetries == nil || *p.MaxRetries != 9 || p.Timeout != 3*time.Second || p.MaxBatch != 4 || cfg.HTTP.Addr != "0.0.0.0:9000" {
		t.Errorf("file or flag not applied: %+v %+v", cfg, p)
	}
}

func TestInvalidValuesNameTheKey(t *testing.T) {
	cases := []struct {
		env  string
		want string
	}{
		{"EVENTFN_HTTP_ADDR=nonsense", "http.addr (EVENTFN_HTTP_ADDR)"},
		{"EVENTFN_KAFKA_VERSION=1.0.0", "kafka.version"},
		{"EVENTFN_KAFKA_PARTITIONS=0", "kafka.partitions"},
		{"EVENTFN_DATABASE_URL=mysql://x", "accepted: postgres://"},
		{"EVENTFN_LOG_LEVEL=loud", "accepted: debug, info, warn, error"},
		{"EVENTFN_LOG_FORMAT=xml", "accepted: text, json"},
		{"EVENTFN_RELAY_POLL_INTERVAL=0s", "relay.poll_interval"},
		{"EVENTFN_RELAY_BATCH_SIZE=0", "relay.batch_size (EVENTFN_RELAY_BATCH_SIZE): 0: must be at least 1"},
		{"EVENTFN_RELAY_BATCH_BYTES=0", "relay.batch_bytes (EVENTFN_RELAY_BATCH_BYTES): 0: must be at least 1"},
		{"EVENTFN_RELAY_BATCH_BYTES=16MB", "relay.batch_bytes"},
		{"EVENTFN_KAFKA_DEAD_LETTER_RETENTION=-1s", "kafka.dead_letter_retention (EVENTFN_KAFKA_DEAD_LETTER_RETENTION): -1s: must not be negative"},
		{"EVENTFN_KAFKA_DEAD_LETTER_RETENTION=1.5ms", "kafka.dead_letter_retention (EVENTFN_KAFKA_DEAD_LETTER_RETENTION): 1.5ms: Kafka's retention.ms counts whole milliseconds"},
		{"EVENTFN_KAFKA_DEAD_LETTER_RETENTION=30", "kafka.dead_letter_retention"},
		{"EVENTFN_SHUTDOWN_TIMEOUT=soon", "shutdown.timeout"},
		{"EVENTFN_PROFILE=nope", "accepted: compose, local, test"},
		{"EVENTFN_PAYMENTS_FAIL_ATTEMPTS=-1", "payments.fail_attempts"},
		{"EVENTFN_HTTP_READ_TIMEOUT=0s", "http.read_timeout (EVENTFN_HTTP_READ_TIMEOUT): 0s: must be a positive duration"},
		{"EVENTFN_HTTP_READ_TIMEOUT=10", "http.read_timeout"},
		{"EVENTFN_HTTP_WRITE_TIMEOUT=-1s", "http.write_timeout (EVENTFN_HTTP_WRITE_TIMEOUT)"},
		{"EVENTFN_HTTP_WRITE_TIMEOUT=5s", "http.write_timeout (EVENTFN_HTTP_WRITE_TIMEOUT): 5s is shorter than http.read_timeout (10s)"},
		{"EVENTFN_HTTP_IDLE_TIMEOUT=never", "http.idle_timeout"},
		{"EVENTFN_HTTP_MAX_HEADER_BYTES=10", "http.max_header_bytes (EVENTFN_HTTP_MAX_HEADER_BYTES): 10: must be between 1024 and 1048576"},
		{"EVENTFN_HTTP_MAX_HEADER_BYTES=1GB", "http.max_header_bytes"},
		{"EVENTFN_HTTP_MAX_CONNECTIONS=0", "http.max_connections (EVENTFN_HTTP_MAX_CONNECTIONS): 0: must be at least 1"},
		{"EVENTFN_HTTP_MAX_BACKLOG=-1", "http.max_backlog (EVENTFN_HTTP_MAX_BACKLOG): -1: must not be negative"},
		{"EVENTFN_HTTP_BACKLOG_WAIT=-1s", "http.backlog_wait (EVENTFN_HTTP_BACKLOG_WAIT): -1s: must not be negative"},
		{"EVENTFN_HTTP_METRICS_ADDR=9090", "http.metrics_addr (EVENTFN_HTTP_METRICS_ADDR): \"9090\" is not host:port"},
		{"EVENTFN_HTTP_METRICS_ADDR=127.0.0.1:8080", "http.metrics_addr (EVENTFN_HTTP_METRICS_ADDR): \"127.0.0.1:8080\" is http.addr"},
		{"EVENTFN_RUN_START_POSITION=newest", `run.start_position (EVENTFN_RUN_START_POSITION): "newest": accepted: earliest, latest`},
		{"EVENTFN_RUN_HANDLERS=charge-payment,,send-confirmation", "run.handlers (EVENTFN_RUN_HANDLERS): name 2 is empty"},
		{"EVENTFN_RUN_HANDLERS=charge-payment,charge-payment", `run.handlers (EVENTFN_RUN_HANDLERS): "charge-payment" is named twice`},
	}
	for _, c := range cases {
		t.Run(c.env, func(t *testing.T) {
			_, err := configs.Load(configs.Options{Environ: []string{c.env}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

// TestLooseValuesInAFileAreRefused: YAML gives numbers and booleans types of
// their own, which weakly typed decoding (which variables, all text, need)
// turned silently into something else: "timeout: 30" became 30 ns, and a
// handler whose calls could never begin looked like a database outage;
// "concurrency: 0.5" became 0, the default. Each is refused naming its key;
// what means what it says is taken.
func TestLooseValuesInAFileAreRefused(t *testing.T) {
	cases := []struct {
		yaml string
		want string // "" means accepted
	}{
		{"handlers:\n  charge-payment:\n    timeout: 30\n", "'handlers[charge-payment].timeout' 30: a duration needs a unit, such as 30s"},
		{"handlers:\n  charge-payment:\n    initial_backoff: 1.5\n", "'handlers[charge-payment].initial_backoff' 1.5: a duration needs a unit"},
		{"shutdown:\n  timeout: 30\n", "'shutdown.timeout' 30: a duration needs a unit"},
		{"relay:\n  poll_interval: true\n", "'relay.poll_interval' true: not a duration"},
		{"handlers:\n  charge-payment:\n    concurrency: 0.5\n", "'handlers[charge-payment].concurrency' 0.5: must be a whole number"},
		{"handlers:\n  charge-payment:\n    max_batch: true\n", "'handlers[charge-payment].max_batch' true: must be a number"},
		{"kafka:\n  partitions: 2.5\n", "'kafka.partitions' 2.5: must be a whole number"},
		{"handlers:\n  charge-payment:\n    timeout: 30s\n    concurrency: 4.0\n", ""},
		{"retention:\n  inbox: 0\n", ""},
	}
	for _, c := range cases {
		t.Run(c.yaml, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "eventfn.yaml")
			if err := os.WriteFile(path, []byte(c.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := configs.Load(configs.Options{Profile: "test", File: path})
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Fatalf("err = %v, want it to mention %q", err, c.want)
			}
		})
	}
}

// TestHTTPServerBounds: the API server's bounds are configuration with
// defaults that bound every wait, each with its variable.
func TestHTTPServerBounds(t *testing.T) {
	cfg, err := configs.Load(configs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := configs.HTTP{Addr: "127.0.0.1:8080", MaxBodyBytes: 1 << 20, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second,
		IdleTimeout: 60 * time.Second, MaxHeaderBytes: 64 << 10, MaxConnections: 1024, MaxBacklog: 1000, BacklogWait: 5 * time.Second}
	if cfg.HTTP != want {
		t.Errorf("defaults: %+v, want %+v", cfg.HTTP, want)
	}
	cfg, err = configs.Load(configs.Options{Environ: []string{
		"EVENTFN_HTTP_READ_TIMEOUT=2s",
		"EVENTFN_HTTP_WRITE_TIMEOUT=3s",
		"EVENTFN_HTTP_IDLE_TIMEOUT=4s",
		"EVENTFN_HTTP_MAX_HEADER_BYTES=8192",
		"EVENTFN_HTTP_MAX_CONNECTIONS=50",
		"EVENTFN_HTTP_METRICS_ADDR=127.0.0.1:9090",
		"EVENTFN_HTTP_MAX_BACKLOG=100",
		"EVENTFN_HTTP_BACKLOG_WAIT=1s",
	}})
	if err != nil {
		t.Fatal(err)
	}
	want = configs.HTTP{Addr: "127.0.0.1:8080", MaxBodyBytes: 1 << 20, ReadTimeout: 2 * time.Second, WriteTimeout: 3 * time.Second,
		IdleTimeout: 4 * time.Second, MaxHeaderBytes: 8192, MaxConnections: 50, MetricsAddr: "127.0.0.1:9090", MaxBacklog: 100, BacklogWait: time.Second}
	if cfg.HTTP != want {
		t.Errorf("overrides: %+v, want %+v", cfg.HTTP, want)
	}
	// Port 0 on both picks two free ports, as the test profile does for http.addr.
	if _, err := configs.Load(configs.Options{Profile: "test", Environ: []string{"EVENTFN_HTTP_METRICS_ADDR=127.0.0.1:0"}}); err != nil {
		t.Errorf("metrics on another free port refused: %v", err)
	}
}

// TestRunKeys: run.handlers is a comma-separated list (spaces around names
// ignored), run.start_position defaults to earliest, and a handler's own
// start_position overrides it; a bad per-handler value names its key.
func TestRunKeys(t *testing.T) {
	cfg, err := configs.Load(configs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Run.Handlers) != 0 || cfg.Run.StartPosition != "earliest" || cfg.StartPosition("charge-payment") != "earliest" {
		t.Errorf("defaults: %+v", cfg.Run)
	}
	path := filepath.Join(t.TempDir(), "run.yaml")
	if err := os.WriteFile(path, []byte("handlers:\n  send-confirmation:\n    start_position: earliest\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = configs.Load(configs.Options{File: path, Environ: []string{
		"EVENTFN_RUN_HANDLERS=charge-payment, send-confirmation",
		"EVENTFN_RUN_START_POSITION=latest",
	}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Run.Handlers, "|") != "charge-payment|send-confirmation" {
		t.Errorf("run.handlers = %q", cfg.Run.Handlers)
	}
	if cfg.StartPosition("charge-payment") != "latest" || cfg.StartPosition("send-confirmation") != "earliest" {
		t.Errorf("start positions: %q, %q", cfg.StartPosition("charge-payment"), cfg.StartPosition("send-confirmation"))
	}
	if err := os.WriteFile(path, []byte("handlers:\n  send-confirmation:\n    start_position: now\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = configs.Load(configs.Options{File: path})
	if want := `handlers.send-confirmation.start_position: "now": accepted: earliest, latest`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("err = %v, want %q", err, want)
	}
}

func TestANegativeMaxBatchIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "batch.yaml")
	if err := os.WriteFile(path, []byte("handlers:\n  charge-payment:\n    max_batch: -1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := configs.Load(configs.Options{File: path})
	if err == nil || !strings.Contains(err.Error(), "handlers.charge-payment.max_batch") {
		t.Fatalf("err = %v, want it to name handlers.charge-payment.max_batch", err)
	}
}

func TestUnknownKeyIsRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "typo.yaml")
	if err := os.WriteFile(path, []byte("kafka:\n  brokerz: [a:1]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := configs.Load(configs.Options{File: path})
	if err == nil || !strings.Contains(err.Error(), "brokerz") {
		t.Fatalf("err = %v, want it to name the unknown key", err)
	}
}

func TestDatabaseURL(t *testing.T) {
	cases := []struct{ url, driver, path string }{
		{"", "sqlite", filepath.Join("data", "eventfn.db")},
		{"sqlite:///var/lib/e.db", "sqlite", "/var/lib/e.db"},
		{"sqlite://rel/e.db", "sqlite", "rel/e.db"},
		{"postgres://u@h/db", "postgres", ""},
	}
	for _, c := range cases {
		d := configs.Database{URL: c.url}
		got, err := d.Driver()
		if err != nil || got != c.driver {
			t.Errorf("%q: driver %q, %v", c.url, got, err)
		}
		if c.driver == "sqlite" && d.SQLitePath("data") != c.path {
			t.Errorf("%q: path %q, want %q", c.url, d.SQLitePath("data"), c.path)
		}
	}
}

// TestConfigurationThatWouldStartSilentlyWrongIsRefused: an in-memory SQLite
// database once passed validation (the read pool saw another, empty database:
// ready, 201, and the data gone), and a mistyped EVENTFN_* variable was
// ignored while the same typo in a file was refused.
func TestConfigurationThatWouldStartSilentlyWrongIsRefused(t *testing.T) {
	cases := []struct {
		env  []string
		want string
	}{
		{[]string{"EVENTFN_DATABASE_URL=sqlite::memory:"}, "database.url"},
		{[]string{"EVENTFN_DATABASE_URL=sqlite://"}, "keeps no file"},
		{[]string{"EVENTFN_DATABASE_URL=file::memory:?cache=shared"}, "keeps no file"},
		{[]string{"EVENTFN_DATABASE_URL=sqlite:///tmp/x.db?mode=memory"}, "keeps no file"},
		{[]string{"EVENTFN_DATABASE_URI=postgres://u@h/db"}, "EVENTFN_DATABASE_URI is not a configuration variable; did you mean EVENTFN_DATABASE_URL?"},
		{[]string{"EVENTFN_KAFKA_BROKER=a:9092"}, "did you mean EVENTFN_KAFKA_BROKERS?"},
		{[]string{"EVENTFN_RELAY_BATCHSIZE=10"}, "did you mean EVENTFN_RELAY_BATCH_SIZE?"},
		// An unset ${DATABASE_URL} in a deployment ran on SQLite, without a word.
		{[]string{"EVENTFN_PROFILE=compose", "EVENTFN_DATABASE_URL="}, "EVENTFN_DATABASE_URL is set but empty"},
		// Every handler attempt showed up as a dead letter.
		{[]string{"EVENTFN_KAFKA_RUNS_TOPIC=eventfn.dead-letter", "EVENTFN_KAFKA_DEAD_LETTER_TOPIC=eventfn.dead-letter"}, "kafka.runs_topic"},
	}
	for _, c := range cases {
		t.Run(c.env[0], func(t *testing.T) {
			_, err := configs.Load(configs.Options{Environ: c.env})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to say %q", err, c.want)
			}
		})
	}
	// What the test suites and ci/ scripts set in the same shell is not refused.
	ok := []string{"EVENTFN_TEST_KAFKA_BROKERS=a:1", "EVENTFN_SERVICES_DIR=/x", "EVENTFN_KAFKA_TIMEOUT=60", "EVENTFN_DATABASE_URL=sqlite:///tmp/x.db", "PATH=/bin"}
	if _, err := configs.Load(configs.Options{Environ: ok}); err != nil {
		t.Fatalf("refused %v: %v", ok, err)
	}
}

// TestAnUnparsableDatabaseURLDoesNotEchoThePassword: url.Parse quotes the URL,
// or its bad part, in its error; a password with a stray % or # was printed
// whole or in part by the configuration error.
func TestAnUnparsableDatabaseURLDoesNotEchoThePassword(t *testing.T) {
	for _, u := range []string{
		"postgres://app:pa%zzs3cr3t@db:5432/eventfn",
		"postgres://app:s3cr3t#x@db:5432/eventfn",
		"postgres://app:s3cr3t%@db/eventfn",
	} {
		t.Run(u, func(t *testing.T) {
			_, err := configs.Load(configs.Options{Environ: []string{"EVENTFN_DATABASE_URL=" + u}})
			if err == nil {
				t.Fatal("an unparsable URL was accepted")
			}
			if strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), "%zz") {
				t.Fatalf("the error shows the password: %v", err)
			}
			if !strings.Contains(err.Error(), "database.url") || !strings.Contains(err.Error(), "percent-encode") {
				t.Errorf("err = %v, want it to name database.url and say what to fix", err)
			}
		})
	}
}

func TestRetentionSettingsThatCannotWorkAreRefused(t *testing.T) {
	cases := []struct {
		env  []string
		want string
	}{
		{[]string{"EVENTFN_RETENTION_OUTBOX=-1s"}, "retention.outbox (EVENTFN_RETENTION_OUTBOX): -1s: must not be negative"},
		{[]string{"EVENTFN_RETENTION_INBOX=-1h"}, "retention.inbox (EVENTFN_RETENTION_INBOX)"},
		{[]string{"EVENTFN_RETENTION_OUTBOX=0s", "EVENTFN_RETENTION_OUTBOX_ARCHIVE=true"}, "nothing is ever archived"},
		{[]string{"EVENTFN_RETENTION_INTERVAL=0s"}, "retention.interval"},
		{[]string{"EVENTFN_RETENTION_BATCH_SIZE=0"}, "retention.batch_size"},
		{[]string{"EVENTFN_RETENTION_INBOX=1 week"}, "retention.inbox"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.env, " "), func(t *testing.T) {
			_, err := configs.Load(configs.Options{Environ: c.env})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to say %q", err, c.want)
			}
		})
	}
	cfg, err := configs.Load(configs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Retention.Outbox != time.Hour || cfg.Retention.Inbox != 0 {
		t.Errorf("defaults: outbox %s, inbox %s; want 1h and 0 (kept)", cfg.Retention.Outbox, cfg.Retention.Inbox)
	}
}
