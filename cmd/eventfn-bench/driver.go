package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// phase is one load phase: an open loop at a fixed offered rate, or a closed
// loop of N senders. Its counters are written by the senders while it runs.
type phase struct {
	Name    string
	Rate    float64 // offered orders/s (open loop); 0 for a closed loop
	Senders int     // closed loop senders; 0 for an open loop
	Start   time.Time
	End     time.Time // end of the sending window

	sent, accepted, skipped, inflight atomic.Int64

	mu     sync.Mutex
	failed map[string]int       // by status code, or "timeout" / "error"
	sentAt map[string]time.Time // accepted orders: when their request was sent
	ids    []string             // accepted orders, in answer order

	Backlog []backlogSample // orders accepted but not completed, once a second during the window

	// Results, filled in by finish.
	Lat          latencies
	Completed    int     // accepted orders whose email.sent was read, after the drain
	InWindow     int     // of those, completed within the sending window
	ChainsPerSec float64 // InWindow ÷ window
	Grows        bool
	Slope        float64 // backlog slope, orders/s
	Drained      bool    // every accepted order completed before the drain deadline
	DrainTook    time.Duration
	Interrupted  bool // the run was stopped during this phase: its figures are partial

	// CPU is what eventfn and the machine spent from the start of the
	// phase until its orders completed (or the drain gave up); CPUErr says
	// why it was not measured.
	CPU    cpuTime
	CPUErr error
}

// cpuPerOrder is the phase's CPU time per accepted order; ok is false when
// it was not measured.
func (p *phase) cpuPerOrder() (c cpuTime, ok bool) {
	n := time.Duration(p.accepted.Load())
	if p.CPUErr != nil || n == 0 {
		return cpuTime{}, false
	}
	return p.CPU.per(int64(n)), true
}

func newPhase(name string, rate float64, senders int) *phase {
	return &phase{Name: name, Rate: rate, Senders: senders, failed: map[string]int{}, sentAt: map[string]time.Time{}}
}

// driver posts orders to the app.
type driver struct {
	url     string
	client  *http.Client
	timeout time.Duration
	maxOut  int
	// keyed sends each order with an Idempotency-Key of its own.
	keyed bool
	seq   atomic.Int64
}

func newDriver(url string, maxOutstanding int, timeout time.Duration, keyed bool) *driver {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        maxOutstanding,
		MaxIdleConnsPerHost: maxOutstanding,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &driver{url: url, client: &http.Client{Transport: tr}, timeout: timeout, maxOut: maxOutstanding, keyed: keyed}
}

// post sends one order and records the answer in p; it reports whether the
// order was accepted.
func (d *driver) post(ctx context.Context, p *phase) bool {
	n := d.seq.Add(1)
	body := fmt.Sprintf(`{"customer_email":"load-%d@example.com","items":[{"sku":"SKU-%d","quantity":2,"price_cents":1250},{"sku":"SKU-BOOK","quantity":1,"price_cents":499}]}`, n, n%1000)
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url+"/orders", strings.NewReader(body))
	if err != nil {
		p.fail("error")
		return false
	}
	req.Header.Set("Content-Type", "application/json")
	if d.keyed {
		req.Header.Set("Idempotency-Key", fmt.Sprintf("load-%d", n))
	}
	p.sent.Add(1)
	p.inflight.Add(1)
	defer p.inflight.Add(-1)
	t0 := time.Now()
	resp, err := d.client.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			p.fail("timeout")
		} else {
			p.fail("error")
		}
		return false
	}
	var buf bytes.Buffer
	_, err = io.Copy(&buf, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		p.fail(strconv.Itoa(resp.StatusCode))
		return false
	}
	var order struct {
		ID string `json:"id"`
	}
	if err != nil || json.Unmarshal(buf.Bytes(), &order) != nil || order.ID == "" {
		p.fail("201 without an order id")
		return false
	}
	p.accepted.Add(1)
	p.mu.Lock()
	p.sentAt[order.ID] = t0
	p.ids = append(p.ids, order.ID)
	p.mu.Unlock()
	return true
}

func (p *phase) fail(why string) {
	p.mu.Lock()
	p.failed[why]++
	p.mu.Unlock()
}

// failures is "none" or "503:12 timeout:3".
func (p *phase) failures() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.failed) == 0 {
		return "none"
	}
	var keys []string
	for k := range p.failed {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s:%d", k, p.failed[k]))
	}
	return strings.Join(parts, " ")
}

func (p *phase) failedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, v := range p.failed {
		n += v
	}
	return n
}

