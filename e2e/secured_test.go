package e2e

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/eventfn/eventfn/cli"
	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/wiring"
)

// A secured listener is SASL_SSL with SCRAM-SHA-512, or SSL with a required
// client certificate (mutual TLS).
const (
	saslSSL = "SASL_SSL SCRAM-SHA-512"
	mTLS    = "SSL with client certificate"
)

// securedKafka is a Kafka listener that needs TLS and, for saslSSL,
// credentials: the real broker's secured listeners (ci/services.sh) when the
// tests run on real Kafka, else an embedded broker secured the same way.
type securedKafka struct {
	kind     string
	brokers  []string
	tls      testenv.TLSFiles // CA, and the client certificate for mTLS
	user     string
	password string
}

func newSecuredKafka(t *testing.T, kind string) securedKafka {
	t.Helper()
	s := securedKafka{kind: kind}
	if len(testenv.KafkaBrokers()) > 0 {
		addrVar := map[string]string{saslSSL: "EVENTFN_TEST_KAFKA_SASL_SSL_BROKERS", mTLS: "EVENTFN_TEST_KAFKA_MTLS_BROKERS"}[kind]
		dir := os.Getenv("EVENTFN_TEST_TLS_DIR")
		addr := os.Getenv(addrVar)
		if dir == "" || addr == "" {
			t.Fatalf("tests on real Kafka need its secured listeners: %s and EVENTFN_TEST_TLS_DIR are unset (eval \"$(ci/services.sh env)\" after ci/services.sh up)", addrVar)
		}
		s.brokers = strings.Split(addr, ",")
		s.tls = testenv.TLSFiles{CA: filepath.Join(dir, "ca.pem"), ClientCert: filepath.Join(dir, "client.pem"), ClientKey: filepath.Join(dir, "client-key.pem")}
		s.user, s.password = os.Getenv("EVENTFN_TEST_KAFKA_SCRAM_USER"), os.Getenv("EVENTFN_TEST_KAFKA_SCRAM_PASSWORD")
		return s
	}
	s, _ = startSecuredKfake(t, kind, "embedded-scram-password")
	return s
}

// startSecuredKfake is an embedded broker that needs TLS and, for saslSSL,
// the password given; the test may stop it.
func startSecuredKfake(t *testing.T, kind, password string) (securedKafka, *kfake.Cluster) {
	t.Helper()
	s := securedKafka{kind: kind, tls: testenv.NewTLSFiles(t), user: "eventfn", password: password}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(4),
		kfake.AllowAutoTopicCreation(),
		kfake.TLS(s.tls.ServerConfig(t, kind == mTLS)),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, "127.0.0.1:0") }),
	}
	if kind == saslSSL {
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", s.user, s.password))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	s.brokers = c.ListenAddrs()
	return s, c
}

// apply points cfg at the listener with the settings a user would write.
func (s securedKafka) apply(c *configs.Config) {
	c.Kafka.Brokers = s.brokers
	c.Kafka.TLS = configs.KafkaTLS{Enabled: true, CAFile: s.tls.CA}
	switch s.kind {
	case saslSSL:
		c.Kafka.SASL = configs.KafkaSASL{Mechanism: "SCRAM-SHA-512", Username: s.user, Password: configs.Secret(s.password)}
	case mTLS:
		c.Kafka.TLS.CertFile, c.Kafka.TLS.KeyFile = s.tls.ClientCert, s.tls.ClientKey
	}
}

