package parcel_test

import (
	"strings"
	"testing"
	"time"

	"github.com/caps-hub/caps/internal/parcel"
)

// caps track shows every state an order went through, and why an attempt
// failed.
func TestWriteTimelineShowsEveryStateAndWhyAnAttemptFailed(t *testing.T) {
	at := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	o := &parcel.Order{OrderID: "o-1", Store: "acme", Customer: "Ada", Address: "1 Main St", Status: parcel.StatusReturned, Driver: "dora",
		Timeline: []parcel.Step{
			{Status: parcel.StatusCreated, Event: parcel.EventPickup, Time: at, By: "acme"},
			{Status: parcel.StatusAssigned, Event: parcel.EventAssigned, Time: at.Add(time.Second), By: "dora"},
			{Status: parcel.StatusInTransit, Event: parcel.EventInTransit, Time: at.Add(2 * time.Second), By: "dora"},
			{Status: parcel.StatusFailed, Event: parcel.EventFailed, Time: at.Add(3 * time.Second), By: "dora", Reason: "recipient-absent", Detail: "nobody home"},
			{Status: parcel.StatusReturned, Event: parcel.EventReturned, Time: at.Add(4 * time.Second), By: "dora"},
		}}
	var b strings.Builder
	if err := parcel.WriteTimeline(&b, o); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"returned (driver dora)", "created", "assigned", "in-transit", "failed (recipient-absent: nobody home)", "returned  "} {
		if !strings.Contains(out, want) {
			t.Errorf("caps track output lacks %q:\n%s", want, out)
		}
	}
}
