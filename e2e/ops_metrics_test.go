package e2e

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
)

// scrape parses the app's /metrics.
func (a *app) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(a.get(t, "/metrics")))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// series returns the series of family name whose labels include want
// (name=value pairs).
func series(fams map[string]*dto.MetricFamily, name string, want ...string) []*dto.Metric {
	var out []*dto.Metric
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == want[i] && l.GetValue() == want[i+1]
			}) {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// sum adds the values of the counters or gauges of name matching want; for a
// histogram it adds the observation counts.
func sum(fams map[string]*dto.MetricFamily, name string, want ...string) float64 {
	var n float64
	for _, m := range series(fams, name, want...) {
		switch {
		case m.Counter != nil:
			n += m.GetCounter().GetValue()
		case m.Gauge != nil:
			n += m.GetGauge().GetValue()
		case m.Histogram != nil:
			n += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return n
}

// bucket is the cumulative count of a histogram's bucket le, over the series
// matching want.
func bucket(fams map[string]*dto.MetricFamily, name string, le float64, want ...string) uint64 {
	var n uint64
	for _, m := range series(fams, name, want...) {
		for _, b := range m.GetHistogram().GetBucket() {
			if b.GetUpperBound() == le {
				n += b.GetCumulativeCount()
			}
		}
	}
	return n
}

var handlerNames = []string{"charge-payment", "send-confirmation", "mark-order-emailed"}

// TestOperationalMetricsFollowAFlow runs orders through a slow payment
// gateway, one charge at a time, plus a record that does not decode, and
// checks what each operational metric says: consumer lag rises while
// charge-payment lags behind and is 0 once all is handled; every handler's
// duration is observed; chain latency is observed for payment.confirmed and
// email.sent and measured from order.placed (each is at least the gateway's
// delay, which only the first step pays); the chain start travels on the
// events; an undecodable record and one with unreadable headers are
// malformed dead letters. Then every
// metric the alert rules and the dashboard use must be on /metrics.
func TestOperationalMetricsFollowAFlow(t *testing.T) {
	t.Parallel()
	const delay = 400 * time.Millisecond
	e := newEngines(t)
	cfg := e.config(t, func(c *configs.Config) {
		c.Payments.Delay = delay
		p := c.Handlers["charge-payment"]
		p.Concurrency = 1
		c.Handlers["charge-payment"] = p
	})
	a := startApp(t, cfg)

	var ids []string
	for i := range 4 {
		ids = append(ids, a.placeOrder(t, fmt.Sprintf("ops%d@example.com", i)))
	}
	// 4 charges of 400 ms one at a time: charge-payment is behind for about
	// 1.6 s, and the scrape sees it.
	eventually(t, 30*time.Second, "charge-payment lagging behind", func() (bool, string) {
		lag := sum(a.scrape(t), "eventfn_consumer_lag", "handler", "charge-payment")
		return lag > 0, fmt.Sprintf("lag %v", lag)
	})
	a.waitEmailed(t, ids, 60*time.Second)

	client := kafkaClient(t, cfg)
	key := "o-" + uuid.NewString()
	// Two malformed records: a payload that does not decode, and headers
	// eventfn cannot read (a CloudEvents version it does not speak).
	produce(t, client, cfg.Kafka.Topic("order.placed"), []byte(key), []byte("{not json"), map[string]string{
		router.HeaderID: uuid.NewString(), router.HeaderType: "order.placed", router.HeaderSource: "e2e", router.HeaderSpecVersion: "1.0"})
	produce(t, client, cfg.Kafka.Topic("order.placed"), []byte(key), []byte(`{"order_id":"`+key+`"}`), map[string]string{
		router.HeaderID: uuid.NewString(), router.HeaderType: "order.placed", router.HeaderSource: "e2e", router.HeaderSpecVersion: "2.0"})

	var fams map[string]*dto.MetricFamily
	eventually(t, 60*time.Second, "a malformed dead letter counted and every lag back to 0", func() (bool, string) {
		fams = a.scrape(t)
		malformed := sum(fams, "eventfn_dead_letters_total", "handler", "charge-payment", "class", "malformed")
		if malformed != 2 {
			return false, fmt.Sprintf("%v malformed dead letters", malformed)
		}
		// A scrape gathers the metrics concurrently: it could read the
		// written count before a dead letter's write and its class after
		// (one CI run under CPU contention saw 1 and 2). Both must show it.
		if n := sum(fams, "eventfn_dead_lettered_total", "handler", "charge-payment"); n < 2 {
			return false, fmt.Sprintf("eventfn_dead_lettered_total %v", n)
		}
		for _, h := range handlerNames {
			lags := series(fams, "eventfn_consumer_lag", "handler", h)
			if len(lags) == 0 {
				return false, "no lag reported for " + h
			}
			if lag := sum(fams, "eventfn_consumer_lag", "handler", h); lag != 0 {
				return false, fmt.Sprintf("%s lag %v", h, lag)
			}
		}
		return true, ""
	})
	if n := sum(fams, "eventfn_dead_lettered_total", "handler", "charge-payment"); n != 2 {
		t.Errorf("eventfn_dead_lettered_total = %v, want 2 (unchanged meaning)", n)
	}
	if n := sum(fams, "eventfn_dead_letters_total"); n != 2 {
		t.Errorf("%v dead letters of any class, want the 2 malformed ones", n)
	}
	for _, h := range handlerNames {
		if n := sum(fams, "eventfn_handler_duration_seconds", "handler", h, "result", "ok"); n < float64(len(ids)) {
			t.Errorf("%s: %v ok durations observed, want at least %d", h, n, len(ids))
		}
	}
	if n := sum(fams, "eventfn_handler_duration_seconds", "handler", "charge-payment", "result", "permanent"); n < 2 {
		t.Errorf("the malformed records' calls were not timed (%v permanent durations)", n)
	}
	if slow := bucket(fams, "eventfn_handler_duration_seconds", 0.25, "handler", "charge-payment", "result", "ok"); slow != 0 {
		t.Errorf("%d charges under 0.25 s with a %s gateway", slow, delay)
	}
	for _, typ := range []string{"payment.confirmed", "email.sent"} {
		n := sum(fams, "eventfn_chain_latency_seconds", "event_type", typ)
		if n < float64(len(ids)) {
			t.Errorf("chain latency of %s observed %v times, want at least %d", typ, n, len(ids))
		}
		// Measured from order.placed, every step after the charge includes
		// its 400 ms; a chain restarted at each hop would not.
		if fast := bucket(fams, "eventfn_chain_latency_seconds", 0.25, "event_type", typ); fast != 0 {
			t.Errorf("%d %s chains under 0.25 s, yet each waited %s for the gateway", fast, typ, delay)
		}
	}
	if got := sum(fams, "eventfn_retries_in_progress"); got != 0 {
		t.Errorf("retries in progress = %v with nothing failing", got)
	}
	if age := sum(fams, "eventfn_outbox_oldest_pending_seconds"); age != 0 {
		t.Errorf("oldest pending outbox row is %v s old after the flow", age)
	}

	// The chain start is the order.placed event's ce_time, carried unchanged
	// to email.sent.
	placed := readAll(t, client, cfg.Kafka.Topic("order.placed"), len(ids), 30*time.Second, func(m *sarama.ConsumerMessage) bool {
		return header(m, router.HeaderChainStarted) != ""
	})
	startOf := map[string]string{}
	for _, m := range placed {
		if got, want := header(m, router.HeaderChainStarted), header(m, router.HeaderTime); got != want {
			t.Errorf("order.placed chain started %q, want its ce_time %q", got, want)
		}
		startOf[header(m, router.HeaderCorrelationID)] = header(m, router.HeaderChainStarted)
	}
	sent := readAll(t, client, cfg.Kafka.Topic("email.sent"), len(ids), 30*time.Second, nil)
	for _, m := range sent {
		corr := header(m, router.HeaderCorrelationID)
		if got, want := header(m, router.HeaderChainStarted), startOf[corr]; got == "" || got != want {
			t.Errorf("email.sent of chain %s: chain started %q, want order.placed's %q", corr, got, want)
		}
	}

	checkDeployFilesUse(t, fams)
}

// TestDeadLettersAreClassed: a gateway that always fails dead-letters a
// charge as exhausted once its one retry failed, and the event counts as a
// retry in progress while it waits for that retry (1 s) and no longer after;
// a gateway slower than the handler's timeout dead-letters it as timeout.
func TestDeadLettersAreClassed(t *testing.T) {
	t.Parallel()
	one, zero := 1, 0
	tests := []struct {
		name       string
		edit       func(*configs.Config, *configs.HandlerPolicy)
		class      string
		watchRetry bool
	}{
		{"exhausted", func(c *configs.Config, p *configs.HandlerPolicy) {
			c.Payments.FailAttempts = 1000
			p.MaxRetries, p.InitialBackoff, p.MaxBackoff = &one, time.Second, time.Second
		}, "exhausted", true},
		{"timeout", func(c *configs.Config, p *configs.HandlerPolicy) {
			c.Payments.Delay = 5 * time.Second
			p.MaxRetries, p.Timeout = &zero, 200*time.Millisecond
		}, "timeout", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEngines(t)
			cfg := e.config(t, func(c *configs.Config) {
				p := c.Handlers["charge-payment"]
				tt.edit(c, &p)
				c.Handlers["charge-payment"] = p
			})
			a := startApp(t, cfg)
			a.placeOrder(t, tt.name+"@example.com")
			if tt.watchRetry {
				eventually(t, 30*time.Second, "the charge waiting for its retry", func() (bool, string) {
					n := sum(a.scrape(t), "eventfn_retries_in_progress", "handler", "charge-payment")
					return n == 1, fmt.Sprintf("%v in progress", n)
				})
			}
			eventually(t, 60*time.Second, "a dead letter of class "+tt.class, func() (bool, string) {
				fams := a.scrape(t)
				n := sum(fams, "eventfn_dead_letters_total", "handler", "charge-payment", "class", tt.class)
				if others := sum(fams, "eventfn_dead_letters_total") - n; others != 0 {
					t.Fatalf("%v dead letters of another class than %s", others, tt.class)
				}
				return n == 1, fmt.Sprintf("%v of class %s", n, tt.class)
			})
			if n := sum(a.scrape(t), "eventfn_retries_in_progress"); n != 0 {
				t.Errorf("%v retries in progress after the dead letter", n)
			}
		})
	}
}

// TestOutboxOldestPendingAgeWhileKafkaIsDown: with the broker stopped, an
// order's event waits in the outbox and the oldest-pending age is above 0
// and grows; once the broker is back and the relay has forwarded it, the age
// is 0. It stops the broker, so it runs in the embedded pass.
func TestOutboxOldestPendingAgeWhileKafkaIsDown(t *testing.T) {
	t.Parallel()
	if testenvRealKafka() {
		t.Skip("stops and restarts the broker: runs in the embedded pass")
	}
	broker, e := startStoppableBroker(t)
	a := startApp(t, e.config(t, nil))
	if age := sum(a.scrape(t), "eventfn_outbox_oldest_pending_seconds"); age != 0 {
		t.Fatalf("oldest pending age %v before any order", age)
	}

	broker.stop()
	id := a.placeOrder(t, "stuck@example.com")
	var first float64
	eventually(t, 30*time.Second, "the stuck event's age growing", func() (bool, string) {
		age := sum(a.scrape(t), "eventfn_outbox_oldest_pending_seconds")
		if first == 0 {
			first = age
			return false, fmt.Sprintf("age %v", age)
		}
		return age > first, fmt.Sprintf("age %v, first seen %v", age, first)
	})
	if first <= 0 {
		t.Fatalf("oldest pending age %v with the broker down", first)
	}

	broker.restart(t)
	a.waitEmailed(t, []string{id}, 120*time.Second)
	eventually(t, 30*time.Second, "the oldest pending age back to 0", func() (bool, string) {
		age := sum(a.scrape(t), "eventfn_outbox_oldest_pending_seconds")
		return age == 0, fmt.Sprintf("age %v", age)
	})
}

// TestAlertRulesParse loads deploy/prometheus/eventfn-alerts.yml as Prometheus
// does, unknown fields refused.
func TestAlertRulesParse(t *testing.T) {
	groups := alertRules(t)
	n := 0
	for _, g := range groups.Groups {
		n += len(g.Rules)
	}
	if n == 0 {
		t.Fatal("no rules")
	}
}

func alertRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(filepath.Join("..", "deploy", "prometheus", "eventfn-alerts.yml"), false,
		model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("alert rules: %v", errs)
	}
	return groups
}

// grafanaVariables are the dashboard's variables, replaced by what Grafana
// would put there so that its queries parse as PromQL.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$job", ".*")

// labelValues is Grafana's variable query label_values(metric, label).
var labelValues = regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*),\s*\w+\)$`)

// dashboardQueries returns every PromQL query of
// deploy/grafana/eventfn-dashboard.json (panel targets), and the metrics its
// variables query.
func dashboardQueries(t *testing.T) (exprs, variableMetrics []string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "deploy", "grafana", "eventfn-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query string `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, grafanaVariables.Replace(tg.Expr))
		}
	}
	for _, v := range d.Templating.List {
		m := labelValues.FindStringSubmatch(v.Query)
		if m == nil {
			t.Errorf("dashboard variable query %q is not label_values(metric, label)", v.Query)
			continue
		}
		variableMetrics = append(variableMetrics, m[1])
	}
	return exprs, variableMetrics
}

