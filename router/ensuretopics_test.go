package router_test

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/internal/testenv"
	"github.com/eventfn/eventfn/router"
)

// TestEnsureTopicsCreatesOnlyWhatIsMissing: start-up creates the topics that
// are not there with the configured partitions, returns once the brokers
// serve them, leaves a topic an operator
// made (with other settings) as it is, and a second start finds all of them.
// It asks the cluster about these topics only; it used to list every topic of
// the cluster with its configuration, seconds of start-up on a broker with
// thousands.
func TestEnsureTopicsCreatesOnlyWhatIsMissing(t *testing.T) {
	brokers := testBrokers(t)
	prefix := testenv.UniqueName("ensure-") + "."
	testenv.DeleteTopicsAtCleanup(t, prefix)
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = brokers
	cfg.Kafka.Partitions = 3
	cfg.Kafka.ReplicationFactor = 1

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	operators, missing := prefix+"made-by-an-operator", prefix+"missing"
	if _, err := adm.CreateTopic(ctx, 1, 1, nil, operators); err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second start finds both
		// A name given twice is one topic (the brokers describe it once;
		// start-up once waited 30 s for a second description and failed).
		if err := router.EnsureTopics(ctx, cfg.Kafka, []string{operators, missing, missing}, nil); err != nil {
			t.Fatal(err)
		}
		// What start-up does next: a topic just created is served at once
		// (its retention was once read before the broker had it).
		if _, err := router.TopicRetentions(ctx, cfg.Kafka, []string{operators, missing}); err != nil {
			t.Fatal(err)
		}
	}
	details, err := adm.ListTopics(ctx, operators, missing)
	if err != nil {
		t.Fatal(err)
	}
	for topic, want := range map[string]int{operators: 1, missing: 3} {
		d, ok := details[topic]
		switch {
		case !ok || d.Err != nil:
			t.Errorf("topic %s: not there (%v)", topic, d.Err)
		case len(d.Partitions) != want:
			t.Errorf("topic %s has %d partitions, want %d", topic, len(d.Partitions), want)
		}
	}
}

// TestStartUpSaysItWaitsForBrokersThatDoNotAnswer: with a typo in
// kafka.brokers start-up waits for the broker as it would for one still
// booting, but it says so at once, naming the brokers and the error, and when
// it gives up the error says how long it tried and why, on one line.
func TestStartUpSaysItWaitsForBrokersThatDoNotAnswer(t *testing.T) {
	closedPort := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}
	// Two brokers: sarama puts a newline between their errors.
	refused, refusedToo := closedPort(), closedPort()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = []string{refused, refusedToo}
	var logs testenv.LogBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	err = router.EnsureTopics(ctx, cfg.Kafka, []string{"never-created"}, slog.New(slog.NewTextHandler(&logs, nil)))
	if err == nil {
		t.Fatal("EnsureTopics reached a broker on a closed port")
	}
	for _, want := range []string{refused, refusedToo, "no answer in", "connection refused", context.DeadlineExceeded.Error()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q spans lines", err)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN", "Kafka does not answer yet", refused, "connection refused"} {
		if !strings.Contains(out, want) {
			t.Errorf("start-up's log %q does not say %q", out, want)
		}
	}
	if n := strings.Count(out, "Kafka does not answer yet"); n != 1 {
		t.Errorf("start-up warned %d times in 1.5 s, want once (then every %s)", n, "10s")
	}
}

// TestStartUpSaysItWaitsForABrokerThatNeverAnswers: an address that takes
// the connection and never answers (a filtered port, another service) holds
// one sarama attempt for its 30 s timeouts. Start-up says it waits after a
// few seconds, not after the first attempt, and gives up when its deadline
// ends, not when the attempt does.
func TestStartUpSaysItWaitsForABrokerThatNeverAnswers(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	held := make(chan net.Conn, 16)
	t.Cleanup(func() {
		silent.Close()
		for {
			select {
			case c := <-held:
				c.Close()
			default:
				return
			}
		}
	})
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			select {
			case held <- c:
			default:
				c.Close()
			}
		}
	}()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Kafka.Brokers = []string{silent.Addr().String()}
	var logs testenv.LogBuffer
	const deadline = 5 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	start := time.Now()
	err = router.EnsureTopics(ctx, cfg.Kafka, []string{"never-created"}, slog.New(slog.NewTextHandler(&logs, nil)))
	took := time.Since(start)
	if err == nil {
		t.Fatal("EnsureTopics reached a broker that never answers")
	}
	for _, want := range []string{silent.Addr().String(), "no answer in", "has had no answer", context.DeadlineExceeded.Error()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// sarama's own timeouts would hold it 30 s; the bound here is loose
	// for a loaded machine and still far below that.
	if took > deadline+10*time.Second {
		t.Errorf("EnsureTopics returned %s after its deadline of %s", took-deadline, deadline)
	}
	out := logs.String()
	for _, want := range []string{"level=WARN", "Kafka does not answer yet", silent.Addr().String(), "has had no answer"} {
		if !strings.Contains(out, want) {
			t.Errorf("start-up's log %q does not say %q", out, want)
		}
	}
}
