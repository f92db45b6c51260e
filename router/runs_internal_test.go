package router

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/embedded"
	"github.com/eventfn/eventfn/internal/testenv"
)

// TestRunRecordsFollowARecreatedRunsTopic: the runs topic deleted and
// created again (an operator purging it). franz-go keeps producing to the
// topic id it first met, so every run record failed with UNKNOWN_TOPIC_ID
// and was dropped until a restart, and `publish --wait` saw no run. The
// records reach the new topic.
func TestRunRecordsFollowARecreatedRunsTopic(t *testing.T) {
	addrs := testenv.KafkaBrokers()
	if len(addrs) == 0 {
		b, err := embedded.Start("127.0.0.1:0", "", 1)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		addrs = []string{b.Addr()}
	}
	k := configs.Kafka{Brokers: addrs, ClientID: "runs-test", TopicPrefix: testenv.UniqueName("runs-") + ".", RunsTopic: "eventfn.runs"}
	topic := k.Topic(k.RunsTopic)
	testenv.DeleteTopicsAtCleanup(t, topic)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	admin := kadm.NewClient(cl)
	// seen reports whether the topic holds a run of the event id.
	seen := func(eventID string) bool {
		t.Helper()
		c, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pollCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		found := false
		for pollCtx.Err() == nil && !found {
			c.PollFetches(pollCtx).EachRecord(func(r *kgo.Record) {
				var run RunRecord
				if json.Unmarshal(r.Value, &run) == nil && run.EventID == eventID {
					found = true
				}
			})
		}
		return found
	}
	var l *runLog
	// until records a run of eventID every poll until the topic holds one.
	until := func(eventID string) {
		t.Helper()
		for !seen(eventID) {
			if ctx.Err() != nil {
				t.Fatalf("no run of %s reached %s", eventID, topic)
			}
			l.record("chain", RunRecord{Handler: "h", EventID: eventID, Outcome: RunOK})
		}
	}

	testenv.CreateTopicAgain(ctx, t, admin, topic, 1)
	l, err = newRunLog(k, nil, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	until("before")
	if _, err := admin.DeleteTopics(ctx, topic); err != nil {
		t.Fatal(err)
	}
	testenv.CreateTopicAgain(ctx, t, admin, topic, 1)
	until("after")
}
