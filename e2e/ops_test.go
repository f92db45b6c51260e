package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/cli"
	"github.com/eventfn/eventfn/configs"
)

// cliJSON runs an eventfn command with --json and decodes its output into v.
func cliJSON(t *testing.T, cfg configs.Config, v any, args ...string) {
	t.Helper()
	out := runCLI(t, cfg, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("eventfn %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func topicsByName(t *testing.T, cfg configs.Config) map[string]cli.TopicState {
	t.Helper()
	var topics []cli.TopicState
	cliJSON(t, cfg, &topics, "topics")
	m := map[string]cli.TopicState{}
	for _, tp := range topics {
		m[tp.Topic] = tp
	}
	return m
}

func groupsByHandler(t *testing.T, cfg configs.Config) map[string]cli.GroupState {
	t.Helper()
	var groups []cli.GroupState
	cliJSON(t, cfg, &groups, "groups")
	m := map[string]cli.GroupState{}
	for _, g := range groups {
		m[g.Handler] = g
	}
	return m
}

func outboxState(t *testing.T, cfg configs.Config) cli.OutboxState {
	t.Helper()
	var st cli.OutboxState
	cliJSON(t, cfg, &st, "outbox")
	return st
}

// publishOrderPlaced sends an order.placed event with the CLI, as an
// operator would while eventfn is down.
func publishOrderPlaced(t *testing.T, cfg configs.Config, orderID string) {
	t.Helper()
	runCLI(t, cfg, "publish", "order.placed", fmt.Sprintf(`{"order_id":%q,"customer_email":"ops@example.com","total_cents":2500}`, orderID))
}

// TestStateCommandsShowTopicsGroupsAndOutbox: after a flow of five orders,
// `eventfn topics` shows every topic of the handlers and the dead-letter topic
// with the configured partitions and replication, a retention, and five
// records on each of the flow's topics; `eventfn groups` shows each handler's
// group with one member and lag 0; `eventfn outbox` shows nothing pending,
// the fifteen forwarded rows, and the relay (the app's lease on PostgreSQL).
// With the app stopped, two events published to order.placed show as lag 2
// of charge-payment, with no member, and the lease is free.
func TestStateCommandsShowTopicsGroupsAndOutbox(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	cfg := e.config(t, nil)
	a := startApp(t, cfg)
	var ids []string
	for i := range 5 {
		ids = append(ids, a.placeOrder(t, fmt.Sprintf("ops-%d@example.com", i)))
	}
	a.waitEmailed(t, ids, 60*time.Second)

	// The runs topic holds one record per handler call: three handlers, five orders.
	flow := map[string]int64{"order.placed": 5, "payment.confirmed": 5, "email.sent": 5, cfg.Kafka.DeadLetterTopic: 0, cfg.Kafka.RunsTopic: 15}
	eventually(t, 30*time.Second, "topics show the flow's records", func() (bool, string) {
		topics := topicsByName(t, cfg)
		var wrong []string
		for typ, want := range flow {
			tp := topics[cfg.Kafka.Topic(typ)]
			if !tp.Exists || tp.Messages != want {
				wrong = append(wrong, fmt.Sprintf("%s exists=%t messages=%d want %d", tp.Topic, tp.Exists, tp.Messages, want))
			}
		}
		return len(wrong) == 0 && len(topics) == len(flow), fmt.Sprintf("%d topics; %s", len(topics), strings.Join(wrong, "; "))
	})
	for _, tp := range topicsByName(t, cfg) {
		if tp.Partitions != cfg.Kafka.Partitions || tp.ReplicationFactor != cfg.Kafka.ReplicationFactor || tp.RetentionMs == nil || len(tp.Offsets) != tp.Partitions {
			t.Errorf("topic %s: %d partitions, replication %d, retention %v, %d offsets; want %d partitions, replication %d, a retention",
				tp.Topic, tp.Partitions, tp.ReplicationFactor, tp.RetentionMs, len(tp.Offsets), cfg.Kafka.Partitions, cfg.Kafka.ReplicationFactor)
		}
	}
	if tp := topicsByName(t, cfg)[cfg.Kafka.Topic("payment.confirmed")]; strings.Join(tp.ConsumedBy, ",") != "send-confirmation" || strings.Join(tp.EmittedBy, ",") != "charge-payment" {
		t.Errorf("payment.confirmed roles: %+v", tp)
	}

	eventually(t, 30*time.Second, "every group caught up, one member each", func() (bool, string) {
		groups := groupsByHandler(t, cfg)
		var wrong []string
		for _, h := range []string{"charge-payment", "send-confirmation", "mark-order-emailed"} {
			g := groups[h]
			if g.Group != cfg.Kafka.Group(h) || g.Lag != 0 || len(g.Members) != 1 || g.State != "Stable" || len(g.Partitions) != cfg.Kafka.Partitions {
				wrong = append(wrong, fmt.Sprintf("%s: %+v", h, g))
			}
		}
		return len(wrong) == 0, strings.Join(wrong, "; ")
	})
	g := groupsByHandler(t, cfg)["charge-payment"]
	if m := g.Members[0]; m.ClientID != cfg.Kafka.ClientID || m.Host == "" || len(m.Partitions) != cfg.Kafka.Partitions {
		t.Errorf("charge-payment member %+v: want client id %q, a host and every partition", m, cfg.Kafka.ClientID)
	}
	var committed int64
	for _, p := range g.Partitions {
		if p.Committed != nil {
			committed += *p.Committed
		}
	}
	if committed != 5 {
		t.Errorf("charge-payment committed %d offsets in all, want 5: %+v", committed, g.Partitions)
	}

	eventually(t, 30*time.Second, "outbox forwarded", func() (bool, string) {
		st := outboxState(t, cfg)
		return st.Pending == 0 && st.Forwarded == 15 && st.Parked == 0 && st.OldestPendingAt == nil, fmt.Sprintf("%+v", st)
	})
	st := outboxState(t, cfg)
	if e.realDB {
		if st.Relay.Mode != "lease" || !st.Relay.Held || st.Relay.Holder == nil || st.Relay.Holder.PID == 0 {
			t.Errorf("relay %+v: want the running app's lease", st.Relay)
		}
	} else if st.Relay.Mode != "single process" {
		t.Errorf("relay %+v: want single process on SQLite", st.Relay)
	}

	a.stop(t)
	if e.realDB {
		if st := outboxState(t, cfg); st.Relay.Held {
			t.Errorf("relay lease still held after the app stopped: %+v", st.Relay)
		}
	}
	publishOrderPlaced(t, cfg, "ops-late-1")
	publishOrderPlaced(t, cfg, "ops-late-2")
	eventually(t, 30*time.Second, "charge-payment lags by the two events", func() (bool, string) {
		g := groupsByHandler(t, cfg)["charge-payment"]
		return g.Lag == 2 && len(g.Members) == 0, fmt.Sprintf("%+v", g)
	})
	if g := groupsByHandler(t, cfg)["send-confirmation"]; g.Lag != 0 {
		t.Errorf("send-confirmation lags %d, want 0: %+v", g.Lag, g)
	}
	if tp := topicsByName(t, cfg)[cfg.Kafka.Topic("order.placed")]; tp.Messages != 7 {
		t.Errorf("order.placed holds %d records, want 7", tp.Messages)
	}
	// The tables, for people, say the same.
	for cmd, want := range map[string]string{
		"topics": cfg.Kafka.Topic("order.placed"),
		"groups": cfg.Kafka.Group("charge-payment"),
		"outbox": "pending",
	} {
		if out := runCLI(t, cfg, cmd); !strings.Contains(out, want) {
			t.Errorf("eventfn %s lacks %q:\n%s", cmd, want, out)
		}
	}
}

// TestHandlersSplitAcrossTwoApps: two apps share the engines, topics and
// database; one runs charge-payment only, the other send-confirmation and
// mark-order-emailed, and both run the relay. Orders placed through either
// complete; every charge happens in the first app's gateway and every email
// in the second's mailer; each order is charged once and emailed once; each
// group has exactly one member.
func TestHandlersSplitAcrossTwoApps(t *testing.T) {
	t.Parallel()
	e := newEngines(t)
	base := e.config(t, nil)
	payCfg, mailCfg := base, base
	payCfg.Run.Handlers = []string{"charge-payment"}
	mailCfg.Run.Handlers = []string{"send-confirmation", "mark-order-emailed"}
	mailCfg.DataDir = t.TempDir()
	pay := startApp(t, payCfg)
	mail := startApp(t, mailCfg)

	var ids []string
	for i := range 3 {
		ids = append(ids, pay.placeOrder(t, fmt.Sprintf("split-a-%d@example.com", i)))
		ids = append(ids, mail.placeOrder(t, fmt.Sprintf("split-b-%d@example.com", i)))
	}
	pay.waitEmailed(t, ids, 60*time.Second)

	for _, id := range ids {
		if n := pay.Payments.Attempts("order-" + id); n != 1 {
			t.Errorf("order %s: %d charges in the charge-payment app, want 1", id, n)
		}
		if n := mail.Payments.Attempts("order-" + id); n != 0 {
			t.Errorf("order %s: %d charges in the app that does not run charge-payment", id, n)
		}
	}
	if n := len(pay.Mailer.Sent()); n != 0 {
		t.Errorf("the charge-payment app sent %d emails", n)
	}
	if n := len(mail.Mailer.Sent()); n != len(ids) {
		t.Errorf("the mail app sent %d emails, want %d", n, len(ids))
	}
	if n := count(t, base, `SELECT count(*) FROM payments`); n != len(ids) {
		t.Errorf("%d payments, want %d", n, len(ids))
	}
	if n := count(t, base, `SELECT count(*) FROM emails`); n != len(ids) {
		t.Errorf("%d emails, want %d", n, len(ids))
	}
	for name, a := range map[string]*app{"charge-payment app": pay, "mail app": mail} {
		var running []string
		for _, h := range a.Runtime.Handlers() {
			running = append(running, h.Name)
		}
		want := slices.Sorted(slices.Values(a.Config.Run.Handlers))
		if !slices.Equal(running, want) {
			t.Errorf("%s runs %v, want %v", name, running, want)
		}
		for _, h := range []string{"charge-payment", "send-confirmation", "mark-order-emailed"} {
			logged := strings.Contains(a.logs.String(), "name="+h+" ")
			if logged != slices.Contains(want, h) {
				t.Errorf("%s logs handler %s: %t\n%s", name, h, logged, a.logs.String())
			}
		}
	}
	eventually(t, 30*time.Second, "one member per group, no lag", func() (bool, string) {
		var wrong []string
		for h, g := range groupsByHandler(t, base) {
			if len(g.Members) != 1 || g.Lag != 0 {
				wrong = append(wrong, fmt.Sprintf("%s: %d members, lag %d", h, len(g.Members), g.Lag))
			}
		}
		return len(wrong) == 0, strings.Join(wrong, "; ")
	})
}

// TestANewHandlerStartsWhereConfigured: orders are placed while no app runs
// charge-payment. A charge-payment added later charges them by default
// (earliest); with run.start_position or handlers.charge-payment.start_position
// latest it skips them and charges only orders placed after its group joined.
func TestANewHandlerStartsWhereConfigured(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name       string
		run        string // run.start_position
		perHandler string // handlers.charge-payment.start_position
	}{
		{"earliest by default", configs.StartEarliest, ""},
		{"run latest", configs.StartLatest, ""},
		{"handler latest", configs.StartEarliest, configs.StartLatest},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEngines(t)
			before := e.config(t, func(c *configs.Config) { c.Run.Handlers = []string{"mark-order-emailed"} })
			a := startApp(t, before)
			var old []string
			for i := range 3 {
				old = append(old, a.placeOrder(t, fmt.Sprintf("old-%d@example.com", i)))
			}
			eventually(t, 30*time.Second, "the old orders on Kafka", func() (bool, string) {
				st := outboxState(t, before)
				return st.Pending == 0 && topicsByName(t, before)[before.Kafka.Topic("order.placed")].Messages == 3, fmt.Sprintf("%+v", st)
			})
			a.stop(t)

			after := before
			after.Run.Handlers = []string{"charge-payment"}
			after.Run.StartPosition = c.run
			after.Handlers = map[string]configs.HandlerPolicy{}
			for k, v := range before.Handlers {
				after.Handlers[k] = v
			}
			p := after.Handlers["charge-payment"]
			p.StartPosition = c.perHandler
			after.Handlers["charge-payment"] = p
			b := startApp(t, after)
			// From latest, an order placed before the group has its
			// partitions is skipped too: place orders until one is paid.
			var fresh []string
			eventually(t, 60*time.Second, "an order placed after the start is paid", func() (bool, string) {
				fresh = append(fresh, b.placeOrder(t, fmt.Sprintf("new-%d@example.com", len(fresh))))
				for _, id := range fresh {
					if b.orderStatus(t, id) == "paid" {
						return true, ""
					}
				}
				return false, fmt.Sprintf("%d placed, none paid", len(fresh))
			})
			for i := range 4 {
				fresh = append(fresh, b.placeOrder(t, fmt.Sprintf("later-%d@example.com", i)))
			}
			eventually(t, 60*time.Second, "the later orders paid", func() (bool, string) {
				for _, id := range fresh[len(fresh)-4:] {
					if s := b.orderStatus(t, id); s != "paid" {
						return false, id + " " + s
					}
				}
				return true, ""
			})
			if after.StartPosition("charge-payment") == configs.StartLatest {
				// Only the partitions the group committed: the CLI's
				// configuration (variables only) may not know the
				// handler's own start position.
				eventually(t, 30*time.Second, "charge-payment caught up", func() (bool, string) {
					g := groupsByHandler(t, after)["charge-payment"]
					for _, p := range g.Partitions {
						if p.Committed != nil && p.Lag != 0 {
							return false, fmt.Sprintf("%+v", g)
						}
					}
					return true, ""
				})
				if c.run == configs.StartLatest {
					if g := groupsByHandler(t, after)["charge-payment"]; g.Lag != 0 || g.StartPosition != configs.StartLatest {
						t.Errorf("groups: lag %d from %s, want 0 from latest: %+v", g.Lag, g.StartPosition, g)
					}
				}
				for _, id := range old {
					if s, n := b.orderStatus(t, id), b.Payments.Attempts("order-"+id); s != "placed" || n != 0 {
						t.Errorf("old order %s: %s after %d charges; latest must skip it", id, s, n)
					}
				}
				return
			}
			eventually(t, 60*time.Second, "the old orders paid", func() (bool, string) {
				for _, id := range old {
					if s := b.orderStatus(t, id); s != "paid" {
						return false, id + " " + s
					}
				}
				return true, ""
			})
			for _, id := range old {
				if n := b.Payments.Attempts("order-" + id); n != 1 {
					t.Errorf("old order %s charged %d times, want 1", id, n)
				}
			}
		})
	}
}

