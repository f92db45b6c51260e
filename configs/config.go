// Package configs loads eventfn's configuration: built-in defaults, then a YAML
// profile (local, compose, test, embedded in the binary), then an optional YAML
// file, then EVENTFN_* environment variables. The result is one typed Config,
// validated before anything starts.
package configs

import (
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/rawbytes"
	"github.com/knadh/koanf/v2"
)

//go:embed *.yaml
var profiles embed.FS

// EnvPrefix starts every environment variable that overrides a key: the key
// kafka.brokers is EVENTFN_KAFKA_BROKERS.
const EnvPrefix = "EVENTFN_"

// Config is the whole configuration of one eventfn process.
type Config struct {
	// Profile is the name of the built-in profile the configuration started from.
	Profile string `koanf:"profile"`
	// DataDir holds the embedded broker's log and the SQLite database.
	DataDir string `koanf:"data_dir"`
	// HTTP is the order API and health endpoints.
	HTTP HTTP `koanf:"http"`
	// Kafka is the broker eventfn consumes from and publishes to.
	Kafka Kafka `koanf:"kafka"`
	// Database holds the business tables, the inbox and the outbox.
	Database Database `koanf:"database"`
	// Relay moves committed outbox rows to Kafka.
	Relay Relay `koanf:"relay"`
	// Retention deletes forwarded outbox rows and old inbox rows.
	Retention Retention `koanf:"retention"`
	// Shutdown bounds a graceful stop.
	Shutdown Shutdown `koanf:"shutdown"`
	// Log sets the level and format of the process log.
	Log Log `koanf:"log"`
	// Handlers overrides the policy of handlers by name.
	Handlers map[string]HandlerPolicy `koanf:"handlers"`
	// Payments configures the fake payment gateway.
	Payments Payments `koanf:"payments"`
	// Run chooses which handlers this process runs and where new ones start.
	Run Run `koanf:"run"`
}

// Start positions of a consumer group that has no committed offset.
const (
	// StartEarliest reads a handler's topic from its oldest record: a handler
	// added to a running system handles the events that came before it.
	StartEarliest = "earliest"
	// StartLatest reads only the records produced after the group first joined.
	StartLatest = "latest"
)

// StartPositions are the accepted start position values.
var StartPositions = []string{StartEarliest, StartLatest}

// Run configures what one process runs.
type Run struct {
	// Handlers names the handlers this process runs; empty runs them all.
	// Every process still runs the relay: the outbox is the database's, not a
	// handler's.
	Handlers []string `koanf:"handlers"`
	// StartPosition is where a handler's consumer group starts when it has no
	// committed offset: earliest or latest. handlers.<name>.start_position
	// overrides it.
	StartPosition string `koanf:"start_position"`
}

// HTTP configures the HTTP server.
type HTTP struct {
	// Addr is host:port to listen on; port 0 picks a free one.
	Addr string `koanf:"addr"`
	// MaxBodyBytes is the largest request body accepted; larger ones get 413.
	MaxBodyBytes int64 `koanf:"max_body_bytes"`
	// ReadTimeout bounds reading one request, headers and body, from the
	// moment its connection is accepted or its previous request ended: a client
	// that trickles its body holds a connection, and a graceful stop, no longer.
	ReadTimeout time.Duration `koanf:"read_timeout"`
	// WriteTimeout bounds a request from the end of its headers to the end of
	// its answer, handler included: a client that does not read its answer
	// is cut off after it.
	WriteTimeout time.Duration `koanf:"write_timeout"`
	// IdleTimeout is how long a keep-alive connection may wait for its next
	// request; an idle connection counts against MaxConnections meanwhile.
	IdleTimeout time.Duration `koanf:"idle_timeout"`
	// MaxHeaderBytes is the largest request header block read; a larger one
	// gets 431.
	MaxHeaderBytes int `koanf:"max_header_bytes"`
	// MaxConnections caps the connections served at once on each listener
	// (the API, and the metrics one when it has its own); more wait, in the
	// kernel's accept queue, for one to end.
	MaxConnections int `koanf:"max_connections"`
	// MetricsAddr is host:port for GET /metrics alone, so that it need not be
	// exposed with the API; empty serves it on Addr with the API.
	MetricsAddr string `koanf:"metrics_addr"`
	// MaxBacklog is how many events this process's handlers may have waiting
	// before a new order is held at the door: more orders than the chain can
	// handle would only take the CPU and the database it needs. 0 never holds.
	MaxBacklog int64 `koanf:"max_backlog"`
	// BacklogWait is how long an order is held for the backlog to fall below
	// MaxBacklog before it is answered 503 with Retry-After; never more than
	// half of WriteTimeout, so that the 503 can still be written.
	BacklogWait time.Duration `koanf:"backlog_wait"`
}

