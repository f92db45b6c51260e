package router

import (
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

// The per-event cost of the CloudEvents mapping, paid once on the way into
// Kafka and once on the way out. Run: go test -run - -bench . ./router
func BenchmarkCloudEventsMarshal(b *testing.B) {
	msg := message.NewMessage("0b6f7c1e-2f5a-4c9e-9d61-0e3c1b7a9f10", make([]byte, 256))
	msg.Metadata = message.Metadata{HeaderType: "order.placed", HeaderSource: "eventfn/ingress", HeaderSpecVersion: "1.0",
		HeaderTime: "2026-11-22T00:00:00Z", HeaderContentType: "application/json", HeaderCorrelationID: "c", metaKey: "order-1"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (CloudEventsMarshaler{}).Marshal("order.placed", msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCloudEventsUnmarshal(b *testing.B) {
	headers := []*sarama.RecordHeader{}
	for k, v := range map[string]string{HeaderID: "id", HeaderType: "order.placed", HeaderSource: "s", HeaderSpecVersion: "1.0",
		HeaderTime: "2026-11-22T00:00:00Z", HeaderContentType: "application/json", HeaderCorrelationID: "c"} {
		headers = append(headers, &sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	rec := &sarama.ConsumerMessage{Topic: "order.placed", Partition: 1, Offset: 7, Key: []byte("order-1"), Value: make([]byte, 256), Headers: headers}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := (CloudEventsMarshaler{}).Unmarshal(rec); err != nil {
			b.Fatal(err)
		}
	}
}
