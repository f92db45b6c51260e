package configs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
)

// readPasswordFile fills Password from PasswordFile: containers mount
// secrets as files, and a password in the environment shows in every
// process listing of the host.
func (s *KafkaSASL) readPasswordFile() error {
	if s.PasswordFile == "" {
		return nil
	}
	key := "kafka.sasl.password_file"
	if s.Password != "" {
		return fmt.Errorf("%s (%s): set it or kafka.sasl.password, not both", key, EnvName(key))
	}
	b, err := os.ReadFile(s.PasswordFile)
	if err != nil {
		// The path is not a secret; the error says whether it is missing or unreadable.
		return fmt.Errorf("%s (%s): %w", key, EnvName(key), err)
	}
	s.Password = Secret(strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"))
	if s.Password == "" {
		return fmt.Errorf("%s (%s): %s is empty", key, EnvName(key), s.PasswordFile)
	}
	return nil
}

// validateSecurity reports the SASL and TLS settings that cannot work, or
// would be silently ignored, through bad.
func (k Kafka) validateSecurity(profile string, bad func(key, format string, args ...any)) {
	s := k.SASL
	switch {
	case s.Mechanism == "":
		if s.Username != "" || s.Password != "" {
			bad("kafka.sasl.mechanism", "empty, but a user name or password is set: name one of %s", strings.Join(SASLMechanisms, ", "))
		}
	case !slices.Contains(SASLMechanisms, s.Mechanism):
		bad("kafka.sasl.mechanism", "%q: accepted: %s", s.Mechanism, strings.Join(SASLMechanisms, ", "))
	default:
		if s.Username == "" {
			bad("kafka.sasl.username", "empty: %s needs a user name", s.Mechanism)
		}
		if s.Password == "" {
			bad("kafka.sasl.password", "empty: %s needs a password (or kafka.sasl.password_file)", s.Mechanism)
		}
		if s.Mechanism == "PLAIN" && !k.TLS.Enabled {
			bad("kafka.sasl.mechanism", "PLAIN sends the password in clear text: set kafka.tls.enabled as well")
		}
	}
	t := k.TLS
	if !t.Enabled && (t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify) {
		bad("kafka.tls.enabled", "false, but other kafka.tls keys are set and would be ignored: set it to true")
	}
	if t.InsecureSkipVerify && profile != "local" {
		bad("kafka.tls.insecure_skip_verify", "refused outside the local profile (profile %q): it accepts any broker's certificate; name the CA in kafka.tls.ca_file", profile)
	}
	if k.Embedded && (s.Mechanism != "" || t.Enabled) {
		bad("kafka.embedded", "the embedded broker speaks PLAINTEXT only: set kafka.embedded to false to use kafka.sasl or kafka.tls")
	}
	if t.Enabled {
		if _, err := k.TLSConfig(); err != nil {
			var ke keyError
			if errors.As(err, &ke) {
				bad(ke.key, "%v", ke.err)
			} else {
				bad("kafka.tls", "%v", err)
			}
		}
	}
}

// keyError is an error in the value of one configuration key.
type keyError struct {
	key string
	err error
}

func (e keyError) Error() string { return e.key + ": " + e.err.Error() }
func (e keyError) Unwrap() error { return e.err }

// TLSConfig is the TLS configuration of every Kafka client, or nil when TLS
// is off.
func (k Kafka) TLSConfig() (*tls.Config, error) {
	t := k.TLS
	if !t.Enabled {
		return nil, nil
	}
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         t.ServerName,
		InsecureSkipVerify: t.InsecureSkipVerify, //nolint:gosec // refused outside the local profile by Validate
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, keyError{"kafka.tls.ca_file", err}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, keyError{"kafka.tls.ca_file", fmt.Errorf("%s holds no PEM certificate", t.CAFile)}
		}
		c.RootCAs = pool
	}
	switch {
	case t.CertFile != "" && t.KeyFile != "":
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			// LoadX509KeyPair names the files and what is wrong, never the key's bytes.
			return nil, keyError{"kafka.tls.cert_file", err}
		}
		c.Certificates = []tls.Certificate{cert}
	case t.CertFile != "":
		return nil, keyError{"kafka.tls.key_file", errors.New("empty, but kafka.tls.cert_file is set: a client certificate needs its key")}
	case t.KeyFile != "":
		return nil, keyError{"kafka.tls.cert_file", errors.New("empty, but kafka.tls.key_file is set: a client key needs its certificate")}
	}
	return c, nil
}
