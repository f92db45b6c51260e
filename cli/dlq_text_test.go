package cli

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/eventfn/eventfn/router"
)

// TestOddBytesCannotBreakTheDLQOutput: handler, event type, origin topic and
// reason come from any producer's headers; a tab, a newline, a terminal escape
// or bytes that are not UTF-8 must neither split a table row nor reach the
// terminal raw. A long reason is cut at a rune, never inside one.
func TestOddBytesCannotBreakTheDLQOutput(t *testing.T) {
	unsafe := func(s string) bool {
		return strings.ContainsAny(s, "\t\n\r\x1b\x00") || !utf8.ValidString(s)
	}
	for _, in := range []string{"order.placed", "a\tb", "a\nb", "\x1b[31mred", "nul\x00", "\xff\xfe", "ünïcödé"} {
		if got := cell(in); unsafe(got) || (!unsafe(in) && got != in) {
			t.Errorf("cell(%q) = %q", in, got)
		}
		if got := oneLine(in, 120); unsafe(got) {
			t.Errorf("oneLine(%q) = %q", in, got)
		}
	}
	if got := text([]byte("{\n\t\"a\": 1\n}")); got != "{\n\t\"a\": 1\n}" {
		t.Errorf("a JSON payload with lines was changed: %q", got)
	}
	if got := text([]byte("{\r\n\"a\": 1\r\n}")); got != "{\r\n\"a\": 1\r\n}" {
		t.Errorf("a payload with CRLF lines was changed: %q", got)
	}
	if got := text([]byte("paid\rrefunded")); strings.Contains(got, "\r") {
		t.Errorf("a payload whose lone carriage return overwrites the line printed raw: %q", got)
	}
	if got := text([]byte("\x1b]0;title\x07")); unsafe(got) || strings.ContainsRune(got, '\x07') {
		t.Errorf("a payload with terminal escapes printed raw: %q", got)
	}
	long := strings.Repeat("é", 100) // 200 bytes
	got := oneLine(long, 121)
	if !utf8.ValidString(got) || len(got) > 121+len("…") {
		t.Errorf("oneLine cut %d bytes of runes to %q", len(long), got)
	}
}

// TestShowQuotesWhatAProducerWrote: dlq show printed header names as they
// were, so a name holding a terminal escape or a newline reached the
// terminal raw (values were quoted already).
func TestShowQuotesWhatAProducerWrote(t *testing.T) {
	var out strings.Builder
	showDeadLetter(&out, router.DeadLetter{
		ID: "0123456789ab", Handler: "charge\x1b[2Jpayment",
		Headers: map[string]string{"x-\x1b]0;pwned\x07": "v", "line\nbreak": "v", "ok": "v\x1b"},
		Key:     "k\x00", Payload: []byte("\x1b[31m"),
	})
	if got := out.String(); strings.ContainsAny(got, "\x1b\x07\x00") || strings.Contains(got, "line\nbreak") {
		t.Fatalf("raw control bytes reached the output:\n%q", got)
	}
}
