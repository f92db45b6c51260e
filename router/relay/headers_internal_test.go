package relay

import (
	"encoding/json"
	"maps"
	"testing"
)

// headerSeeds cover every way out of the strict reading, and the headers
// Insert writes.
var headerSeeds = []string{
	`{"ce_id":"0b7c","ce_type":"order.placed","ce_source":"/eventfn/orders","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
	`{}`,
	` { } `,
	"{\n\t\"a\" : \"b\" ,\r\n \"c\":\"\"}\n",
	`{"a":"b","a":"c"}`, // the last wins, as in encoding/json
	`{"a":"caf\u00e9"}`, // an escape: encoding/json decides
	`{"a":"x\"y"}`,      // an escaped quote
	`{"\u0061":"b"}`,    // an escaped key
	`{"a":"<&>"}`,       // what json.Marshal writes as \u003c...
	`{"a":"ünïcödé 🙂"}`, // UTF-8 needs no escape
	"{\"a\":\"\xff\"}",  // invalid UTF-8: encoding/json replaces it
	"{\"a\":\"\x01\"}",  // a control byte: invalid JSON
	`{"a":1}`,           // not a string
	`{"a":null}`,        //
	`{"a":["b"]}`,       //
	`{"a":"b",}`,        // a trailing comma
	`{"a":"b"} x`,       // something after the object
	`{"a":"b"}{}`,       //
	`{"a" "b"}`,         // no colon
	`{"a":"b"`,          // unterminated
	`{"a":"b`,           //
	`{a:"b"}`,           // an unquoted key
	`null`,              // encoding/json: a nil map, no error
	`[]`,                //
	`"x"`,               //
	``,                  // an empty column
	`{"a":"b" "c":"d"}`, // no comma
	`{,}`,               //
	`{"":""}`,           // empty key and value
}

// FuzzDecodeHeaders checks that decodeHeaders decodes every input exactly as
// encoding/json does: the same map where it decodes, an error where
// encoding/json gives one. `go test` runs the seeds; `go test -fuzz
// FuzzDecodeHeaders ./router/relay` looks further.
func FuzzDecodeHeaders(f *testing.F) {
	for _, s := range headerSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var want map[string]string
		wantErr := json.Unmarshal(data, &want)
		got, err := decodeHeaders(data)
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("decodeHeaders(%q): error %v, encoding/json: %v", data, err, wantErr)
		}
		if err == nil && (!maps.Equal(got, want) || (got == nil) != (want == nil)) {
			t.Fatalf("decodeHeaders(%q) = %#v, encoding/json: %#v", data, got, want)
		}
	})
}

// TestPlainHeadersTakesWhatInsertWrites checks that the headers eventfn
// writes take the fast path, not the fallback: without it the relay spends a
// third of its CPU decoding them.
func TestPlainHeadersTakesWhatInsertWrites(t *testing.T) {
	written := map[string]string{
		"ce_id": "6f1f0c3e-6d1a-4a59-9b0e-3c1f4f0a9a7e", "ce_type": "order.placed", "ce_source": "/eventfn/http",
		"ce_specversion": "1.0", "ce_time": "2026-12-04T14:05:06.123456Z", "content-type": "application/json",
		"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "ce_correlationid": "c-1",
	}
	_, args, err := InsertStatement(Record{Topic: "orders", Headers: written})
	if err != nil {
		t.Fatal(err)
	}
	got, ok := plainHeaders([]byte(args[2].(string)))
	if !ok {
		t.Fatalf("the headers Insert writes (%s) did not take the fast path", args[2])
	}
	if !maps.Equal(got, written) {
		t.Fatalf("fast path read %v, Insert wrote %v", got, written)
	}
}

// BenchmarkDecodeHeaders compares the fast path with encoding/json on the
// headers of a typical event.
func BenchmarkDecodeHeaders(b *testing.B) {
	data := []byte(headerSeeds[0])
	b.Run("decodeHeaders", func(b *testing.B) {
		for b.Loop() {
			if _, err := decodeHeaders(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for b.Loop() {
			var h map[string]string
			if err := json.Unmarshal(data, &h); err != nil {
				b.Fatal(err)
			}
		}
	})
}
