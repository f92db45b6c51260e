package main

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"time"
)

// The pure parts of the load benchmark: percentiles, backlog growth and the
// per-key order check. They take plain values, so they are tested apart.

// percentile is the nearest-rank percentile of sorted durations: the smallest
// value such that at least p of the samples are at or below it. p is in [0, 1].
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

// latencies summarizes one set of samples.
type latencies struct {
	N                  int
	P50, P90, P99, Max time.Duration
}

func summarize(d []time.Duration) latencies {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s) == 0 {
		return latencies{}
	}
	return latencies{N: len(s), P50: percentile(s, 0.50), P90: percentile(s, 0.90), P99: percentile(s, 0.99), Max: s[len(s)-1]}
}

// backlogSample is the number of orders accepted but not yet completed, at a
// time since the start of a phase.
type backlogSample struct {
	At      time.Duration
	Backlog int
}

// backlogTrend says whether a backlog grew steadily during a phase. Below
// capacity the backlog settles at rate × latency (Little's law) and wobbles
// around it; above capacity it grows by (offered − capacity) every second.
// The first fifth of the samples (the ramp up to the settled level) is left
// out; a least-squares line is fitted through the rest. The backlog grows when
// that line rises by more than 5 % of the accepted rate per second and by more
// than 10 orders over the fitted span. It returns the slope in orders/s.
func backlogTrend(samples []backlogSample, acceptedRate float64) (grows bool, slope float64) {
	skip := len(samples) / 5
	s := samples[skip:]
	if len(s) < 3 {
		return false, 0
	}
	var sx, sy, sxx, sxy float64
	for _, p := range s {
		x, y := p.At.Seconds(), float64(p.Backlog)
		sx += x
		sy += y
		sxx += x * x
		sxy += x * y
	}
	n := float64(len(s))
	den := n*sxx - sx*sx
	if den == 0 {
		return false, 0
	}
	slope = (n*sxy - sx*sy) / den
	span := (s[len(s)-1].At - s[0].At).Seconds()
	return slope > math.Max(0.05*acceptedRate, 1) && slope*span > 10, slope
}

// chainRecords are the Kafka timestamps of one order's three events, as they
// were first appended (the zero time when the event was not seen).
type chainRecords struct {
	Placed, Confirmed, Emailed time.Time
}

// orderViolations lists every order whose events are out of causal order in
// Kafka: order.placed, then payment.confirmed, then email.sent. Kafka
// timestamps have millisecond resolution, so equal timestamps are in order; a
// later event stamped strictly earlier, or an event whose cause is missing, is
// a violation. Orders are returned sorted by id.
func orderViolations(chains map[string]chainRecords) []string {
	var out []string
	for id, c := range chains {
		switch {
		case !c.Confirmed.IsZero() && c.Placed.IsZero():
			out = append(out, fmt.Sprintf("order %s: payment.confirmed without order.placed", id))
		case !c.Emailed.IsZero() && c.Confirmed.IsZero():
			out = append(out, fmt.Sprintf("order %s: email.sent without payment.confirmed", id))
		case !c.Confirmed.IsZero() && c.Confirmed.Before(c.Placed):
			out = append(out, fmt.Sprintf("order %s: payment.confirmed at %s before order.placed at %s", id, stamp(c.Confirmed), stamp(c.Placed)))
		case !c.Emailed.IsZero() && c.Emailed.Before(c.Confirmed):
			out = append(out, fmt.Sprintf("order %s: email.sent at %s before payment.confirmed at %s", id, stamp(c.Emailed), stamp(c.Confirmed)))
		}
	}
	sort.Strings(out)
	return out
}

func stamp(t time.Time) string { return t.UTC().Format("15:04:05.000") }
