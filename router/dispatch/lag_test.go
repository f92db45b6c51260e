package dispatch_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventfn/eventfn/internal/testenv"
)

// TestLagCountsUnfinishedRecordsAndFallsToZero: while the handler holds the
// first of 10 records of one key (so the other 9 wait behind it), the lag of
// the partition is 10; once the handler lets go, it falls to 0.
func TestLagCountsUnfinishedRecordsAndFallsToZero(t *testing.T) {
	addrs := brokers(t)
	topic := createTopic(t, addrs, 1)
	produce(t, addrs, topic, []string{"k"}, 10)

	release := make(chan struct{})
	sub := newSubscriber(t, addrs, testenv.UniqueName("g-"), 4)
	runRouter(t, topic, sub, func(msg *message.Message) error {
		<-release
		return nil
	})
	lagOf := func() string { return fmt.Sprint(sub.Lag()) }
	waitFor(t, "lag 10 while the first record is held", 30*time.Second, func() bool { return lagOf() == "map[0:10]" })
	close(release)
	waitFor(t, "lag 0 once every record finished", 30*time.Second, func() bool { return lagOf() == "map[0:0]" })
}
