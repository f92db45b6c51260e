package scaffold_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eventfn/eventfn/internal/scaffold"
)

const existing = `package handlers

import "github.com/eventfn/eventfn/runtime"

type OrderPlaced struct {
	OrderID string ` + "`json:\"order_id\"`" + `
}

func (OrderPlaced) EventType() string  { return "order.placed" }
func (e OrderPlaced) EventKey() string { return e.OrderID }

func ChargePayment() runtime.Handler {
	return runtime.NewHandler("charge-payment", nil)
}
`

func TestWriteRefusesWhatCannotWork(t *testing.T) {
	cases := []struct {
		name string
		spec scaffold.Spec
		want string
	}{
		{"a bad name", scaffold.Spec{Name: "Refund_Payment", On: "refund.requested"}, "handler name"},
		{"a name in use", scaffold.Spec{Name: "charge-payment", On: "refund.requested"}, "exists already"},
		{"a Go name in use", scaffold.Spec{Name: "order-placed", On: "refund.requested"}, "declares OrderPlaced already"},
		{"a bad event type", scaffold.Spec{Name: "refund", On: "refund requested"}, "--on: event type"},
		{"emitting what it consumes", scaffold.Spec{Name: "refund", On: "order.placed", Emits: []string{"order.placed"}}, "runs forever"},
		{"an example that does not validate", scaffold.Spec{Name: "refund", On: "order.placed"}, "is not a valid order.placed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "events.go"), []byte(existing), 0o644); err != nil {
				t.Fatal(err)
			}
			check := func(string, []byte) error { return errors.New("order_id is required") }
			_, err := scaffold.Write(dir, c.spec, check)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want it to say %q", err, c.want)
			}
			if files, _ := filepath.Glob(filepath.Join(dir, "*.go")); len(files) != 1 {
				t.Errorf("files were written: %v", files)
			}
		})
	}
}

func TestGoName(t *testing.T) {
	for in, want := range map[string]string{"refund-payment": "RefundPayment", "refund.requested": "RefundRequested", "a_b-c.d": "ABCD"} {
		if got := scaffold.GoName(in); got != want {
			t.Errorf("GoName(%q) = %q, want %q", in, got, want)
		}
	}
}