// TestTheReferenceFlowOverSecuredKafka runs an order through every handler,
// the relay, the dead-letter producer's health and topic creation, all over
// each secured listener.
func TestTheReferenceFlowOverSecuredKafka(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{saslSSL, mTLS} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			s := newSecuredKafka(t, kind)
			cfg := newEngines(t).config(t, func(c *configs.Config) {
				s.apply(c)
				c.Log.Level = "debug"
			})
			a := startApp(t, cfg)
			id := a.placeOrder(t, "secured@example.com")
			a.waitEmailed(t, []string{id}, 90*time.Second)
			if got := a.orderStatus(t, id); got != "emailed" {
				t.Fatalf("order %s is %s, want emailed", id, got)
			}
			// No secret in the debug log, /metrics or /readyz: not the
			// password, not the client's private key.
			secrets := []string{s.password}
			if kind == mTLS {
				key, err := os.ReadFile(s.tls.ClientKey)
				if err != nil {
					t.Fatal(err)
				}
				secrets = append(secrets, keyBody(key))
			}
			shown := a.logs.String() + a.get(t, "/metrics") + a.get(t, "/readyz")
			for _, secret := range secrets {
				if secret != "" && strings.Contains(shown, secret) {
					t.Errorf("a secret is shown in the log, /metrics or /readyz")
				}
			}
		})
	}
}

// TestRefusedKafkaSettingsEndStartUpAtOnce: a wrong password, a CA that did
// not sign the broker's certificate, a missing client certificate, and a
// security protocol that does not match the listener each end start-up within
// seconds, with an error that names the key to fix and what the broker said,
// and that never shows the password.
func TestRefusedKafkaSettingsEndStartUpAtOnce(t *testing.T) {
	t.Parallel()
	const wrongPassword = "wr0ng-pa55-marker"
	other := testenv.NewTLSFiles(t) // a CA that signed nothing the brokers have
	cases := []struct {
		name     string
		listener string // "" is the plaintext listener of the test engines
		edit     func(*configs.Config)
		want     []string
	}{
		{"wrong password", saslSSL, func(c *configs.Config) { c.Kafka.SASL.Password = wrongPassword },
			[]string{"kafka.sasl.password"}},
		{"untrusted CA", saslSSL, func(c *configs.Config) { c.Kafka.TLS.CAFile = other.CA },
			[]string{"kafka.tls.ca_file", "unknown authority"}},
		{"no client certificate", mTLS, func(c *configs.Config) { c.Kafka.TLS.CertFile, c.Kafka.TLS.KeyFile = "", "" },
			[]string{"kafka.tls.cert_file", "certificate"}},
		{"a client certificate of another CA", mTLS, func(c *configs.Config) { c.Kafka.TLS.CertFile, c.Kafka.TLS.KeyFile = other.ClientCert, other.ClientKey },
			[]string{"kafka.tls.cert_file", "certificate"}},
		{"no TLS to a TLS listener", mTLS, func(c *configs.Config) { c.Kafka.TLS = configs.KafkaTLS{} },
			[]string{"kafka.tls.enabled", "PLAINTEXT"}},
		{"TLS to a plaintext listener", "", func(c *configs.Config) { c.Kafka.TLS = configs.KafkaTLS{Enabled: true, CAFile: other.CA} },
			[]string{"kafka.tls.enabled", "PLAINTEXT"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEngines(t)
			cfg := e.config(t, func(c *configs.Config) {
				if tc.listener != "" {
					newSecuredKafka(t, tc.listener).apply(c)
				}
				tc.edit(c)
			})
			logs := &testenv.LogBuffer{}
			logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			// Start-up is given a minute, as a slow cluster may need; the
			// refusal must come long before.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			built, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), logger)
			if err != nil {
				t.Fatalf("build app: %v", err)
			}
			defer cleanup()
			start := time.Now()
			err = built.Run(ctx)
			took := time.Since(start)
			if err == nil {
				t.Fatal("eventfn ran with settings the broker refuses")
			}
			// It must end on the refusal, not wait out the minute: a refusal
			// taken for a broker that is still starting would retry until
			// ctx ends. (Not a time limit: on a starved machine one SASL or
			// TLS handshake can take seconds.)
			t.Logf("start-up gave up after %s", took.Round(time.Millisecond))
			if ctx.Err() != nil { // its own handshake timeouts are refusals too
				t.Errorf("start-up waited out its deadline instead of giving up on the refusal: %v", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q: %v", w, err)
				}
			}
			for _, line := range append(strings.Split(logs.String(), "\n"), err.Error()) {
				if strings.Contains(line, wrongPassword) || strings.Contains(line, "scram-password") {
					t.Errorf("a password is shown: %s", line)
				}
			}
		})
	}
}