// Kafka configures the broker connection.
type Kafka struct {
	// Embedded starts an in-process Kafka-protocol broker on Brokers[0].
	Embedded bool `koanf:"embedded"`
	// Brokers are the bootstrap addresses.
	Brokers []string `koanf:"brokers"`
	// Version is the Kafka protocol version the client speaks (2.1.0 or newer:
	// Kafka 4 refuses older request versions).
	Version string `koanf:"version"`
	// ClientID names this process to the broker.
	ClientID string `koanf:"client_id"`
	// TopicPrefix is put before every topic and consumer group; it lets several
	// deployments, or test runs, share one cluster.
	TopicPrefix string `koanf:"topic_prefix"`
	// Partitions is the partition count of topics eventfn creates.
	Partitions int `koanf:"partitions"`
	// ReplicationFactor is the replication factor of topics eventfn creates.
	ReplicationFactor int `koanf:"replication_factor"`
	// DeadLetterTopic receives events a handler could not process.
	DeadLetterTopic string `koanf:"dead_letter_topic"`
	// DeadLetterRetention is the retention.ms eventfn gives the dead-letter
	// topic when it creates it; 0 keeps dead letters until someone deletes
	// them (-1). Kafka's default, 7 days, deleted them unseen.
	DeadLetterRetention time.Duration `koanf:"dead_letter_retention"`
	// RunsTopic receives a record of every handler attempt, for
	// `publish --wait` and anyone watching; empty sends none.
	RunsTopic string `koanf:"runs_topic"`
	// MaxMessageBytes is the largest record eventfn produces (key, value and
	// headers). An event larger than this is refused when it is emitted; keep it
	// at or below the topics' max.message.bytes (broker default 1048588).
	MaxMessageBytes int `koanf:"max_message_bytes"`
	// SASL authenticates every Kafka client eventfn makes.
	SASL KafkaSASL `koanf:"sasl"`
	// TLS encrypts every Kafka connection eventfn makes.
	TLS KafkaTLS `koanf:"tls"`
}

// KafkaSASL configures SASL authentication to the brokers.
type KafkaSASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty means none.
	Mechanism string `koanf:"mechanism"`
	// Username is the SASL user.
	Username string `koanf:"username"`
	// Password is the SASL password; prefer PasswordFile.
	Password Secret `koanf:"password"`
	// PasswordFile is a file holding the password (a mounted secret); one
	// trailing newline is ignored.
	PasswordFile string `koanf:"password_file"`
}

// KafkaTLS configures TLS to the brokers.
type KafkaTLS struct {
	// Enabled turns TLS on; the other keys need it.
	Enabled bool `koanf:"enabled"`
	// CAFile is a PEM file of the CAs that sign the brokers' certificates;
	// empty means the system's roots.
	CAFile string `koanf:"ca_file"`
	// CertFile and KeyFile are this client's PEM certificate and key, for
	// brokers that require a client certificate (mutual TLS).
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// ServerName is the name the brokers' certificates must carry; empty
	// means each broker's host.
	ServerName string `koanf:"server_name"`
	// InsecureSkipVerify accepts any broker certificate; only the local
	// profile allows it.
	InsecureSkipVerify bool `koanf:"insecure_skip_verify"`
}

// Secret is a value that must never be shown: it prints, logs and encodes
// as a mask. Reveal returns it for the one place that needs it.
type Secret string

const secretMask = "xxxxx"

// Reveal is the secret itself.
func (s Secret) Reveal() string { return string(s) }

// String masks the secret.
func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return secretMask
}

// GoString masks the secret in %#v.
func (s Secret) GoString() string { return s.String() }

