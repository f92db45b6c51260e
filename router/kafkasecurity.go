package router

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	xscram "github.com/xdg-go/scram"

	"github.com/eventfn/eventfn/configs"
)

// KafkaClientOpts are the connection options of every franz-go client:
// TLS and SASL as configured. The handlers' consumers, the relay and the
// dead-letter producer all take them.
func KafkaClientOpts(k configs.Kafka) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	tc, err := k.TLSConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	s := k.SASL
	switch s.Mechanism {
	case "":
	case "PLAIN":
		opts = append(opts, kgo.SASL(plain.Auth{User: s.Username, Pass: s.Password.Reveal()}.AsMechanism()))
	case "SCRAM-SHA-256":
		opts = append(opts, kgo.SASL(scram.Auth{User: s.Username, Pass: s.Password.Reveal()}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		opts = append(opts, kgo.SASL(scram.Auth{User: s.Username, Pass: s.Password.Reveal()}.AsSha512Mechanism()))
	default:
		return nil, fmt.Errorf("kafka.sasl.mechanism %q: accepted: %s", s.Mechanism, strings.Join(configs.SASLMechanisms, ", "))
	}
	return opts, nil
}

// secureSarama sets TLS and SASL on a Sarama configuration as KafkaClientOpts
// does on franz-go's.
func secureSarama(c *sarama.Config, k configs.Kafka) error {
	tc, err := k.TLSConfig()
	if err != nil {
		return err
	}
	if tc != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = tc
	}
	s := k.SASL
	if s.Mechanism == "" {
		return nil
	}
	c.Net.SASL.Enable = true
	c.Net.SASL.Handshake = true
	c.Net.SASL.User = s.Username
	c.Net.SASL.Password = s.Password.Reveal()
	switch s.Mechanism {
	case "PLAIN":
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case "SCRAM-SHA-256":
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha256.New} }
	case "SCRAM-SHA-512":
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: sha512.New} }
	default:
		return fmt.Errorf("kafka.sasl.mechanism %q: accepted: %s", s.Mechanism, strings.Join(configs.SASLMechanisms, ", "))
	}
	return nil
}

// scramClient is Sarama's SCRAM conversation on xdg-go/scram, which Sarama
// leaves to its users.
type scramClient struct {
	hash func() hash.Hash
	conv *xscram.ClientConversation
}

func (c *scramClient) Begin(user, password, authzID string) error {
	client, err := xscram.HashGeneratorFcn(c.hash).NewClient(user, password, authzID)
	if err != nil {
		return fmt.Errorf("scram: %w", err)
	}
	c.conv = client.NewConversation()
	return nil
}

func (c *scramClient) Step(challenge string) (string, error) { return c.conv.Step(challenge) }
func (c *scramClient) Done() bool                            { return c.conv.Done() }

// errKafkaSetup marks a connection error that no retry can cure: a refused
// credential, an untrusted or mismatched certificate, a listener that speaks
// another protocol. Start-up ends on it at once.
var errKafkaSetup = errors.New("kafka connection settings refused")

// explainKafkaError says which configuration key to fix for an error that
// retrying cannot cure, and wraps errKafkaSetup around it; any other error
// comes back as it is.
func explainKafkaError(err error, k configs.Kafka) error {
	if err == nil {
		return nil
	}
	hint := kafkaSetupHint(err, k)
	if hint == "" {
		return err
	}
	return fmt.Errorf("%w: %s: %w", errKafkaSetup, hint, err)
}

// ExplainKafkaError is for a client that tries once, as the CLI does: the
// settings error of explainKafkaError, or, for a connection the brokers
// closed at once, the keys that usually cause it; any other error as it is.
func ExplainKafkaError(err error, k configs.Kafka) error {
	if e := explainKafkaError(err, k); e != err {
		return e
	}
	if errors.Is(err, io.EOF) && k.SASL.Mechanism != "" {
		return fmt.Errorf("the brokers closed the connection: check kafka.sasl.username and kafka.sasl.password (some brokers close it on refused credentials), and that kafka.tls.enabled (%t) and kafka.sasl.mechanism (%s) match the listener: %w",
			k.TLS.Enabled, k.SASL.Mechanism, err)
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("the brokers closed the connection: check that kafka.tls.enabled (%t) and kafka.sasl.mechanism (none) match the listener: %w", k.TLS.Enabled, err)
	}
	return err
}