// metricNames parses expr and returns the metric names its selectors use.
func metricNames(t *testing.T, expr string) []string {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		t.Fatalf("parse %q: %v", expr, err)
	}
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			if vs.Name == "" {
				t.Errorf("%q selects without a metric name", expr)
			}
			names = append(names, vs.Name)
		}
		return nil
	})
	if len(names) == 0 {
		t.Errorf("%q uses no metric", expr)
	}
	return names
}

// exposed reports whether name is served: a family itself, or the _bucket,
// _sum or _count series of a histogram family.
func exposed(fams map[string]*dto.MetricFamily, name string) bool {
	if _, ok := fams[name]; ok {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if f := fams[base]; f != nil && f.GetType() == dto.MetricType_HISTOGRAM {
				return true
			}
		}
	}
	return false
}

// checkDeployFilesUse fails for a metric the alert rules or the dashboard use
// that fams (a scrape after a flow) does not have.
func checkDeployFilesUse(t *testing.T, fams map[string]*dto.MetricFamily) {
	t.Helper()
	used := map[string][]string{}
	for _, g := range alertRules(t).Groups {
		for _, r := range g.Rules {
			for _, n := range metricNames(t, r.Expr) {
				used[n] = append(used[n], "alert "+r.Alert)
			}
		}
	}
	exprs, variableMetrics := dashboardQueries(t)
	for _, e := range exprs {
		for _, n := range metricNames(t, e) {
			used[n] = append(used[n], "dashboard")
		}
	}
	for _, n := range variableMetrics {
		used[n] = append(used[n], "dashboard variable")
	}
	for n, where := range used {
		if !exposed(fams, n) {
			t.Errorf("%s (used by %s) is not on /metrics", n, strings.Join(slices.Compact(where), ", "))
		}
	}
	if len(used) < 10 {
		t.Errorf("only %d metrics used by the rules and the dashboard", len(used))
	}
}