// LogValue masks the secret in slog.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText masks the secret in JSON and YAML.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// SASLMechanisms are the accepted kafka.sasl.mechanism values.
var SASLMechanisms = []string{"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"}

// Database configures the SQL database.
type Database struct {
	// URL is postgres://... or sqlite://<path>; empty means SQLite in DataDir.
	URL string `koanf:"url"`
	// MaxOpenConns caps the connection pool (PostgreSQL).
	MaxOpenConns int `koanf:"max_open_conns"`
}

// Relay configures the outbox relay.
type Relay struct {
	// PollInterval is how often an idle relay looks for new outbox rows.
	PollInterval time.Duration `koanf:"poll_interval"`
	// BatchSize is how many outbox rows one poll reads at most.
	BatchSize int `koanf:"batch_size"`
	// BatchBytes bounds the key and payload bytes one poll reads (a row
	// larger than it is read alone).
	BatchBytes int `koanf:"batch_bytes"`
}

// Retention configures the background deletion of rows eventfn no longer needs.
type Retention struct {
	// Outbox is how long a forwarded outbox row is kept; 0 keeps them all.
	Outbox time.Duration `koanf:"outbox"`
	// OutboxArchive moves forwarded rows to eventfn_outbox_archive instead of
	// deleting them.
	OutboxArchive bool `koanf:"outbox_archive"`
	// Inbox is how long an inbox row is kept; 0 keeps them all. It must be
	// longer than the retention of every topic a handler consumes: a record
	// redelivered after its inbox row is gone runs its handler again.
	Inbox time.Duration `koanf:"inbox"`
	// Interval is how often a sweep runs.
	Interval time.Duration `koanf:"interval"`
	// BatchSize is how many rows one DELETE removes at most.
	BatchSize int `koanf:"batch_size"`
}

// Shutdown configures a graceful stop.
type Shutdown struct {
	// Timeout is how long a stop may take before in-flight work is abandoned
	// (it is redelivered after a restart, never lost).
	Timeout time.Duration `koanf:"timeout"`
}

// Log configures the process log.
type Log struct {
	// Level is debug, info, warn or error.
	Level string `koanf:"level"`
	// Format is text or json.
	Format string `koanf:"format"`
}

// HandlerPolicy overrides a handler's declared policy; zero fields keep it.
type HandlerPolicy struct {
	MaxRetries     *int          `koanf:"max_retries"`
	InitialBackoff time.Duration `koanf:"initial_backoff"`
	MaxBackoff     time.Duration `koanf:"max_backoff"`
	Timeout        time.Duration `koanf:"timeout"`
	Concurrency    int           `koanf:"concurrency"`
	MaxBatch       int           `koanf:"max_batch"`
	// StartPosition overrides run.start_position for this handler.
	StartPosition string `koanf:"start_position"`
}

// Payments configures the fake payment gateway of the reference flow.
type Payments struct {
	// FailAttempts makes the first N charge attempts of every order fail.
	FailAttempts int `koanf:"fail_attempts"`
	// Delay is added to every charge.
	Delay time.Duration `koanf:"delay"`
}