// keyBody is the base64 middle of a PEM key: what a leak would show.
func keyBody(pem []byte) string {
	lines := strings.Split(strings.TrimSpace(string(pem)), "\n")
	if len(lines) < 3 {
		return string(pem)
	}
	return lines[1]
}

// environ is what a user exports to point the CLI at the listener: the
// password from a file, as a mounted secret gives it.
func (s securedKafka) environ(t *testing.T, cfg configs.Config, password string) []string {
	t.Helper()
	env := []string{
		"EVENTFN_PROFILE=test",
		"EVENTFN_KAFKA_EMBEDDED=false",
		"EVENTFN_KAFKA_BROKERS=" + strings.Join(s.brokers, ","),
		"EVENTFN_KAFKA_TOPIC_PREFIX=" + cfg.Kafka.TopicPrefix,
		"EVENTFN_KAFKA_TLS_ENABLED=true",
		"EVENTFN_KAFKA_TLS_CA_FILE=" + s.tls.CA,
	}
	switch s.kind {
	case saslSSL:
		pw := filepath.Join(t.TempDir(), "kafka_password")
		if err := os.WriteFile(pw, []byte(password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		env = append(env, "EVENTFN_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", "EVENTFN_KAFKA_SASL_USERNAME="+s.user, "EVENTFN_KAFKA_SASL_PASSWORD_FILE="+pw)
	case mTLS:
		env = append(env, "EVENTFN_KAFKA_TLS_CERT_FILE="+s.tls.ClientCert, "EVENTFN_KAFKA_TLS_KEY_FILE="+s.tls.ClientKey)
	}
	return env
}

// TestCLIPublishWaitOverSecuredKafka: `eventfn publish --wait` follows a
// chain through each secured listener, and with a wrong password it fails
// with the key to fix and without the password.
func TestCLIPublishWaitOverSecuredKafka(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{saslSSL, mTLS} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			s := newSecuredKafka(t, kind)
			cfg := newEngines(t).config(t, s.apply)
			startApp(t, cfg)
			orderID := "cli-" + uuid.NewString()
			var out, errOut bytes.Buffer
			code := cli.Main(t.Context(), []string{"publish", "order.placed",
				`{"order_id":"` + orderID + `","customer_email":"cli@example.com","total_cents":1200}`,
				"--wait", "--quiet", "2s", "--timeout", "60s"}, strings.NewReader(""), &out, &errOut, s.environ(t, cfg, s.password))
			if code != 0 {
				t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errOut.String())
			}
			if want := "email.sent key=\"" + orderID + "\""; !strings.Contains(out.String(), want) {
				t.Errorf("output lacks %q:\n%s", want, out.String())
			}
			if kind != saslSSL {
				return
			}
			const wrong = "wr0ng-cli-pa55"
			out.Reset()
			errOut.Reset()
			// It must give up on the refusal, not wait out its minute.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			code = cli.Main(ctx, []string{"publish", "order.placed", `{"order_id":"x","customer_email":"x@example.com","total_cents":1}`},
				strings.NewReader(""), &out, &errOut, s.environ(t, cfg, wrong))
			if code == 0 {
				t.Fatal("published with a wrong password")
			}
			if ctx.Err() != nil {
				t.Errorf("the CLI waited out its deadline instead of giving up on the refusal")
			}
			if !strings.Contains(errOut.String(), "kafka.sasl.password") || strings.Contains(out.String()+errOut.String(), wrong) {
				t.Errorf("want the error to name kafka.sasl.password and not show the password (exit %d):\n%s\n%s", code, out.String(), errOut.String())
			}
		})
	}
}
