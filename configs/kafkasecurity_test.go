package configs_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
)

// remote is the environment of a deployment on a real cluster: the secured
// settings below are refused with the embedded broker (which speaks
// PLAINTEXT only) for their own reason.
var remote = []string{"EVENTFN_PROFILE=compose", "EVENTFN_KAFKA_EMBEDDED=false"}

func TestKafkaSecuritySettingsThatCannotWorkAreRefused(t *testing.T) {
	tlsFiles := testenv.NewTLSFiles(t)
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  []string
		want string
	}{
		{"a mechanism typo", []string{"EVENTFN_KAFKA_SASL_MECHANISM=SCRAM-SHA512", "EVENTFN_KAFKA_SASL_USERNAME=u", "EVENTFN_KAFKA_SASL_PASSWORD=p"}, `kafka.sasl.mechanism (EVENTFN_KAFKA_SASL_MECHANISM): "SCRAM-SHA512": accepted: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512`},
		{"a user without a mechanism", []string{"EVENTFN_KAFKA_SASL_USERNAME=u", "EVENTFN_KAFKA_SASL_PASSWORD=p"}, "kafka.sasl.mechanism"},
		{"no password", []string{"EVENTFN_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", "EVENTFN_KAFKA_SASL_USERNAME=u"}, "kafka.sasl.password"},
		{"no user", []string{"EVENTFN_KAFKA_SASL_MECHANISM=SCRAM-SHA-512", "EVENTFN_KAFKA_SASL_PASSWORD=p"}, "kafka.sasl.username"},
		{"PLAIN in clear text", []string{"EVENTFN_KAFKA_SASL_MECHANISM=PLAIN", "EVENTFN_KAFKA_SASL_USERNAME=u", "EVENTFN_KAFKA_SASL_PASSWORD=p"}, "clear text"},
		{"a password and a password file", []string{"EVENTFN_KAFKA_SASL_PASSWORD=p", "EVENTFN_KAFKA_SASL_PASSWORD_FILE=/x"}, "not both"},
		{"a missing password file", []string{"EVENTFN_KAFKA_SASL_PASSWORD_FILE=/nonexistent/pw"}, "kafka.sasl.password_file (EVENTFN_KAFKA_SASL_PASSWORD_FILE): open /nonexistent/pw"},
		{"TLS keys with TLS off", []string{"EVENTFN_KAFKA_TLS_CA_FILE=" + tlsFiles.CA}, "kafka.tls.enabled"},
		{"skipping verification outside local", []string{"EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_INSECURE_SKIP_VERIFY=true"}, "kafka.tls.insecure_skip_verify"},
		{"a missing CA file", []string{"EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_CA_FILE=/nonexistent/ca.pem"}, "kafka.tls.ca_file"},
		{"a CA file without a certificate", []string{"EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_CA_FILE=" + notPEM}, "kafka.tls.ca_file"},
		{"a certificate without its key", []string{"EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_CERT_FILE=" + tlsFiles.ClientCert}, "kafka.tls.key_file"},
		{"a key that is not the certificate's", []string{"EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_CERT_FILE=" + tlsFiles.ClientCert, "EVENTFN_KAFKA_TLS_KEY_FILE=" + tlsFiles.ServerKey}, "kafka.tls.cert_file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := configs.Load(configs.Options{Environ: append(c.env, remote...)})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to say %q", err, c.want)
			}
		})
	}
	t.Run("the embedded broker with TLS", func(t *testing.T) {
		_, err := configs.Load(configs.Options{Environ: []string{"EVENTFN_KAFKA_TLS_ENABLED=true"}})
		if err == nil || !strings.Contains(err.Error(), "kafka.embedded") {
			t.Fatalf("err = %v, want it to name kafka.embedded", err)
		}
	})
}

func TestKafkaSecuritySettingsLoad(t *testing.T) {
	tlsFiles := testenv.NewTLSFiles(t)
	pw := filepath.Join(t.TempDir(), "password")
	if err := os.WriteFile(pw, []byte("from-a-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := configs.Load(configs.Options{Environ: append([]string{
		"EVENTFN_KAFKA_SASL_MECHANISM=SCRAM-SHA-256", "EVENTFN_KAFKA_SASL_USERNAME=app", "EVENTFN_KAFKA_SASL_PASSWORD_FILE=" + pw,
		"EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_CA_FILE=" + tlsFiles.CA,
		"EVENTFN_KAFKA_TLS_CERT_FILE=" + tlsFiles.ClientCert, "EVENTFN_KAFKA_TLS_KEY_FILE=" + tlsFiles.ClientKey,
		"EVENTFN_KAFKA_TLS_SERVER_NAME=kafka.internal",
	}, remote...)})
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Kafka.SASL.Password.Reveal(); got != "from-a-file" {
		t.Errorf("password from the file = %q, want the file's one line", got)
	}
	tc, err := cfg.Kafka.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.ServerName != "kafka.internal" || tc.InsecureSkipVerify {
		t.Errorf("TLS config does not carry the settings: %+v", tc)
	}
	local, err := configs.Load(configs.Options{Environ: []string{"EVENTFN_KAFKA_EMBEDDED=false", "EVENTFN_KAFKA_TLS_ENABLED=true", "EVENTFN_KAFKA_TLS_INSECURE_SKIP_VERIFY=true"}})
	if err != nil || !local.Kafka.TLS.InsecureSkipVerify {
		t.Errorf("the local profile refused insecure_skip_verify: %v", err)
	}
}

// TestASecretNeverPrints: the configuration, printed or logged whole, shows
// a mask where a password is.
func TestASecretNeverPrints(t *testing.T) {
	s := configs.Secret("s3cr3t-marker")
	k := configs.KafkaSASL{Mechanism: "PLAIN", Username: "u", Password: s}
	var logged strings.Builder
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("config", "sasl", k, "password", s)
	for _, out := range []string{fmt.Sprint(k), fmt.Sprintf("%+v", k), fmt.Sprintf("%#v", k), fmt.Sprintf("%s %v %q", s, s, s), logged.String()} {
		if strings.Contains(out, "s3cr3t") {
			t.Errorf("a secret shows: %s", out)
		}
	}
	if s.Reveal() != "s3cr3t-marker" {
		t.Error("Reveal does not return the secret")
	}
}