// defaults are the values of every key before any profile; they also list the
// keys that environment variables may override.
func defaults() map[string]any {
	return map[string]any{
		"profile":                        "local",
		"data_dir":                       ".eventfn",
		"http.addr":                      "127.0.0.1:8080",
		"http.max_body_bytes":            int64(1 << 20),
		"http.read_timeout":              "10s",
		"http.write_timeout":             "30s",
		"http.idle_timeout":              "60s",
		"http.max_header_bytes":          64 << 10,
		"http.max_connections":           1024,
		"http.metrics_addr":              "",
		"http.max_backlog":               int64(1000),
		"http.backlog_wait":              "5s",
		"kafka.embedded":                 true,
		"kafka.brokers":                  []string{"127.0.0.1:9092"},
		"kafka.version":                  "3.6.0",
		"kafka.client_id":                "eventfn",
		"kafka.topic_prefix":             "",
		"kafka.partitions":               4,
		"kafka.replication_factor":       1,
		"kafka.runs_topic":               "eventfn.runs",
		"kafka.dead_letter_topic":        "eventfn.dead-letter",
		"kafka.dead_letter_retention":    "0s",
		"kafka.max_message_bytes":        1000000,
		"kafka.sasl.mechanism":           "",
		"kafka.sasl.username":            "",
		"kafka.sasl.password":            "",
		"kafka.sasl.password_file":       "",
		"kafka.tls.enabled":              false,
		"kafka.tls.ca_file":              "",
		"kafka.tls.cert_file":            "",
		"kafka.tls.key_file":             "",
		"kafka.tls.server_name":          "",
		"kafka.tls.insecure_skip_verify": false,
		"database.url":                   "",
		"database.max_open_conns":        16,
		"relay.poll_interval":            "1s",
		"relay.batch_size":               500,
		"relay.batch_bytes":              16 << 20,
		"retention.outbox":               "1h",
		"retention.outbox_archive":       false,
		"retention.inbox":                "0s",
		"retention.interval":             "1m",
		"retention.batch_size":           1000,
		"shutdown.timeout":               "30s",
		"log.level":                      "info",
		"log.format":                     "text",
		"payments.fail_attempts":         0,
		"payments.delay":                 "0s",
		"run.handlers":                   "",
		"run.start_position":             StartEarliest,
	}
}

// Profiles lists the built-in profile names.
func Profiles() []string {
	entries, _ := profiles.ReadDir(".")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}

// Options says where Load reads from.
type Options struct {
	// Profile is a built-in profile; empty means $EVENTFN_PROFILE, then "local".
	Profile string
	// File is an extra YAML file laid over the profile; empty means $EVENTFN_CONFIG.
	File string
	// Environ is the environment, as os.Environ returns it.
	Environ []string
	// Overrides are laid over everything else (flags set them), keyed like the YAML.
	Overrides map[string]any
}

