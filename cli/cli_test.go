package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gofrs/flock"
)

// TestBadInputIsRefusedBeforeKafka: every one of these fails with exit code 2
// and a message that says what is wrong, without reaching for a broker (the
// brokers named here do not exist).
func TestBadInputIsRefusedBeforeKafka(t *testing.T) {
	env := []string{"EVENTFN_KAFKA_BROKERS=127.0.0.1:1"}
	const order = `{"order_id":"o-1","customer_email":"a@example.com","total_cents":2500}`
	cases := []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"unknown event type", []string{"publish", "order.cancelled", "{}"}, env, `unknown event type "order.cancelled"; known types: email.sent, order.placed, payment.confirmed`},
		{"invalid JSON", []string{"publish", "order.placed", `{"order_id":`}, env, "payload is not valid JSON"},
		{"wrong shape", []string{"publish", "order.placed", `{"order_id": 7}`}, env, "payload is not a valid order.placed"},
		{"fails validation", []string{"publish", "payment.confirmed", `{"order_id":"o"}`}, env, "payment_id is required"},
		{"missing file", []string{"publish", "order.placed", "@/does/not/exist.json"}, env, "read payload file"},
		{"missing payload", []string{"publish", "order.placed"}, env, "accepts 2 arg(s)"},
		{"bad configuration", []string{"handlers"}, []string{"EVENTFN_KAFKA_PARTITIONS=zero"}, "kafka.partitions"},
		{"unknown profile", []string{"handlers", "--profile", "prod"}, nil, `profile "prod" does not exist`},
		// Exit 1 before, as if the work had failed.
		{"mistyped flag", []string{"dlq", "list", "--sinse", "2h"}, env, "unknown flag: --sinse"},
		{"unknown command", []string{"pubish", "order.placed", "{}"}, env, `unknown command "pubish"`},
		{"unknown help topic", []string{"help", "nosuch"}, env, `no help topic "nosuch"`},
		{"completion with an extra argument", []string{"completion", "bash", "extra"}, env, "unknown command"},
		// It gave up at once and blamed the database or the broker.
		{"zero timeout", []string{"dlq", "list", "--timeout", "0s"}, env, "--timeout 0s: must be a positive duration"},
		{"negative quiet", []string{"publish", "order.placed", order, "--wait", "--quiet", "-1s"}, env, "--quiet -1s: must be a positive duration"},
		// Sent, then dead-lettered as malformed on its first attempt.
		{"source with a NUL", []string{"publish", "order.placed", order, "--source", "cli\x00x"}, env, "--source: ce_source holds a NUL byte"},
		{"source not UTF-8", []string{"publish", "order.placed", order, "--source", "cli\xff"}, env, "--source: ce_source is not valid UTF-8"},
		{"source too long", []string{"publish", "order.placed", order, "--source", strings.Repeat("s", 2048)}, env, "--source: ce_source is 2048 bytes"},
		{"empty source", []string{"publish", "order.placed", order, "--source", ""}, env, "--source: empty"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := Main(context.Background(), c.args, strings.NewReader(""), &out, &errOut, c.env)
			if code == 0 || !strings.Contains(errOut.String(), c.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", code, errOut.String(), c.want)
			}
			if code != 2 {
				t.Errorf("exit %d, want 2 for bad input", code)
			}
		})
	}
}

func TestReadPayload(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ev.json")
	if err := os.WriteFile(path, []byte(`{"a":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for arg, want := range map[string]string{`{"a":1}`: `{"a":1}`, "@" + path: `{"a":1}`, "-": `{"b":2}`} {
		got, err := readPayload(arg, strings.NewReader(`{"b":2}`))
		if err != nil || string(got) != want {
			t.Errorf("readPayload(%q) = %q, %v", arg, got, err)
		}
	}
}

func TestHandlersCommand(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"handlers", "--json"}, nil, &out, &errOut, nil); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var infos []struct {
		Name    string   `json:"name"`
		Trigger string   `json:"trigger"`
		Group   string   `json:"consumer_group"`
		Emits   []string `json:"emits"`
	}
	if err := json.Unmarshal(out.Bytes(), &infos); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"charge-payment": "order.placed", "send-confirmation": "payment.confirmed", "mark-order-emailed": "email.sent"}
	if len(infos) != len(want) {
		t.Fatalf("got %d handlers: %+v", len(infos), infos)
	}
	for _, i := range infos {
		if want[i.Name] != i.Trigger || i.Group != i.Name {
			t.Errorf("handler %+v", i)
		}
	}
	out.Reset()
	if code := Main(context.Background(), []string{"handlers"}, nil, &out, &errOut, nil); code != 0 || !strings.Contains(out.String(), "charge-payment      order.placed") {
		t.Errorf("table output:\n%s", out.String())
	}
}

// TestRunRefusesAnUnknownHandler: run.handlers, by flag or variable, naming a
// handler that does not exist stops start-up with the key, its variable and
// the handlers there are.
func TestRunRefusesAnUnknownHandler(t *testing.T) {
	for _, c := range []struct {
		name string
		args []string
		env  []string
	}{
		{"flag", []string{"run", "--handlers", "charge-payment,charge-paymnet"}, nil},
		{"variable", []string{"run"}, []string{"EVENTFN_RUN_HANDLERS=charge-paymnet"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			args := append(c.args, "--profile", "test", "--data-dir", t.TempDir())
			code := Main(context.Background(), args, strings.NewReader(""), &out, &errOut, c.env)
			want := `run.handlers (EVENTFN_RUN_HANDLERS): no handler "charge-paymnet"; handlers are: charge-payment, mark-order-emailed, send-confirmation`
			if code == 0 || !strings.Contains(errOut.String(), want) {
				t.Fatalf("exit %d, stderr %q; want %q", code, errOut.String(), want)
			}
		})
	}
}

// TestACommandWaitingForAnotherProcesssMigrationSaysSo: `outbox` and the
// `dlq` commands open the database, and wait while another process
// migrates it. They waited silently up to their --timeout (30 s, 1 min);
// now they say why on stderr, and the error at the timeout names the lock.
func TestACommandWaitingForAnotherProcesssMigrationSaysSo(t *testing.T) {
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// The lock another process would hold while it migrates dir's database.
	held := flock.New(filepath.Join(dir, "eventfn.db") + ".migrate-lock")
	if err := held.Lock(); err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	var out, errOut bytes.Buffer
	code := Main(context.Background(), []string{"outbox", "--timeout", "1s"}, strings.NewReader(""), &out, &errOut, []string{"EVENTFN_DATA_DIR=" + dir})
	if code == 0 {
		t.Fatalf("outbox succeeded while another process held the migration lock:\n%s", out.String())
	}
	for _, want := range []string{"another process is migrating the database", "wait for the migration lock"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr does not say %q:\n%s", want, errOut.String())
		}
	}
}
