package router

import (
	"strings"
	"testing"
	"time"
)

func TestCheckInboxRetention(t *testing.T) {
	week := 7 * 24 * time.Hour
	cases := []struct {
		name       string
		inbox      time.Duration
		retentions map[string]time.Duration
		want       string // "" accepts
	}{
		{"off", 0, map[string]time.Duration{"a": -1}, ""},
		{"longer than every topic", 8 * 24 * time.Hour, map[string]time.Duration{"a": week, "b": time.Hour}, ""},
		{"shorter than one topic", 24 * time.Hour, map[string]time.Duration{"a": time.Hour, "b": week}, "topic b's retention (168h0m0s)"},
		{"equal is not longer", week, map[string]time.Duration{"a": week}, "is not longer"},
		{"a topic kept forever", 365 * 24 * time.Hour, map[string]time.Duration{"a": -time.Millisecond}, "keeps its records forever"},
		{"a topic without retention.ms", time.Hour, map[string]time.Duration{}, "reports no retention.ms"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkInboxRetention(c.inbox, c.retentions, []string{"a", "b"}[:max(1, len(c.retentions))])
			if c.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "EVENTFN_RETENTION_INBOX") {
				t.Fatalf("err = %v, want it to name EVENTFN_RETENTION_INBOX and say %q", err, c.want)
			}
		})
	}
}

func TestCheckRecordLimits(t *testing.T) {
	const max = 1_000_000
	cases := []struct {
		name   string
		limits map[string]RecordLimit
		want   string // "" accepts
	}{
		{"the broker's default", map[string]RecordLimit{"a": {Bytes: 1_048_588}}, ""},
		{"exactly the limit", map[string]RecordLimit{"a": {Bytes: max}}, ""},
		{"one byte less", map[string]RecordLimit{"a": {Bytes: max - 1}, "b": {Bytes: 2 * max}}, "a takes 999999"},
		{"every low topic named", map[string]RecordLimit{"a": {Bytes: 20_000}, "b": {Bytes: 100_000}}, "a takes 20000, b takes 100000"},
		{"recompressed at the limit", map[string]RecordLimit{"a": {Bytes: max, Recompresses: true}}, "a takes 1000000 and compresses batches again (compression.type), which needs 1010000"},
		{"recompressed with a hundredth more", map[string]RecordLimit{"a": {Bytes: max + max/100, Recompresses: true}}, ""},
		{"no topic", nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := checkRecordLimits(max, c.limits)
			if c.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "EVENTFN_KAFKA_MAX_MESSAGE_BYTES") {
				t.Fatalf("err = %v, want it to name EVENTFN_KAFKA_MAX_MESSAGE_BYTES and say %q", err, c.want)
			}
		})
	}
}