// Load builds and validates the configuration.
func Load(opts Options) (Config, error) {
	env := envMap(opts.Environ)
	profile := opts.Profile
	if profile == "" {
		profile = env[EnvPrefix+"PROFILE"]
	}
	if profile == "" {
		profile = "local"
	}
	k := koanf.New(".")
	if err := k.Load(confmap.Provider(defaults(), "."), nil); err != nil {
		return Config{}, fmt.Errorf("load defaults: %w", err)
	}
	raw, err := profiles.ReadFile(profile + ".yaml")
	if err != nil {
		return Config{}, fmt.Errorf("profile %q does not exist; accepted: %s", profile, strings.Join(Profiles(), ", "))
	}
	if err := k.Load(rawbytes.Provider(raw), yaml.Parser()); err != nil {
		return Config{}, fmt.Errorf("profile %q: %w", profile, err)
	}
	if err := k.Set("profile", profile); err != nil {
		return Config{}, err
	}
	path := opts.File
	if path == "" {
		path = env[EnvPrefix+"CONFIG"]
	}
	if path != "" {
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	if err := checkEnvNames(env); err != nil {
		return Config{}, err
	}
	for key := range defaults() {
		name := EnvName(key)
		if v, ok := env[name]; ok {
			if key == "database.url" && v == "" && k.String(key) != "" {
				// An unset ${DATABASE_URL} in a deployment, say: an
				// empty URL means SQLite, and the orders would go to a
				// file in the data directory instead of the database.
				return Config{}, fmt.Errorf("%s is set but empty, which would run on SQLite in the data directory instead of the database profile %q or the config file names; unset it, or set it to sqlite://<path> to mean SQLite", name, profile)
			}
			if err := k.Set(key, v); err != nil {
				return Config{}, fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	for key, v := range opts.Overrides {
		if err := k.Set(key, v); err != nil {
			return Config{}, fmt.Errorf("%s: %w", key, err)
		}
	}
	var cfg Config
	err = k.UnmarshalWithConf("", &cfg, koanf.UnmarshalConf{
		Tag: "koanf",
		DecoderConfig: &mapstructure.DecoderConfig{
			DecodeHook: mapstructure.ComposeDecodeHookFunc(
				refuseLooseNumbers,
				mapstructure.StringToTimeDurationHookFunc(),
				mapstructure.StringToSliceHookFunc(","),
			),
			ErrorUnused:      true,
			WeaklyTypedInput: true,
			Result:           &cfg,
			TagName:          "koanf",
		},
	})
	if err != nil {
		return Config{}, fmt.Errorf("configuration: %w", err)
	}
	// "a, b" in a variable means the names a and b, and the brokers a and b
	// (" b" was dialled as a host named " b", which never resolves).
	for i, name := range cfg.Run.Handlers {
		cfg.Run.Handlers[i] = strings.TrimSpace(name)
	}
	for i, b := range cfg.Kafka.Brokers {
		cfg.Kafka.Brokers[i] = strings.TrimSpace(b)
	}
	if err := cfg.Kafka.SASL.readPasswordFile(); err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// durationType is the type of every duration key.
var durationType = reflect.TypeFor[time.Duration]()

// refuseLooseNumbers refuses what weakly typed decoding (which variables,
// all text, need) would otherwise turn silently into something else: a YAML
// number for a duration (timeout: 30 became 30 ns, and a handler whose
// calls could never begin looked like a database outage; the same text in a
// variable is refused for its missing unit), a fraction for a whole number
// (concurrency: 0.5 became 0, the default) and true or false for a number.
// 0 is a duration without a unit.
func refuseLooseNumbers(from, to reflect.Type, data any) (any, error) {
	v := reflect.ValueOf(data)
	switch {
	case to == durationType && from != durationType:
		switch k := from.Kind(); {
		case isWholeNumber(k) || k == reflect.Float32 || k == reflect.Float64:
			if !v.IsZero() {
				return nil, fmt.Errorf("%v: a duration needs a unit, such as %vs or %vms", data, data, data)
			}
		case k == reflect.Bool:
			return nil, fmt.Errorf("%v: not a duration (such as 30s)", data)
		}
	case isWholeNumber(to.Kind()):
		switch from.Kind() {
		case reflect.Float32, reflect.Float64:
			if f := v.Float(); f != float64(int64(f)) {
				return nil, fmt.Errorf("%v: must be a whole number", data)
			}
		case reflect.Bool:
			return nil, fmt.Errorf("%v: must be a number", data)
		}
	}
	return data, nil
}

func isWholeNumber(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// notConfiguration are EVENTFN_* variables that are not configuration: the
// test suites and ci/ scripts read them, and they may be set in the same shell
// as eventfn. Every other unknown EVENTFN_* variable is refused.
// TestNoVariableOfTheRepositoryIsRefused finds a script's new variable that is
// missing here.
var notConfiguration = map[string]bool{
	"EVENTFN_SERVICES_DIR":  true, // ci/services.sh
	"EVENTFN_CACHE_DIR":     true, // ci/services.sh
	"EVENTFN_PG_PORT":       true, // ci/services.sh
	"EVENTFN_KAFKA_TIMEOUT": true, // ci/services.sh: how long to wait for Kafka to start
	"EVENTFN_FAULTS_REPORT": true, // e2e/faults
	"EVENTFN_FLAKES_DIR":    true, // ci/flakes.sh
}

// testPrefix marks the test suites' variables (EVENTFN_TEST_KAFKA_BROKERS, ...).
const testPrefix = EnvPrefix + "TEST_"

// checkEnvNames refuses an EVENTFN_* variable that configures nothing, as a
// YAML file's unknown key is refused: a typo such as EVENTFN_DATABASE_URI
// would otherwise leave eventfn running, silently, on its defaults.
func checkEnvNames(env map[string]string) error {
	known := []string{EnvPrefix + "PROFILE", EnvPrefix + "CONFIG"}
	for key := range defaults() {
		known = append(known, EnvName(key))
	}
	var errs []error
	for name := range env {
		if slices.Contains(known, name) || notConfiguration[name] || strings.HasPrefix(name, testPrefix) {
			continue
		}
		errs = append(errs, fmt.Errorf("%s is not a configuration variable; did you mean %s? (see README, Configuration)", name, nearest(name, known)))
	}
	slices.SortFunc(errs, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return errors.Join(errs...)
}

// nearest is the candidate closest to s in edit distance.
func nearest(s string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if d := editDistance(s, c); bestD < 0 || d < bestD || (d == bestD && c < best) {
			best, bestD = c, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// EnvName is the environment variable that overrides key.
func EnvName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, EnvPrefix) {
			m[k] = v
		}
	}
	return m
}

// minHeaderBytes and maxHeaderBytes bound http.max_header_bytes: below a
// kilobyte ordinary clients behind a proxy are refused; above net/http's own
// default (1 MiB) the bound protects nothing.
const (
	minHeaderBytes = 1 << 10
	maxHeaderBytes = 1 << 20
)

// Validate reports every invalid value, each naming its key and what is accepted.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s (%s): %s", key, EnvName(key), fmt.Sprintf(format, args...)))
	}
	if _, _, err := net.SplitHostPort(c.HTTP.Addr); err != nil {
		bad("http.addr", "%q is not host:port", c.HTTP.Addr)
	}
	if c.HTTP.MaxBodyBytes < 1 {
		bad("http.max_body_bytes", "%d: must be at least 1", c.HTTP.MaxBodyBytes)
	}
	// Zero would mean "no timeout" to net/http: exactly the unbounded wait
	// these keys exist to prevent, so it is refused rather than passed on.
	if c.HTTP.ReadTimeout <= 0 {
		bad("http.read_timeout", "%s: must be a positive duration such as 10s", c.HTTP.ReadTimeout)
	}
	if c.HTTP.WriteTimeout <= 0 {
		bad("http.write_timeout", "%s: must be a positive duration such as 30s", c.HTTP.WriteTimeout)
	} else if c.HTTP.WriteTimeout < c.HTTP.ReadTimeout {
		// The write deadline runs from the end of the headers, while the
		// handler reads the body: a body that took almost the read timeout
		// would leave no time to answer.
		bad("http.write_timeout", "%s is shorter than http.read_timeout (%s): a request whose body arrives in time could not be answered", c.HTTP.WriteTimeout, c.HTTP.ReadTimeout)
	}
	if c.HTTP.IdleTimeout <= 0 {
		bad("http.idle_timeout", "%s: must be a positive duration such as 60s", c.HTTP.IdleTimeout)
	}
	if c.HTTP.MaxHeaderBytes < minHeaderBytes || c.HTTP.MaxHeaderBytes > maxHeaderBytes {
		bad("http.max_header_bytes", "%d: must be between %d and %d", c.HTTP.MaxHeaderBytes, minHeaderBytes, maxHeaderBytes)
	}
	if c.HTTP.MaxConnections < 1 {
		bad("http.max_connections", "%d: must be at least 1", c.HTTP.MaxConnections)
	}
	if c.HTTP.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.HTTP.MetricsAddr); err != nil {
			bad("http.metrics_addr", "%q is not host:port; leave it empty to serve /metrics with the API", c.HTTP.MetricsAddr)
		} else if c.HTTP.MetricsAddr == c.HTTP.Addr && port != "0" {
			bad("http.metrics_addr", "%q is http.addr; leave it empty to serve /metrics with the API", c.HTTP.MetricsAddr)
		}
	}
	if c.HTTP.MaxBacklog < 0 {
		bad("http.max_backlog", "%d: must not be negative; 0 never holds an order", c.HTTP.MaxBacklog)
	}
	if c.HTTP.BacklogWait < 0 {
		bad("http.backlog_wait", "%s: must not be negative; 0 answers 503 at once", c.HTTP.BacklogWait)
	}
	if len(c.Kafka.Brokers) == 0 {
		bad("kafka.brokers", "empty: name at least one host:port")
	}
	for _, b := range c.Kafka.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			bad("kafka.brokers", "%q is not host:port", b)
		}
	}
	if c.Kafka.Embedded && len(c.Kafka.Brokers) > 1 {
		bad("kafka.brokers", "the embedded broker listens on one address, got %d", len(c.Kafka.Brokers))
	}
	if _, err := ParseKafkaVersion(c.Kafka.Version); err != nil {
		bad("kafka.version", "%v", err)
	}
	if c.Kafka.Partitions < 1 {
		bad("kafka.partitions", "%d: must be at least 1", c.Kafka.Partitions)
	}
	if c.Kafka.ReplicationFactor < 1 {
		bad("kafka.replication_factor", "%d: must be at least 1", c.Kafka.ReplicationFactor)
	}
	if c.Kafka.DeadLetterTopic == "" {
		bad("kafka.dead_letter_topic", "empty: name a topic")
	}
	if c.Kafka.DeadLetterRetention < 0 {
		bad("kafka.dead_letter_retention", "%s: must not be negative (0 keeps dead letters until deleted)", c.Kafka.DeadLetterRetention)
	} else if c.Kafka.DeadLetterRetention%time.Millisecond != 0 {
		bad("kafka.dead_letter_retention", "%s: Kafka's retention.ms counts whole milliseconds", c.Kafka.DeadLetterRetention)
	}
	if c.Kafka.RunsTopic != "" && c.Kafka.RunsTopic == c.Kafka.DeadLetterTopic {
		// Every handler attempt would show up as a dead letter.
		bad("kafka.runs_topic", "%q is kafka.dead_letter_topic: name another topic, or leave it empty to write no run records", c.Kafka.RunsTopic)
	}
	if c.Kafka.MaxMessageBytes < 4096 {
		bad("kafka.max_message_bytes", "%d: must be at least 4096", c.Kafka.MaxMessageBytes)
	}
	c.Kafka.validateSecurity(c.Profile, bad)
	if _, err := c.Database.Driver(); err != nil {
		bad("database.url", "%v", err)
	}
	if c.Database.MaxOpenConns < 1 {
		bad("database.max_open_conns", "%d: must be at least 1", c.Database.MaxOpenConns)
	}
	if c.Relay.PollInterval <= 0 {
		bad("relay.poll_interval", "%s: must be a positive duration such as 1s", c.Relay.PollInterval)
	}
	if c.Relay.BatchSize < 1 {
		bad("relay.batch_size", "%d: must be at least 1", c.Relay.BatchSize)
	}
	if c.Relay.BatchBytes < 1 {
		bad("relay.batch_bytes", "%d: must be at least 1 (a row larger than it is read alone)", c.Relay.BatchBytes)
	}
	if c.Retention.Outbox < 0 {
		bad("retention.outbox", "%s: must not be negative (0 keeps every forwarded row)", c.Retention.Outbox)
	}
	if c.Retention.Inbox < 0 {
		bad("retention.inbox", "%s: must not be negative (0 keeps every inbox row)", c.Retention.Inbox)
	}
	if c.Retention.OutboxArchive && c.Retention.Outbox == 0 {
		bad("retention.outbox_archive", "true, but retention.outbox is 0, so nothing is ever archived: set retention.outbox")
	}
	if c.Retention.Interval <= 0 {
		bad("retention.interval", "%s: must be a positive duration such as 1m", c.Retention.Interval)
	}
	if c.Retention.BatchSize < 1 || c.Retention.BatchSize > 100000 {
		bad("retention.batch_size", "%d: must be between 1 and 100000", c.Retention.BatchSize)
	}
	if c.Shutdown.Timeout <= 0 {
		bad("shutdown.timeout", "%s: must be a positive duration such as 30s", c.Shutdown.Timeout)
	}
	if _, err := c.Log.SlogLevel(); err != nil {
		bad("log.level", "%v", err)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		bad("log.format", "%q: accepted: text, json", c.Log.Format)
	}
	if c.Payments.FailAttempts < 0 {
		bad("payments.fail_attempts", "%d: must not be negative", c.Payments.FailAttempts)
	}
	if c.Payments.Delay < 0 {
		bad("payments.delay", "%s: must not be negative", c.Payments.Delay)
	}
	if !slices.Contains(StartPositions, c.Run.StartPosition) {
		bad("run.start_position", "%q: accepted: %s", c.Run.StartPosition, strings.Join(StartPositions, ", "))
	}
	for i, name := range c.Run.Handlers {
		if strings.TrimSpace(name) == "" {
			bad("run.handlers", "name %d is empty: a comma-separated list of handler names, such as charge-payment,send-confirmation", i+1)
		} else if slices.Contains(c.Run.Handlers[:i], name) {
			bad("run.handlers", "%q is named twice", name)
		}
	}
	for name, p := range c.Handlers {
		key := "handlers." + name
		if p.StartPosition != "" && !slices.Contains(StartPositions, p.StartPosition) {
			// File only: no variable to name.
			errs = append(errs, fmt.Errorf("%s.start_position: %q: accepted: %s", key, p.StartPosition, strings.Join(StartPositions, ", ")))
		}
		if p.MaxRetries != nil && *p.MaxRetries < 0 {
			bad(key+".max_retries", "%d: must not be negative", *p.MaxRetries)
		}
		if p.InitialBackoff < 0 || p.MaxBackoff < 0 || p.Timeout < 0 {
			bad(key, "durations must not be negative")
		}
		if p.Concurrency < 0 {
			bad(key+".concurrency", "%d: must not be negative", p.Concurrency)
		}
		if p.MaxBatch < 0 {
			bad(key+".max_batch", "%d: must not be negative", p.MaxBatch)
		}
	}
	return errors.Join(errs...)
}

