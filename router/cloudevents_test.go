package router

import (
	"strings"
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

// TestRepeatedAttributeHeadersMakeARecordMalformed: a record that names its
// ce_id (or any attribute eventfn reads) twice with different values has no one
// identity; it is marked malformed, to be dead-lettered, not read as whichever
// came last. A repeat with the same value, and repeats of the producer's own
// headers, are harmless.
func TestRepeatedAttributeHeadersMakeARecordMalformed(t *testing.T) {
	h := func(kv ...string) []*sarama.RecordHeader {
		var hs []*sarama.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			hs = append(hs, &sarama.RecordHeader{Key: []byte(kv[i]), Value: []byte(kv[i+1])})
		}
		return hs
	}
	cases := []struct {
		name      string
		headers   []*sarama.RecordHeader
		malformed string // substring of the reason; "" for a well-formed record
	}{
		{"two different ce_id", h(HeaderID, "a", HeaderType, "t", HeaderID, "b"), "header ce_id appears more than once"},
		{"two different ce_type", h(HeaderID, "a", HeaderType, "t", HeaderType, "u"), "header ce_type appears"},
		{"three ce_source, two values", h(HeaderSource, "s", HeaderSource, "s", HeaderSource, "x"), "header ce_source appears"},
		{"two different ce_id and ce_time", h(HeaderID, "a", HeaderID, "b", HeaderTime, "1", HeaderTime, "2"), "ce_id, ce_time"},
		{"the same ce_id twice", h(HeaderID, "a", HeaderID, "a"), ""},
		{"the producer's own header twice", h(HeaderID, "a", "x-trace", "1", "x-trace", "2"), ""},
		{"an empty then a set ce_id", h(HeaderID, "", HeaderID, "a"), "header ce_id appears"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg, err := CloudEventsMarshaler{}.Unmarshal(&sarama.ConsumerMessage{Topic: "t", Value: []byte("{}"), Headers: c.headers})
			if err != nil {
				t.Fatal(err)
			}
			got := malformedHeaders(msg.Metadata)
			switch {
			case c.malformed == "" && got != nil:
				t.Fatalf("well-formed record read as malformed: %v", got)
			case c.malformed != "" && (got == nil || !strings.Contains(got.Error(), c.malformed)):
				t.Fatalf("malformed = %v, want it to say %q", got, c.malformed)
			}
		})
	}
}

// TestAKeyHeaderDoesNotBecomeTheKey: the record key is the key; a header that
// happens to be named like eventfn's internal key entry is ignored, and so is
// a malformed marker a producer wrote itself.
func TestAKeyHeaderDoesNotBecomeTheKey(t *testing.T) {
	msg, err := CloudEventsMarshaler{}.Unmarshal(&sarama.ConsumerMessage{Topic: "t", Value: []byte("{}"),
		Headers: []*sarama.RecordHeader{{Key: []byte(metaKey), Value: []byte("forged")}, {Key: []byte(metaMalformed), Value: []byte("x")}}})
	if err != nil {
		t.Fatal(err)
	}
	if k := msg.Metadata.Get(metaKey); k != "" {
		t.Errorf("key %q taken from a header", k)
	}
	if err := malformedHeaders(msg.Metadata); err != nil {
		t.Errorf("a producer's header marked the record malformed: %v", err)
	}
}
