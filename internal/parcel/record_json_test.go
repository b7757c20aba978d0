package parcel

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// TestRecordJSON: appendRecord writes what encoding/json writes, for the
// plain and the awkward.
func TestRecordJSON(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)
	for _, r := range []*Record{
		{EventID: "e1", Event: EventPickup, Status: StatusCreated, Store: "acme", OrderID: "0b6a3b4e-4d4f-4f43-9a0a-5d6a1c1c9a11",
			Customer: "Ada", Address: "1 Main St", Attempt: 1, MaxAttempts: 3, By: "acme", Hub: "h", Time: now, Created: now},
		{EventID: "e2", Event: EventFailed, Status: StatusFailed, Store: "acme", OrderID: "x", Customer: `Q"uote\back <&> é 漢字 ` + "\u2028\u2029\x01\x7f\xff",
			Address: "tab\there\nnew", Phone: "+1 555", Note: "leave at door", RequirePIN: true, Driver: "alice", Attempt: 2, MaxAttempts: 3,
			Reason: "other", Detail: "dog", By: "alice", Hub: "h-2", Time: now.Add(123 * time.Nanosecond), Created: time.Date(2026, 1, 2, 3, 0, 0, 0, time.FixedZone("x", 3600))},
		{},
	} {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
		if got := appendRecord(nil, r); !bytes.Equal(got, bytes.TrimRight(want.Bytes(), "\n")) {
			t.Errorf("appendRecord:\n got %s\nwant %s", got, want.Bytes())
		}
	}
}