// SlogLevel parses Level.
func (l Log) SlogLevel() (slog.Level, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(l.Level)); err != nil {
		return 0, fmt.Errorf("%q: accepted: debug, info, warn, error", l.Level)
	}
	return lv, nil
}

// Driver says which database URL names: "sqlite" or "postgres".
func (d Database) Driver() (string, error) {
	if d.URL == "" {
		return "sqlite", nil
	}
	u, err := url.Parse(d.URL)
	if err != nil {
		// url.Parse quotes the URL, or the bad part of it, in its error:
		// often the password. Say what to fix without echoing any of it.
		return "", errors.New("not a valid URL; percent-encode special characters (%, #, @, /, ?, :) in the user name and password")
	}
	switch u.Scheme {
	case "postgres", "postgresql":
		return "postgres", nil
	case "sqlite", "file":
		// An in-memory database is a different, empty database on every
		// connection: the read pool would never see what the writer wrote.
		path := d.SQLitePath("")
		if path == "" || strings.Contains(path, ":memory:") || u.Query().Get("mode") == "memory" {
			return "", fmt.Errorf("%q keeps no file: eventfn needs an SQLite database file (sqlite://path/to/eventfn.db), or an empty URL for data_dir/eventfn.db", d.URL)
		}
		return "sqlite", nil
	}
	return "", fmt.Errorf("scheme %q: accepted: postgres://, postgresql://, sqlite://", u.Scheme)
}

