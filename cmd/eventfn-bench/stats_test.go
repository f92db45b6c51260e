package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one sample", ms(7), 0.99, 7 * time.Millisecond},
		{"median of odd count", ms(1, 2, 3, 4, 5), 0.5, 3 * time.Millisecond},
		{"median of even count is the lower middle", ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{"p0 is the minimum", ms(3, 4, 5), 0, 3 * time.Millisecond},
		{"p100 is the maximum", ms(3, 4, 5), 1, 5 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 0.99, 99 * time.Millisecond},
		{"p90 of 1..100", ms(hundred...), 0.90, 90 * time.Millisecond},
		{"p99 of 10 samples is the largest", ms(1, 1, 1, 1, 1, 1, 1, 1, 1, 500), 0.99, 500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.in, tc.p); got != tc.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tc.in, tc.p, got, tc.want)
			}
		})
	}
}

func TestSummarizeSortsACopy(t *testing.T) {
	in := []time.Duration{5, 1, 3}
	s := summarize(in)
	if s.N != 3 || s.P50 != 3 || s.Max != 5 {
		t.Errorf("summarize = %+v", s)
	}
	if !slices.Equal(in, []time.Duration{5, 1, 3}) {
		t.Errorf("summarize reordered its input: %v", in)
	}
}

func TestBacklogTrend(t *testing.T) {
	series := func(n int, f func(i int) int) []backlogSample {
		out := make([]backlogSample, n)
		for i := range out {
			out[i] = backlogSample{At: time.Duration(i+1) * time.Second, Backlog: f(i)}
		}
		return out
	}
	wobble := []int{0, 3, -2, 4, -3, 1, -1, 2, -4, 3}
	for _, tc := range []struct {
		name  string
		in    []backlogSample
		rate  float64
		grows bool
	}{
		{"too few samples", series(2, func(i int) int { return 100 * i }), 100, false},
		{"flat", series(20, func(int) int { return 5 }), 100, false},
		{"steady with noise", series(20, func(i int) int { return 10 + wobble[i%len(wobble)] }), 100, false},
		{"ramp up then steady", series(20, func(i int) int { return min(i, 2) * 40 }), 100, false},
		{"draining", series(20, func(i int) int { return 400 - 20*i }), 100, false},
		{"grows by 50/s at 400/s offered", series(20, func(i int) int { return 50 * i }), 400, true},
		{"grows by 300/s", series(20, func(i int) int { return 300*i + wobble[i%len(wobble)]*20 }), 600, true},
		{"slope under 5% of the rate is noise", series(20, func(i int) int { return 100 + 2*i }), 100, false},
		{"tiny rate: under 10 orders over the window", series(5, func(i int) int { return i * 2 }), 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			grows, slope := backlogTrend(tc.in, tc.rate)
			if grows != tc.grows {
				t.Errorf("backlogTrend grows = %v (slope %.1f/s), want %v", grows, slope, tc.grows)
			}
		})
	}
}

func TestOrderViolations(t *testing.T) {
	t0 := time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)
	at := func(msec int) time.Time { return t0.Add(time.Duration(msec) * time.Millisecond) }
	var zero time.Time
	for _, tc := range []struct {
		name   string
		chains map[string]chainRecords
		want   []string // substrings of each violation, in order
	}{
		{"none", nil, nil},
		{"in order", map[string]chainRecords{"a": {at(0), at(3), at(9)}}, nil},
		{"equal timestamps are in order (millisecond resolution)", map[string]chainRecords{"a": {at(5), at(5), at(5)}}, nil},
		{"incomplete chain is not an order violation", map[string]chainRecords{"a": {at(0), at(1), zero}, "b": {at(0), zero, zero}}, nil},
		{"confirmed before placed", map[string]chainRecords{"a": {at(5), at(4), at(9)}}, []string{"order a: payment.confirmed at"}},
		{"email before confirmed", map[string]chainRecords{"a": {at(0), at(5), at(4)}}, []string{"order a: email.sent at"}},
		{"email without confirmed", map[string]chainRecords{"b": {at(0), zero, at(4)}}, []string{"order b: email.sent without payment.confirmed"}},
		{"confirmed without placed", map[string]chainRecords{"c": {zero, at(1), at(4)}}, []string{"order c: payment.confirmed without order.placed"}},
		{"several, sorted by order", map[string]chainRecords{
			"z": {at(9), at(1), at(10)},
			"m": {at(0), at(1), at(2)},
			"a": {at(0), at(5), at(1)},
		}, []string{"order a:", "order z:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := orderViolations(tc.chains)
			if len(got) != len(tc.want) {
				t.Fatalf("orderViolations = %q, want %d violation(s)", got, len(tc.want))
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("violation %d = %q, want it to contain %q", i, got[i], w)
				}
			}
		})
	}
}
