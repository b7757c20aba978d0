package dashboard

import (
	"fmt"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/parcel"
)

func TestHistogramQuantile(t *testing.T) {
	inf := math.Inf(1)
	// 10 observations ≤ 1, 10 in (1, 2], 80 in (2, 4], none above.
	h := histogram{bounds: []float64{1, 2, 4, inf}, counts: []float64{10, 20, 100, 100}}
	for _, tc := range []struct{ q, want float64 }{
		{0.05, 0.5}, // half way into the first bucket, from 0
		{0.15, 1.5}, // half way into the second
		{0.5, 2.75}, // 50th of 100: 30 of the 80 in (2, 4]
		{0.99, 3.975},
	} {
		if got := h.quantile(tc.q); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("q%.2f = %v, want %v", tc.q, got, tc.want)
		}
	}
	// Observations past the last bound answer the last finite bound.
	over := histogram{bounds: []float64{1, 2, inf}, counts: []float64{0, 0, 5}}
	if got := over.quantile(0.5); got != 2 {
		t.Errorf("all in +Inf: q50 = %v, want 2", got)
	}
	if got := (histogram{bounds: []float64{1, inf}, counts: []float64{0, 0}}).quantile(0.5); !math.IsNaN(got) {
		t.Errorf("empty: q50 = %v, want NaN", got)
	}
	// A window is the difference of two readings.
	later := histogram{bounds: h.bounds, counts: []float64{10, 20, 110, 120}}
	d := later.minus(h)
	if d.total() != 20 || d.counts[2] != 10 {
		t.Errorf("window %+v, want 20 observations, 10 of them ≤ 4", d)
	}
}

// TestIndexKeepsOrdersInFlight fills the index past its size: it forgets
// delivered orders first, oldest first, so drivers' loads stay exact.
func TestIndexKeepsOrdersInFlight(t *testing.T) {
	x := newOrderIndex(10, slog.New(slog.DiscardHandler))
	start := time.Now()
	put := func(i int, status parcel.Status) {
		v := &OrderView{Rev: uint64(i + 1)}
		v.OrderID = fmt.Sprintf("o%03d", i)
		v.Store = "s"
		v.Status = status
		if status != parcel.StatusCreated {
			v.Driver = "dana"
		}
		v.Timeline = []parcel.Step{{Status: status, Time: start.Add(time.Duration(i) * time.Second)}}
		x.mu.Lock()
		x.seq++
		v.seq = x.seq
		x.byID[v.OrderID] = v
		if len(x.byID) > x.max+x.max/8 {
			x.trimLocked()
		}
		x.mu.Unlock()
	}
	for i := range 5 {
		put(i, parcel.StatusInTransit) // the oldest, but in flight
	}
	for i := 5; i < 20; i++ {
		put(i, parcel.StatusDelivered)
	}
	if n := len(x.byID); n > 10+10/8 {
		t.Fatalf("%d orders kept, want at most %d", n, 10+10/8)
	}
	if got := x.loads()["dana"]; got != 5 {
		t.Errorf("dana's load %d, want 5", got)
	}
	all := func(string) bool { return true }
	recent, seq := x.recent(3, all)
	if len(recent) != 3 || recent[0].OrderID != "o019" || seq != 20 {
		t.Errorf("recent: %d orders, first %s, seq %d", len(recent), recent[0].OrderID, seq)
	}
	changed, next, ok := x.changes(18, 100, all)
	if !ok || len(changed) != 2 || next != 20 {
		t.Errorf("changes since 18: %d, next %d, ok %v", len(changed), next, ok)
	}
	if _, _, ok := x.changes(0, 3, all); ok {
		t.Error("more changes than the limit: want a reset")
	}
}