// SQLitePath is the SQLite database file: the path of a sqlite:// URL, or
// eventfn.db in dataDir when the URL is empty.
func (d Database) SQLitePath(dataDir string) string {
	if d.URL == "" {
		return filepath.Join(dataDir, "eventfn.db")
	}
	u, err := url.Parse(d.URL)
	if err != nil {
		return ""
	}
	if u.Opaque != "" {
		return u.Opaque
	}
	return u.Host + u.Path
}

// Topic is the Kafka topic of an event type.
func (k Kafka) Topic(eventType string) string { return k.TopicPrefix + eventType }

// StartPosition is where handler's consumer group starts when it has no
// committed offset.
func (c Config) StartPosition(handler string) string {
	if p := c.Handlers[handler].StartPosition; p != "" {
		return p
	}
	return c.Run.StartPosition
}

// Group is the consumer group of a handler.
func (k Kafka) Group(handler string) string { return k.TopicPrefix + handler }

// ParseKafkaVersion checks a protocol version string such as 3.6.0.
func ParseKafkaVersion(v string) ([3]int, error) {
	var out [3]int
	parts := strings.Split(v, ".")
	if len(parts) < 2 || len(parts) > 4 {
		return out, fmt.Errorf("%q: accepted: a version such as 3.6.0, at least 2.1.0", v)
	}
	for i := 0; i < 3 && i < len(parts); i++ {
		var n int
		if _, err := fmt.Sscanf(parts[i], "%d", &n); err != nil {
			return out, fmt.Errorf("%q: accepted: a version such as 3.6.0, at least 2.1.0", v)
		}
		out[i] = n
	}
	if out[0] < 2 || (out[0] == 2 && out[1] < 1) {
		return out, fmt.Errorf("%q is older than 2.1.0, which Kafka 4 refuses; accepted: 2.1.0 or newer", v)
	}
	return out, nil
}
