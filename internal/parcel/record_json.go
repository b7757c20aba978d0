package parcel

import (
	"strconv"
	"time"

	"github.com/caps-hub/caps/internal/jsonenc"
)

// appendRecord appends r as JSON, the bytes encoding/json writes for it
// (without HTML escaping, as marshalJSON): every stored event is one, and
// reflection was a twentieth of an order's CPU (TestRecordJSON pins the
// equality).
func appendRecord(dst []byte, r *Record) []byte {
	dst = append(dst, `{"eventID":`...)
	dst = jsonenc.AppendString(dst, r.EventID, false)
	dst = append(dst, `,"event":`...)
	dst = jsonenc.AppendString(dst, r.Event, false)
	dst = append(dst, `,"status":`...)
	dst = jsonenc.AppendString(dst, string(r.Status), false)
	dst = append(dst, `,"store":`...)
	dst = jsonenc.AppendString(dst, r.Store, false)
	dst = append(dst, `,"orderID":`...)
	dst = jsonenc.AppendString(dst, r.OrderID, false)
	dst = append(dst, `,"customer":`...)
	dst = jsonenc.AppendString(dst, r.Customer, false)
	dst = append(dst, `,"address":`...)
	dst = jsonenc.AppendString(dst, r.Address, false)
	if r.Phone != "" {
		dst = append(dst, `,"phone":`...)
		dst = jsonenc.AppendString(dst, r.Phone, false)
	}
	if r.Note != "" {
		dst = append(dst, `,"note":`...)
		dst = jsonenc.AppendString(dst, r.Note, false)
	}
	if r.RequirePIN {
		dst = append(dst, `,"requirePIN":true`...)
	}
	if r.Driver != "" {
		dst = append(dst, `,"driver":`...)
		dst = jsonenc.AppendString(dst, r.Driver, false)
	}
	dst = append(dst, `,"attempt":`...)
	dst = strconv.AppendInt(dst, int64(r.Attempt), 10)
	dst = append(dst, `,"maxAttempts":`...)
	dst = strconv.AppendInt(dst, int64(r.MaxAttempts), 10)
	if r.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = jsonenc.AppendString(dst, r.Reason, false)
	}
	if r.Detail != "" {
		dst = append(dst, `,"detail":`...)
		dst = jsonenc.AppendString(dst, r.Detail, false)
	}
	dst = append(dst, `,"by":`...)
	dst = jsonenc.AppendString(dst, r.By, false)
	dst = append(dst, `,"hub":`...)
	dst = jsonenc.AppendString(dst, r.Hub, false)
	dst = append(dst, `,"time":`...)
	dst = appendTime(dst, r.Time)
	dst = append(dst, `,"created":`...)
	dst = appendTime(dst, r.Created)
	return append(dst, '}')
}

func appendTime(dst []byte, t time.Time) []byte {
	dst = append(dst, '"')
	dst = t.AppendFormat(dst, time.RFC3339Nano)
	return append(dst, '"')
}
