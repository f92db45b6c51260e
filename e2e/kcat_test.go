package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
)

// kcatPath finds kcat, the librdkafka command-line client: a Kafka client
// eventfn did not write. Under CI=true its absence fails the test.
func kcatPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("kcat")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("kcat is not installed (ci/services.sh up installs it): the interoperability test cannot run")
		}
		t.Skip("kcat is not installed: apt-get install kcat")
	}
	return p
}

type kcatRecord struct {
	Topic     string   `json:"topic"`
	Partition int32    `json:"partition"`
	Offset    int64    `json:"offset"`
	Key       *string  `json:"key"`
	Payload   *string  `json:"payload"`
	Headers   []string `json:"headers"` // name, value, name, value, ...
}

func (r kcatRecord) header(name string) string {
	for i := 0; i+1 < len(r.Headers); i += 2 {
		if r.Headers[i] == name {
			return r.Headers[i+1]
		}
	}
	return ""
}

func kcatProduce(t *testing.T, kcat string, cfg configs.Config, topic, key, payload string, headers map[string]string) {
	t.Helper()
	args := []string{"-b", strings.Join(cfg.Kafka.Brokers, ","), "-P", "-t", topic, "-k", key}
	for k, v := range headers {
		args = append(args, "-H", k+"="+v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, args...)
	cmd.Stdin = strings.NewReader(payload + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kcat produce to %s: %v\n%s", topic, err, out)
	}
}

// kcatConsume reads topic from the beginning to its end and returns the records.
func kcatConsume(t *testing.T, kcat string, cfg configs.Config, topic string) []kcatRecord {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, kcat, "-b", strings.Join(cfg.Kafka.Brokers, ","), "-C", "-t", topic,
		"-o", "beginning", "-e", "-J", "-q").Output()
	if err != nil {
		t.Fatalf("kcat consume %s: %v", topic, err)
	}
	var recs []kcatRecord
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r kcatRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("kcat output %q: %v", sc.Text(), err)
		}
		recs = append(recs, r)
	}
	return recs
}

// TestKcatInteroperability: an event produced by kcat with CloudEvents headers
// is handled; events eventfn emits read back in kcat with the right key and
// headers; a malformed event from kcat is dead-lettered and the flow goes on.
func TestKcatInteroperability(t *testing.T) {
	t.Parallel()
	kcat := kcatPath(t)
	e := newEngines(t)
	cfg := e.config(t, nil)
	startApp(t, cfg)
	topic := cfg.Kafka.Topic("order.placed")

	badKey := "kcat-bad-" + uuid.NewString()
	kcatProduce(t, kcat, cfg, topic, badKey, `{"order_id": "half`, map[string]string{
		router.HeaderID: uuid.NewString(), router.HeaderType: "order.placed", router.HeaderSpecVersion: "1.0",
	})

	orderID := "kcat-" + uuid.NewString()
	eventID := uuid.NewString()
	kcatProduce(t, kcat, cfg, topic, orderID,
		fmt.Sprintf(`{"order_id":%q,"customer_email":"kcat@example.com","total_cents":4200}`, orderID),
		map[string]string{
			router.HeaderID: eventID, router.HeaderType: "order.placed", router.HeaderSource: "kcat",
			router.HeaderSpecVersion: "1.0", router.HeaderContentType: "application/json",
		})

	eventually(t, 60*time.Second, "kcat's order handled to the end", func() (bool, string) {
		n := count(t, cfg, `SELECT COUNT(*) FROM emails WHERE order_id = $1`, orderID)
		return n == 1, fmt.Sprintf("%d emails", n)
	})

	var confirmed *kcatRecord
	eventually(t, 30*time.Second, "payment.confirmed visible to kcat", func() (bool, string) {
		for _, r := range kcatConsume(t, kcat, cfg, cfg.Kafka.Topic("payment.confirmed")) {
			if r.Key != nil && *r.Key == orderID {
				confirmed = &r
				return true, ""
			}
		}
		return false, "not yet"
	})
	for name, want := range map[string]string{
		router.HeaderType:          "payment.confirmed",
		router.HeaderSpecVersion:   "1.0",
		router.HeaderSource:        "eventfn/charge-payment",
		router.HeaderContentType:   "application/json",
		router.HeaderCorrelationID: eventID,
	} {
		if got := confirmed.header(name); got != want {
			t.Errorf("header %s = %q, want %q", name, got, want)
		}
	}
	if _, err := uuid.Parse(confirmed.header(router.HeaderID)); err != nil {
		t.Errorf("ce_id %q is not a UUID", confirmed.header(router.HeaderID))
	}
	if _, err := time.Parse(time.RFC3339Nano, confirmed.header(router.HeaderTime)); err != nil {
		t.Errorf("ce_time %q is not RFC 3339", confirmed.header(router.HeaderTime))
	}
	var payload map[string]any
	if confirmed.Payload == nil || json.Unmarshal([]byte(*confirmed.Payload), &payload) != nil || payload["order_id"] != orderID {
		t.Errorf("payload %v", confirmed.Payload)
	}

	var dead *kcatRecord
	eventually(t, 30*time.Second, "kcat's malformed event dead-lettered", func() (bool, string) {
		for _, r := range kcatConsume(t, kcat, cfg, cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic)) {
			if r.Key != nil && *r.Key == badKey {
				dead = &r
				return true, ""
			}
		}
		return false, "not yet"
	})
	if dead.Payload == nil || *dead.Payload != `{"order_id": "half` {
		t.Errorf("dead-lettered payload %v", dead.Payload)
	}
	if r := dead.header(router.HeaderDeadLetterReason); !strings.Contains(r, "decode order.placed") {
		t.Errorf("reason %q", r)
	}
	if dead.header(router.HeaderType) != "order.placed" || dead.header(router.HeaderOriginTopic) != topic {
		t.Errorf("original headers not kept: %v", dead.Headers)
	}
}
