package router

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/runtime"
)

type ping struct{}

func (ping) EventType() string { return "ping" }

type pong struct{}

func (pong) EventType() string { return "pong" }

func handler(name string, p runtime.Policy) runtime.Handler {
	return runtime.NewHandler(name, func(context.Context, runtime.Tx, ping) error { return nil }, runtime.WithPolicy(p))
}

func TestDescribeResolvesPolicies(t *testing.T) {
	zero := 0
	cfg := configs.Config{Kafka: configs.Kafka{TopicPrefix: "p."}, Handlers: map[string]configs.HandlerPolicy{
		"b": {MaxRetries: &zero, Timeout: 2 * time.Second},
	}}
	infos, err := Describe(cfg, []runtime.Handler{handler("a", runtime.Policy{MaxRetries: 7}), handler("b", runtime.Policy{MaxRetries: 3})})
	if err != nil {
		t.Fatal(err)
	}
	if infos[0].Policy.MaxRetries != 7 || infos[0].Topic != "p.ping" || infos[0].Group != "p.a" {
		t.Errorf("a: %+v", infos[0])
	}
	if infos[1].Policy.MaxRetries != 0 || infos[1].Policy.Timeout != 2*time.Second {
		t.Errorf("b: configuration must override the declared policy: %+v", infos[1].Policy)
	}
}

func TestDescribeRefusesBadSetups(t *testing.T) {
	cases := []struct {
		name     string
		handlers []runtime.Handler
		cfg      configs.Config
		want     string
	}{
		{"duplicate names", []runtime.Handler{handler("a", runtime.Policy{}), handler("a", runtime.Policy{})}, configs.Config{}, "two handlers are named"},
		{"config for a missing handler", []runtime.Handler{handler("a", runtime.Policy{})},
			configs.Config{Handlers: map[string]configs.HandlerPolicy{"nope": {}}}, "handlers.nope: no such handler"},
		{"invalid name", []runtime.Handler{handler("Bad Name", runtime.Policy{})}, configs.Config{}, "handler name"},
		{"invalid policy", []runtime.Handler{handler("a", runtime.Policy{InitialBackoff: time.Hour, MaxBackoff: time.Second})}, configs.Config{}, "exceeds max backoff"},
		{"dead letters to a trigger topic", []runtime.Handler{handler("a", runtime.Policy{})},
			configs.Config{Kafka: configs.Kafka{TopicPrefix: "p.", DeadLetterTopic: "ping"}}, `kafka.dead_letter_topic "ping" is the topic handler a consumes`},
		{"dead letters to an emitted topic", []runtime.Handler{runtime.NewHandler("a", func(context.Context, runtime.Tx, ping) error { return nil }, runtime.Emits(pong{}))},
			configs.Config{Kafka: configs.Kafka{DeadLetterTopic: "pong"}}, `is the topic of pong, which handler a emits`},
		// Each attempt writes a run record: one record grew by about 20 a
		// second on the runs topic, without end.
		{"runs to a trigger topic", []runtime.Handler{handler("a", runtime.Policy{})},
			configs.Config{Kafka: configs.Kafka{TopicPrefix: "p.", DeadLetterTopic: "dead", RunsTopic: "ping"}}, `kafka.runs_topic "ping" is the topic handler a consumes`},
		{"runs to an emitted topic", []runtime.Handler{runtime.NewHandler("a", func(context.Context, runtime.Tx, ping) error { return nil }, runtime.Emits(pong{}))},
			configs.Config{Kafka: configs.Kafka{DeadLetterTopic: "dead", RunsTopic: "pong"}}, `kafka.runs_topic "pong" is the topic of pong, which handler a emits`},
		{"a timeout too short to begin a transaction", []runtime.Handler{handler("a", runtime.Policy{Timeout: time.Microsecond})}, configs.Config{},
			`handler "a" policy: timeout 1µs is shorter than 1ms`},
		{"a configured timeout too short to begin a transaction", []runtime.Handler{handler("a", runtime.Policy{})},
			configs.Config{Handlers: map[string]configs.HandlerPolicy{"a": {Timeout: 30}}}, "handlers.a: timeout 30ns is shorter than 1ms"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Describe(c.cfg, c.handlers)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}