// openLoop offers p.Rate orders/s from p.Start to p.End: order i is sent at start + i/rate,
// whatever happened to the ones before it. An order due while maxOut requests
// are outstanding is skipped and counted, so the schedule never waits.
func (dr *driver) openLoop(ctx context.Context, p *phase) {
	var wg sync.WaitGroup
	interval := time.Duration(float64(time.Second) / p.Rate)
	count := int(p.Rate * p.End.Sub(p.Start).Seconds())
	for i := 0; i < count; i++ {
		at := p.Start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
		}
		if ctx.Err() != nil || time.Now().After(p.End) {
			break
		}
		if p.inflight.Load() >= int64(dr.maxOut) {
			p.skipped.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dr.post(ctx, p)
		}()
	}
	if w := time.Until(p.End); w > 0 && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(w):
		}
	}
	wg.Wait() // every request ends by its own timeout
}

// closedLoop runs p.Senders senders from p.Start to p.End; each posts its next order when the last
// one was answered. maxPerSender bounds the count as the window bounds the time.
func (dr *driver) closedLoop(ctx context.Context, p *phase) {
	const maxPerSender = 1_000_000
	var wg sync.WaitGroup
	for s := 0; s < p.Senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < maxPerSender && ctx.Err() == nil && time.Now().Before(p.End); i++ {
				if !dr.post(ctx, p) {
					time.Sleep(10 * time.Millisecond) // a refusing app is not hammered
				}
			}
		}()
	}
	wg.Wait()
}

// progress counts the phase's completed orders and their latencies so far.
func (p *phase) progress(w *watcher) (completed int, lat []time.Duration) {
	p.mu.Lock()
	ids := p.ids
	p.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range ids {
		if at, ok := w.emailAt[id]; ok {
			completed++
			lat = append(lat, at.Sub(p.sentAt[id]))
		}
	}
	return completed, lat
}

// reporter prints a progress line on stderr every second and samples the
// backlog of the current phase during its window.
type reporter struct {
	w       *watcher
	mu      sync.Mutex
	current *phase
	state   string // "sending", "draining"
	tty     bool
	stop    chan struct{}
	done    chan struct{}
}

func startReporter(w *watcher) *reporter {
	r := &reporter{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		r.tty = true
	}
	go r.run()
	return r
}

func (r *reporter) set(p *phase, state string) {
	r.mu.Lock()
	r.current, r.state = p, state
	r.mu.Unlock()
}

func (r *reporter) run() {
	defer close(r.done)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			if r.tty {
				fmt.Fprintln(os.Stderr)
			}
			return
		case now := <-t.C:
			r.mu.Lock()
			p, state := r.current, r.state
			r.mu.Unlock()
			if p == nil {
				continue
			}
			completed, lat := p.progress(r.w)
			accepted := int(p.accepted.Load())
			if state == "sending" && now.Before(p.End) {
				p.mu.Lock()
				p.Backlog = append(p.Backlog, backlogSample{At: now.Sub(p.Start), Backlog: accepted - completed})
				p.mu.Unlock()
			}
			s := summarize(lat)
			line := fmt.Sprintf("load: %-22s %-8s %5.0fs  sent %6d  accepted %6d  completed %6d  backlog %6d  in flight %4d  p99 %s",
				p.Name, state, now.Sub(p.Start).Seconds(), p.sent.Load(), accepted, completed, accepted-completed, p.inflight.Load(), ms(s.P99))
			if r.tty {
				fmt.Fprintf(os.Stderr, "\r\033[K%s", line)
			} else {
				fmt.Fprintln(os.Stderr, line)
			}
		}
	}
}

func (r *reporter) close() {
	close(r.stop)
	<-r.done
}

// finish waits up to drain for the phase's accepted orders to complete, then
// computes its figures.
func (p *phase) finish(ctx context.Context, w *watcher, drain time.Duration) {
	deadline := time.Now().Add(drain)
	for {
		completed, _ := p.progress(w)
		if completed >= int(p.accepted.Load()) {
			p.Drained = true
			break
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.DrainTook = time.Since(p.End)
	p.Interrupted = ctx.Err() != nil
	completed, lat := p.progress(w)
	p.Completed = completed
	p.Lat = summarize(lat)
	w.mu.Lock()
	p.mu.Lock()
	for _, id := range p.ids {
		if at, ok := w.emailAt[id]; ok && !at.After(p.End) {
			p.InWindow++
		}
	}
	p.mu.Unlock()
	w.mu.Unlock()
	window := p.End.Sub(p.Start).Seconds()
	p.ChainsPerSec = float64(p.InWindow) / window
	p.mu.Lock()
	samples := append([]backlogSample(nil), p.Backlog...)
	p.mu.Unlock()
	p.Grows, p.Slope = backlogTrend(samples, float64(p.accepted.Load())/window)
}

// lost lists the phase's accepted orders whose email.sent was never read.
func (p *phase) lost(w *watcher) []string {
	var out []string
	w.mu.Lock()
	defer w.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range p.ids {
		if _, ok := w.emailAt[id]; !ok {
			out = append(out, id)
		}
	}
	return out
}

func ms(d time.Duration) string {
	switch {
	case d == 0:
		return "-"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.2fms", float64(d)/1e6)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}
