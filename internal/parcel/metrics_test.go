package parcel_test

import (
	"context"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/caps-hub/caps/internal/parcel"
)

// TestOrderMetrics: the hub's /metrics registry counts every transition of
// every order and times its stages.
func TestOrderMetrics(t *testing.T) {
	th := startHub(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFleet(t, th)
	drv := f.driver(ctx, parcel.DriverConfig{Name: "metered", PickupDelay: 5 * time.Millisecond, DeliverDelay: 5 * time.Millisecond, Capacity: 2})
	wait(t, f.vendor(ctx, "metrics-shop", 3, 5*time.Millisecond), 60*time.Second, "vendor")
	cancel()
	wait(t, drv, 30*time.Second, "driver")

	mfs, err := th.h.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	label := func(m *dto.Metric, name string) string {
		for _, l := range m.GetLabel() {
			if l.GetName() == name {
				return l.GetValue()
			}
		}
		return ""
	}
	transitions := map[string]float64{}
	for _, m := range byName["caps_order_transitions_total"].GetMetric() {
		transitions[label(m, "status")] = m.GetCounter().GetValue()
	}
	for _, s := range []string{"created", "assigned", "in-transit", "delivered"} {
		if transitions[s] != 3 {
			t.Errorf("caps_order_transitions_total{status=%q} = %v, want 3", s, transitions[s])
		}
	}
	stages := map[string]*dto.Histogram{}
	for _, m := range byName["caps_order_stage_seconds"].GetMetric() {
		stages[label(m, "stage")] = m.GetHistogram()
	}
	for _, s := range []string{"pickup_to_assigned", "pickup_to_in_transit", "in_transit_to_delivered", "pickup_to_delivered"} {
		h := stages[s]
		if h.GetSampleCount() != 3 || h.GetSampleSum() <= 0 {
			t.Errorf("caps_order_stage_seconds{stage=%q}: %d samples, sum %v; want 3 and > 0", s, h.GetSampleCount(), h.GetSampleSum())
		}
	}
	if total, transit := stages["pickup_to_delivered"].GetSampleSum(), stages["in_transit_to_delivered"].GetSampleSum(); total < transit {
		t.Errorf("whole orders took %vs, less than their transit %vs", total, transit)
	}
}
