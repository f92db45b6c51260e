package main

import (
	"fmt"
	"image/color"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// writePlot draws latency (p50 and p99, POST → email.sent, log scale) against
// achieved throughput (chains completed per second), one point per phase, and
// saves it to every path; the extension picks the format (.svg, .png, .pdf).
// The open-loop phases are joined in the order of their offered rate; a
// closed-loop phase stands alone.
func writePlot(paths []string, title string, phases []*phase) error {
	var open, closed []*phase
	for _, p := range phases {
		switch {
		case p.Lat.N == 0 || p.Interrupted:
		case p.Senders > 0:
			closed = append(closed, p)
		default:
			open = append(open, p)
		}
	}
	if len(open)+len(closed) == 0 {
		return fmt.Errorf("no phase completed an order: nothing to plot")
	}
	sort.Slice(open, func(i, j int) bool { return open[i].Rate < open[j].Rate })

	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "chains completed per second (POST /orders → email.sent)"
	p.Y.Label.Text = "latency, ms (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.X.Tick.Marker = plot.TickerFunc(func(min, max float64) []plot.Tick {
		ticks := plot.DefaultTicks{}.Ticks(min, max)
		for i := range ticks {
			if ticks[i].Label != "" {
				ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
			}
		}
		return ticks
	})
	p.Add(plotter.NewGrid())

	msOf := func(d time.Duration) float64 { return math.Max(float64(d)/1e6, 0.01) }
	lo, hi, maxX := 50.0, 50.0, 0.0
	points := func(ps []*phase, pct func(latencies) time.Duration) (plotter.XYs, []string) {
		xys, names := make(plotter.XYs, len(ps)), make([]string, len(ps))
		for i, ph := range ps {
			xys[i] = plotter.XY{X: ph.ChainsPerSec, Y: msOf(pct(ph.Lat))}
			names[i] = ph.Name
			lo, hi, maxX = math.Min(lo, xys[i].Y), math.Max(hi, xys[i].Y), math.Max(maxX, xys[i].X)
		}
		return xys, names
	}
	blue, red := color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff}
	for _, s := range []struct {
		name  string
		pct   func(latencies) time.Duration
		c     color.Color
		open  draw.GlyphDrawer
		close draw.GlyphDrawer
	}{
		{"p50", func(l latencies) time.Duration { return l.P50 }, blue, draw.CircleGlyph{}, draw.RingGlyph{}},
		{"p99", func(l latencies) time.Duration { return l.P99 }, red, draw.TriangleGlyph{}, draw.PyramidGlyph{}},
	} {
		if len(open) > 0 {
			xys, names := points(open, s.pct)
			l, sc, err := plotter.NewLinePoints(xys)
			if err != nil {
				return err
			}
			l.Color = s.c
			sc.Color, sc.Shape, sc.Radius = s.c, s.open, vg.Points(3)
			p.Add(l, sc)
			p.Legend.Add(s.name+", open loop at each offered rate", l, sc)
			if s.name == "p99" {
				if err := addLabels(p, xys, names); err != nil {
					return err
				}
			}
		}
		if len(closed) > 0 {
			xys, names := points(closed, s.pct)
			sc, err := plotter.NewScatter(xys)
			if err != nil {
				return err
			}
			sc.Color, sc.Shape, sc.Radius = s.c, s.close, vg.Points(4)
			p.Add(sc)
			p.Legend.Add(s.name+", closed loop", sc)
			if s.name == "p99" {
				if err := addLabels(p, xys, names); err != nil {
					return err
				}
			}
		}
	}
	// The 50 ms line of the p99 targets at 100 orders/s.
	ref, err := plotter.NewLine(plotter.XYs{{X: 0, Y: 50}, {X: maxX * 1.15, Y: 50}})
	if err != nil {
		return err
	}
	ref.Color, ref.Dashes = color.Gray{Y: 0x80}, []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(ref)
	p.Legend.Add("50 ms", ref)
	p.Legend.Top, p.Legend.Left = true, true
	p.Legend.XOffs, p.Legend.YOffs = vg.Points(8), -vg.Points(4)
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.X.Min, p.X.Max = 0, maxX*1.15
	p.Y.Min, p.Y.Max = lo/2, hi*4
	for _, path := range paths {
		if err := p.Save(9*vg.Inch, 5.5*vg.Inch, path); err != nil {
			return fmt.Errorf("write plot %s: %w", path, err)
		}
	}
	return nil
}

func addLabels(p *plot.Plot, xys plotter.XYs, names []string) error {
	l, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: names})
	if err != nil {
		return err
	}
	for i := range l.TextStyle {
		l.TextStyle[i].Font.Size = vg.Points(7)
		l.TextStyle[i].YAlign = draw.YBottom
	}
	l.Offset = vg.Point{X: vg.Points(4), Y: vg.Points(2)}
	p.Add(l)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
