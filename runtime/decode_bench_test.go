package runtime_test

import (
	"testing"

	"github.com/eventfn/eventfn/runtime"
)

// BenchmarkDecode is the per-event cost of turning a payload into a typed,
// validated event before the handler runs. Run: go test -run - -bench . ./runtime
func BenchmarkDecode(b *testing.B) {
	payload := []byte(`{"name":"order-1","count":3}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := runtime.Decode[thing](payload); err != nil {
			b.Fatal(err)
		}
	}
}
