package settlement

import (
	"fmt"
	"html/template"
	"math"
	"strings"
	"time"

	"github.com/tokenrouter/tokenrouter/settlement/ledger"
)

// Charts are SVG drawn on the server: they show without JavaScript and
// without an outside library. Everything interpolated into them is a number
// or passes through template.HTMLEscapeString.

const (
	chartW, chartH = 640, 200
	chartPad       = 36 // left and bottom margin for the axis labels
	chartBuckets   = 24
	chartMaxTxs    = 5000 // the newest transfers the activity chart reads
)

// activityChart draws what account spent and earned over time: bars per
// bucket, spending below the axis, earnings above. The span is that of its
// newest chartMaxTxs transfers, at least an hour and at most 30 days.
func (s *Settlement) activityChart(account string, now time.Time) template.HTML {
	var txs []ledger.TxRecord
	cursor := ""
	for len(txs) < chartMaxTxs {
		page, next, err := s.led.Transactions(account, cursor, ledger.MaxTxPageSize)
		if err != nil {
			break
		}
		txs = append(txs, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	span := time.Hour
	if n := len(txs); n > 0 {
		span = min(max(now.Sub(txs[n-1].Time), time.Hour), 30*24*time.Hour)
	}
	width := span / chartBuckets
	start := now.Add(-width * chartBuckets)
	earned := make([]int64, chartBuckets)
	spent := make([]int64, chartBuckets)
	for _, t := range txs {
		i := int(t.Time.Sub(start) / width)
		if i < 0 || t.Kind == ledger.KindGrant {
			continue
		}
		i = min(i, chartBuckets-1)
		switch {
		case t.From == account:
			spent[i] += t.Amount
		case t.To == account:
			earned[i] += t.Amount
		}
	}
	peak := int64(1)
	for i := range earned {
		peak = max(peak, earned[i], spent[i])
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="Credits spent and earned over the last %s">`, chartW, chartH, roundSpan(span))
	mid := float64(chartH-chartPad) / 2
	plotW := float64(chartW - chartPad)
	barW := plotW / chartBuckets
	fmt.Fprintf(&b, `<line class="axis" x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`, chartPad, mid, chartW, mid)
	for i := range chartBuckets {
		x := float64(chartPad) + float64(i)*barW + 1
		if earned[i] > 0 {
			h := mid * float64(earned[i]) / float64(peak)
			fmt.Fprintf(&b, `<rect class="earned" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>earned %s</title></rect>`,
				x, mid-h, barW-2, h, displayCredits(earned[i]))
		}
		if spent[i] > 0 {
			h := mid * float64(spent[i]) / float64(peak)
			fmt.Fprintf(&b, `<rect class="spent" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>spent %s</title></rect>`,
				x, mid, barW-2, h, displayCredits(spent[i]))
		}
	}
	fmt.Fprintf(&b, `<text x="2" y="14">+%s</text><text x="2" y="%.1f">−%s</text>`, displayCredits(peak), 2*mid, displayCredits(peak))
	fmt.Fprintf(&b, `<text x="%d" y="%d">%s ago</text><text x="%d" y="%d" text-anchor="end">now</text>`,
		chartPad, chartH-8, roundSpan(span), chartW, chartH-8)
	fmt.Fprintf(&b, `<text class="earned-label" x="%d" y="%d">▮ earned</text><text class="spent-label" x="%d" y="%d">▮ spent</text>`,
		chartW/2-60, chartH-8, chartW/2+20, chartH-8)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}

func roundSpan(d time.Duration) string {
	switch {
	case d >= 48*time.Hour:
		return fmt.Sprintf("%d days", int(math.Round(d.Hours()/24)))
	case d >= 2*time.Hour:
		return fmt.Sprintf("%d hours", int(math.Round(d.Hours())))
	}
	return fmt.Sprintf("%d minutes", int(math.Round(d.Minutes())))
}

// supplyChart draws each model's supply (live capacity) against its demand
// (calls in flight plus calls a minute turned away).
func supplyChart(models []modelView) template.HTML {
	if len(models) == 0 {
		return ""
	}
	const rowH, labelW = 34, 180
	h := rowH*len(models) + 30
	peak := 1.0
	for _, m := range models {
		peak = max(peak, float64(m.Capacity), float64(m.InFlight)+m.Unserved)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" viewBox="0 0 %d %d" role="img" aria-label="Supply and demand by model">`, chartW, h)
	plot := float64(chartW - labelW - 10)
	for i, m := range models {
		y := float64(i*rowH + 4)
		name := m.Model
		if len(name) > 26 {
			name = name[:25] + "…"
		}
		fmt.Fprintf(&b, `<text x="0" y="%.1f">%s</text>`, y+18, template.HTMLEscapeString(name))
		sw := plot * float64(m.Capacity) / peak
		dw := plot * (float64(m.InFlight) + m.Unserved) / peak
		fmt.Fprintf(&b, `<rect class="supply" x="%d" y="%.1f" width="%.1f" height="12"><title>supply: %d concurrent calls on %d instances</title></rect>`,
			labelW, y+2, sw, m.Capacity, m.Instances)
		fmt.Fprintf(&b, `<rect class="demand" x="%d" y="%.1f" width="%.1f" height="12"><title>demand: %d in flight, %.1f a minute turned away</title></rect>`,
			labelW, y+15, dw, m.InFlight, m.Unserved)
	}
	fmt.Fprintf(&b, `<text class="supply-label" x="%d" y="%d">▮ supply (capacity)</text><text class="demand-label" x="%d" y="%d">▮ demand (in flight + turned away/min)</text>`,
		labelW, h-6, labelW+170, h-6)
	b.WriteString(`</svg>`)
	return template.HTML(b.String())
}