func kafkaSetupHint(err error, k configs.Kafka) string {
	var (
		unknownCA x509.UnknownAuthorityError
		badHost   x509.HostnameError
		invalid   x509.CertificateInvalidError
		recordHdr tls.RecordHeaderError
		alert     tls.AlertError
		verifyErr *tls.CertificateVerificationError
	)
	switch {
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed), errors.Is(err, kerr.SaslAuthenticationFailed):
		return fmt.Sprintf("check kafka.sasl.username and kafka.sasl.password (the broker refused user %q with %s)", k.SASL.Username, k.SASL.Mechanism)
	case errors.Is(err, sarama.ErrUnsupportedSASLMechanism), errors.Is(err, kerr.UnsupportedSaslMechanism):
		return fmt.Sprintf("check kafka.sasl.mechanism: the broker does not offer %s on this listener", k.SASL.Mechanism)
	case errors.Is(err, sarama.ErrIllegalSASLState), errors.Is(err, kerr.IllegalSaslState):
		return "check kafka.sasl.mechanism and kafka.brokers: this listener does not take SASL"
	case errors.As(err, &badHost):
		return "check kafka.tls.server_name and kafka.brokers: the broker's certificate is for another name"
	case errors.As(err, &unknownCA):
		return "check kafka.tls.ca_file: the broker's certificate is not signed by a CA it names"
	case errors.As(err, &invalid):
		return "check kafka.tls.ca_file: the broker's certificate is not valid"
	case errors.As(err, &verifyErr):
		return "check kafka.tls.ca_file and kafka.tls.server_name: the broker's certificate did not verify"
	case errors.As(err, &recordHdr):
		return "check kafka.tls.enabled and kafka.brokers: the broker does not speak TLS on this port (a PLAINTEXT or SASL_PLAINTEXT listener?)"
	case errors.As(err, &alert):
		switch uint8(alert) {
		case 42, 116: // bad_certificate, certificate_required
			return "check kafka.tls.cert_file and kafka.tls.key_file: the broker requires a client certificate it trusts"
		case 48: // unknown_ca
			return "check kafka.tls.cert_file: the broker does not trust the CA of this client certificate"
		}
		return "check kafka.tls: the broker ended the TLS handshake"
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "tls: certificate required"), strings.Contains(msg, "tls: bad certificate"):
		return "check kafka.tls.cert_file and kafka.tls.key_file: the broker requires a client certificate it trusts"
	case k.TLS.Enabled && strings.Contains(msg, "first record does not look like a TLS handshake"):
		return "check kafka.tls.enabled and kafka.brokers: the broker does not speak TLS on this port"
	}
	return ""
}

// tlsHandshakeTimeout bounds probeTLS's handshake with one broker.
const tlsHandshakeTimeout = 5 * time.Second

// probeTLS completes a TLS handshake with each bootstrap broker when TLS is
// on, and returns an explained errKafkaSetup when one refuses it or never
// answers it: Sarama reports the second only after its 30 s read timeout,
// as a bare i/o timeout. A broker that cannot be reached is not its
// business; start-up waits for it.
func probeTLS(ctx context.Context, k configs.Kafka) error {
	tc, err := k.TLSConfig()
	if err != nil {
		return err
	}
	if tc == nil {
		return probePlaintext(ctx, k)
	}
	for _, b := range k.Brokers {
		c := tc.Clone()
		if c.ServerName == "" {
			host, _, _ := net.SplitHostPort(b)
			c.ServerName = host
		}
		hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: tlsHandshakeTimeout}, Config: c}
		conn, err := d.DialContext(hctx, "tcp", b)
		cancel()
		if err == nil {
			_ = conn.Close()
			continue
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" || ctx.Err() != nil {
			continue // not reachable (yet), or start-up is over anyway
		}
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("%w: check kafka.tls.enabled and kafka.brokers: %s did not complete a TLS handshake within %s (a PLAINTEXT or SASL_PLAINTEXT listener?): %w",
				errKafkaSetup, b, tlsHandshakeTimeout, err)
		}
		if e := explainKafkaError(err, k); errors.Is(e, errKafkaSetup) {
			return fmt.Errorf("broker %s: %w", b, e)
		}
	}
	return nil
}

// probePlaintext asks the brokers for their API versions without TLS. A TLS
// listener answers a plaintext request with a TLS alert, which Sarama takes
// for the length of a 350 MB response and waits 30 s for; franz-go names it.
func probePlaintext(ctx context.Context, k configs.Kafka) error {
	opts, err := KafkaClientOpts(k)
	if err != nil {
		return err
	}
	cl, err := kgo.NewClient(append(opts, kgo.SeedBrokers(k.Brokers...), kgo.ClientID(k.ClientID), kgo.DialTimeout(tlsHandshakeTimeout))...)
	if err != nil {
		return fmt.Errorf("kafka client for %v: %w", k.Brokers, err)
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, 2*tlsHandshakeTimeout)
	defer cancel()
	err = cl.Ping(pctx)
	if err != nil && strings.Contains(err.Error(), "tls") && strings.Contains(err.Error(), "plaintext") {
		return fmt.Errorf("%w: check kafka.tls.enabled: the brokers answer with TLS, which it does not speak (an SSL or SASL_SSL listener, not PLAINTEXT): %w", errKafkaSetup, err)
	}
	return nil
}
