package testenv

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// DeleteTopicsAtCleanup deletes, when the test ends, the real broker's topics
// whose names start with prefix (a test's own topic prefix or unique topic
// name). Every partition costs the broker open files and memory maps: the
// thousands of topics one run of the suite creates would, over the twenty
// runs of ci/flakes.sh, slow the broker down and then exhaust the kernel's
// map count. With no real broker named it does nothing: an embedded broker
// ends with its test.
func DeleteTopicsAtCleanup(t testing.TB, prefix string) {
	t.Helper()
	brokers := KafkaBrokers()
	if len(brokers) == 0 || prefix == "" {
		return
	}
	t.Cleanup(func() {
		cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
		if err != nil {
			t.Logf("delete topics %s*: %v", prefix, err)
			return
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		adm := kadm.NewClient(cl)
		topics, err := adm.ListTopics(ctx)
		if err != nil {
			t.Logf("delete topics %s*: list: %v", prefix, err)
			return
		}
		var names []string
		for _, name := range topics.Names() {
			if strings.HasPrefix(name, prefix) {
				names = append(names, name)
			}
		}
		if len(names) == 0 {
			return
		}
		resps, err := adm.DeleteTopics(ctx, names...)
		if err == nil {
			err = resps.Error()
		}
		if err != nil {
			// Housekeeping of the shared broker, not the test's subject: a
			// topic left behind costs disk, not correctness.
			t.Logf("delete topics %v: %v", names, err)
		}
	})
}

// CreateTopicAgain creates topic with partitions (replication 1) on adm's
// cluster, trying again while the deletion of a topic of that name is
// still under way (the brokers refuse the name until it is done), until
// ctx ends.
func CreateTopicAgain(ctx context.Context, t testing.TB, adm *kadm.Client, topic string, partitions int32) {
	t.Helper()
	for {
		resp, err := adm.CreateTopic(ctx, partitions, 1, nil, topic)
		if err == nil && resp.Err == nil {
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("create topic %s again: %v %v", topic, err, resp.Err)
		}
		time.Sleep(50 * time.Millisecond) // polling interval: the deletion is under way
	}
}