// TestStateCommandsOverSecuredKafka: `eventfn topics` and `eventfn groups`
// reach each secured listener with the kafka.tls.* and kafka.sasl.* settings
// a user exports, and with a wrong password they fail naming the key to fix.
func TestStateCommandsOverSecuredKafka(t *testing.T) {
	t.Parallel()
	for _, kind := range []string{saslSSL, mTLS} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			s := newSecuredKafka(t, kind)
			cfg := newEngines(t).config(t, s.apply)
			a := startApp(t, cfg)
			id := a.placeOrder(t, "secured-state@example.com")
			a.waitEmailed(t, []string{id}, 90*time.Second)
			run := func(password string, args ...string) (int, string, string) {
				var out, errOut bytes.Buffer
				code := cli.Main(t.Context(), append(args, "--json", "--timeout", "20s"), strings.NewReader(""), &out, &errOut, s.environ(t, cfg, password))
				return code, out.String(), errOut.String()
			}
			code, out, errOut := run(s.password, "topics")
			var topics []cli.TopicState
			if code != 0 || json.Unmarshal([]byte(out), &topics) != nil {
				t.Fatalf("topics: exit %d\n%s\n%s", code, out, errOut)
			}
			for _, tp := range topics {
				if tp.Topic == cfg.Kafka.Topic("order.placed") && (tp.Messages != 1 || tp.Partitions != cfg.Kafka.Partitions) {
					t.Errorf("order.placed over %s: %+v", kind, tp)
				}
			}
			eventually(t, 30*time.Second, "charge-payment caught up over "+kind, func() (bool, string) {
				code, out, errOut := run(s.password, "groups")
				var groups []cli.GroupState
				if code != 0 || json.Unmarshal([]byte(out), &groups) != nil {
					return false, fmt.Sprintf("exit %d: %s%s", code, out, errOut)
				}
				for _, g := range groups {
					if g.Handler == "charge-payment" {
						return g.Lag == 0 && len(g.Members) == 1, fmt.Sprintf("%+v", g)
					}
				}
				return false, "no charge-payment group: " + out
			})
			if kind != saslSSL {
				return
			}
			const wrong = "wr0ng-state-pa55"
			code, out, errOut = run(wrong, "groups")
			if code == 0 || !strings.Contains(errOut, "kafka.sasl.password") || strings.Contains(out+errOut, wrong) {
				t.Errorf("a wrong password: exit %d; want a failure naming kafka.sasl.password without the password:\n%s\n%s", code, out, errOut)
			}
		})
	}
}
