package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/runtime"
)

type chainStep struct {
	ID string `json:"id"`
}

func (chainStep) EventType() string  { return "chain.step" }
func (c chainStep) EventKey() string { return c.ID }

type chainDone struct {
	ID string `json:"id"`
}

func (chainDone) EventType() string { return "chain.done" }

func chainHeader(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

// TestTheChainStartTravelsWithTheEvents: events emitted together outside a
// handler share one chain start, the first one's ce_time; a handler copies
// the start of the event it handles to what it emits; an event from another
// producer without one starts its chain at its ce_time; and each handled
// event's chain latency is observed by the type its handler handles, not by
// the ce_type a producer chose: every ce_type made a series of its own, and
// any producer could grow /metrics without bound.
func TestTheChainStartTravelsWithTheEvents(t *testing.T) {
	h := runtime.NewHandler("chain-follower", func(ctx context.Context, tx runtime.Tx, ev chainStep) error {
		return tx.Emit(ctx, chainDone(ev))
	}, runtime.Emits(chainDone{}))
	tr := startRuntime(t, nil, h)

	tr.emit(t, chainStep{ID: "a"}, chainStep{ID: "b"})
	const foreignStart = "2026-01-02T03:04:05.5Z"
	produceEvent(t, tr, chainStep{ID: "c"}, kgo.RecordHeader{Key: router.HeaderTime, Value: []byte(foreignStart)})
	for _, typ := range []string{"chain.step.v2", "chain.step.v3-" + strings.Repeat("x", 900)} {
		produceEvent(t, tr, chainStep{ID: "d"}, kgo.RecordHeader{Key: router.HeaderType, Value: []byte(typ)})
	}

	steps := tr.records(t, "chain.step", 5)
	startOf := map[string]string{}
	for _, r := range steps {
		startOf[string(r.Key)] = chainHeader(r, router.HeaderChainStarted)
	}
	if a, b := startOf["a"], startOf["b"]; a == "" || a != b {
		t.Fatalf("events emitted together start chains at %q and %q, want one start", a, b)
	}
	for _, r := range steps {
		if string(r.Key) == "a" {
			if got := chainHeader(r, router.HeaderTime); got != startOf["a"] {
				t.Fatalf("the chain starts at %q, want the first event's ce_time %q", startOf["a"], got)
			}
		}
	}
	want := map[string]string{"a": startOf["a"], "b": startOf["a"], "c": foreignStart}
	for _, r := range tr.records(t, "chain.done", 5) {
		if w, ok := want[string(r.Key)]; ok && chainHeader(r, router.HeaderChainStarted) != w {
			got := chainHeader(r, router.HeaderChainStarted)
			t.Errorf("chain.done of %s: chain started %q, want %q", r.Key, got, want[string(r.Key)])
		}
	}
	// Observed after the commit, which the relay may forward first.
	waitUntil(t, "chain latency of chain.step observed 5 times", 10*time.Second, func() bool {
		return tr.histogramCount(t, "eventfn_chain_latency_seconds", "event_type", "chain.step") == 5
	})
	if n := tr.histogramCount(t, "eventfn_chain_latency_seconds"); n != 5 {
		t.Fatalf("%d observations of chain latency in all, want the 5 of chain.step: a series per producer's ce_type", n)
	}
}

// histogramCount is the number of observations of histogram name whose
// labels include labels.
func (tr *testRuntime) histogramCount(t *testing.T, name string, labels ...string) uint64 {
	t.Helper()
	mfs, err := tr.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || (lp.GetName() == labels[i] && lp.GetValue() == labels[i+1])
				}
				if !found {
					continue next
				}
			}
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}
