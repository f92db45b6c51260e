package router

import (
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
)

func TestCloudEventsRoundTrip(t *testing.T) {
	msg := message.NewMessage("id-1", []byte(`{"a":1}`))
	msg.Metadata = message.Metadata{HeaderType: "order.placed", HeaderSpecVersion: "1.0", metaKey: "order-7", "custom": "x"}
	pm, err := CloudEventsMarshaler{}.Marshal("order.placed", msg)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pm.Key.Encode()
	if string(key) != "order-7" {
		t.Errorf("key %q", key)
	}
	headers := map[string]string{}
	var recHeaders []*sarama.RecordHeader
	for _, h := range pm.Headers {
		headers[string(h.Key)] = string(h.Value)
		recHeaders = append(recHeaders, &sarama.RecordHeader{Key: h.Key, Value: h.Value})
	}
	if headers[HeaderID] != "id-1" || headers[HeaderType] != "order.placed" || headers["custom"] != "x" {
		t.Errorf("headers %v", headers)
	}
	if _, ok := headers[metaKey]; ok {
		t.Error("the key must travel as the record key, not as a header")
	}
	value, _ := pm.Value.Encode()
	back, err := CloudEventsMarshaler{}.Unmarshal(&sarama.ConsumerMessage{
		Topic: "order.placed", Partition: 3, Offset: 42, Key: key, Value: value, Headers: recHeaders,
	})
	if err != nil {
		t.Fatal(err)
	}
	if back.UUID != "id-1" || string(back.Payload) != `{"a":1}` || back.Metadata.Get(metaKey) != "order-7" ||
		back.Metadata.Get("custom") != "x" || back.Metadata.Get(metaOriginOffset) != "42" || back.Metadata.Get(metaOriginPartition) != "3" {
		t.Errorf("round trip lost data: %s %+v", back.UUID, back.Metadata)
	}
}

// A record from a producer that knows nothing of CloudEvents still becomes a
// message, identified by its position, so it can be handled or dead-lettered.
func TestUnmarshalPlainRecord(t *testing.T) {
	cases := []struct {
		name string
		rec  *sarama.ConsumerMessage
	}{
		{"no headers no key", &sarama.ConsumerMessage{Topic: "t", Partition: 1, Offset: 9, Value: []byte("raw")}},
		{"nil header", &sarama.ConsumerMessage{Topic: "t", Partition: 1, Offset: 9, Headers: []*sarama.RecordHeader{nil}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg, err := CloudEventsMarshaler{}.Unmarshal(c.rec)
			if err != nil {
				t.Fatal(err)
			}
			if msg.UUID != "kafka:t/1/9" {
				t.Errorf("id %q", msg.UUID)
			}
		})
	}
}
