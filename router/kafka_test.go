package router_test

import (
	"testing"

	"github.com/IBM/sarama"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
)

// TestClientsSpeakAModernProtocol: every Sarama client eventfn builds comes from
// SaramaConfig, which speaks the configured version, never watermill-kafka's
// default 1.0 that Kafka 4 (KIP-896) no longer has to accept.
func TestClientsSpeakAModernProtocol(t *testing.T) {
	cfg, err := configs.Load(configs.Options{Profile: "compose"})
	if err != nil {
		t.Fatal(err)
	}
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	if !sc.Version.IsAtLeast(sarama.V2_1_0_0) {
		t.Fatalf("client version %s is older than 2.1", sc.Version)
	}
	if err := sc.Validate(); err != nil {
		t.Fatalf("sarama refuses the configuration: %v", err)
	}
}

// TestRealBrokerIsKIP896 proves, against the broker in EVENTFN_TEST_KAFKA_BROKERS,
// that it is a Kafka 4 broker that dropped the old request versions, and that
// eventfn's client configuration negotiates with it (the end-to-end suite then
// runs every produce, fetch and group request against it).
func TestRealBrokerIsKIP896(t *testing.T) {
	brokers := testenv.RequireKafka(t)
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = brokers
	sc, err := router.SaramaConfig(cfg.Kafka)
	if err != nil {
		t.Fatal(err)
	}
	client, err := sarama.NewClient(brokers, sc)
	if err != nil {
		t.Fatalf("eventfn's client configuration cannot talk to %v: %v", brokers, err)
	}
	defer client.Close()
	b := client.Brokers()[0]
	if err := b.Open(sc); err != nil && err != sarama.ErrAlreadyConnected {
		t.Fatal(err)
	}
	resp, err := b.ApiVersions(&sarama.ApiVersionsRequest{Version: 3, ClientSoftwareName: "eventfn", ClientSoftwareVersion: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// KIP-896 (Kafka 4.0) raised the oldest accepted Fetch to v4 and
	// OffsetCommit to v2; Produce v0-v2 stayed advertised for librdkafka.
	floors := map[int16]int16{1: 4, 8: 2} // Fetch, OffsetCommit
	seen := 0
	for _, k := range resp.ApiKeys {
		if want, ok := floors[k.ApiKey]; ok {
			seen++
			if k.MinVersion < want {
				t.Fatalf("broker accepts api %d from v%d: not a Kafka 4 (KIP-896) broker, so this test proves nothing", k.ApiKey, k.MinVersion)
			}
		}
	}
	if seen != len(floors) {
		t.Fatalf("broker did not list Fetch and OffsetCommit: %+v", resp.ApiKeys)
	}
	t.Logf("broker refuses Fetch below v4 and OffsetCommit below v2; eventfn speaks %s", sc.Version)
}
