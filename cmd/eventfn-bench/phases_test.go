package main

import (
	"context"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/embedded"
)

// The floor phases must see every record and then stop: a router that is
// only cancelled, never closed, once kept the whole bench waiting.
func TestConsumePathFloorSeesEveryRecordAndStops(t *testing.T) {
	ctx := context.Background()
	cfg, err := configs.Load(configs.Options{Profile: "test"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := embedded.Start("127.0.0.1:0", "", cfg.Kafka.Partitions)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	cfg.Kafka.Embedded = false
	cfg.Kafka.Brokers = []string{b.Addr()}
	cfg.Kafka.TopicPrefix = "floortest."
	const n = 500
	topic := cfg.Kafka.Topic(noopEvent{}.EventType())
	if _, err := produceCeiling(ctx, cfg.Kafka.Brokers, topic, cfg.Kafka.Partitions, cfg.Kafka.ReplicationFactor, n, time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, f := range []consumeFloor{{inFlight: 4}, {inFlight: 4, viaRouter: true}} {
		t.Run(f.String(), func(t *testing.T) {
			type result struct {
				rate float64
				err  error
			}
			done := make(chan result, 1)
			go func() {
				r, err := consumePathFloor(ctx, cfg, n, f.inFlight, f.viaRouter)
				done <- result{r, err}
			}()
			select {
			case got := <-done:
				if got.err != nil {
					t.Fatal(got.err)
				}
				if got.rate <= 0 {
					t.Errorf("rate %v, want > 0", got.rate)
				}
			case <-time.After(2 * time.Minute):
				t.Fatal("the floor phase did not return after its records were acknowledged")
			}
		})
	}
}
