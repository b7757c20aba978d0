package parcel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"

	"github.com/caps-hub/caps/protocol"
)

// Limits on what a client may put in an order event.
const (
	// MaxField is the longest store, orderID, customer, address, phone or
	// reason detail, in bytes.
	MaxField = 200
	// MaxNote is the longest note a store may leave for the driver.
	MaxNote = 500
	// MaxPayload is the largest order event payload a client may send, in bytes.
	MaxPayload = 4096
)

// Parcel is the classroom order payload. The field names are the classroom's,
// so classroom clients interoperate.
type Parcel struct {
	Store    string `json:"store"`
	OrderID  string `json:"orderID"`
	Customer string `json:"customer"`
	Address  string `json:"address"`
}

// Event is what a client sends with an order event. Which fields an event
// needs and may carry is checked by ParsePayload; a classroom driver echoes
// the record it was handed (Record's fields) back with its own events, so
// every field of a Record is accepted too (and the hub's own are ignored).
type Event struct {
	Parcel
	// Phone and Note are optional details of a new order.
	Phone string `json:"phone,omitempty"`
	Note  string `json:"note,omitempty"`
	// RequirePIN asks, with a new order, for proof of delivery: the hub makes
	// a PIN for the customer, and the driver's delivered must carry it.
	RequirePIN bool `json:"requirePIN,omitempty"`
	// PIN is the customer's PIN, on a delivered. It is checked and never stored.
	PIN string `json:"pin,omitempty"`
	// Reason (one of FailReasons) and Detail explain a failed attempt.
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	// Driver and Time are informational: who sent it, by their clock. The
	// hub records its own.
	Driver string    `json:"driver,omitempty"`
	Time   time.Time `json:"time,omitzero"`
}

// Record is the payload of every stored order event: the event and the
// order as it stands after it. An order's last record is its state; its
// records in order are its timeline. It carries no secret (the PIN lives in
// the secrets bucket), so drivers, loggers and webhooks may all read it.
type Record struct {
	// EventID is the hub's message id of this event, unique per event: what
	// a webhook calls the event's id.
	EventID string `json:"eventID"`
	Event   string `json:"event"`
	Status  Status `json:"status"`
	Store   string `json:"store"`
	OrderID string `json:"orderID"`
	// The order's details, as its store posted them.
	Customer   string `json:"customer"`
	Address    string `json:"address"`
	Phone      string `json:"phone,omitempty"`
	Note       string `json:"note,omitempty"`
	RequirePIN bool   `json:"requirePIN,omitempty"`
	// Driver holds the order: the driver its current attempt's pickup was
	// last handed to (empty while no one does).
	Driver      string `json:"driver,omitempty"`
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"maxAttempts"`
	// Reason and Detail of a failed attempt (on the failed event).
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	// By made the event (the store, a driver, or the hub's name), on hub Hub,
	// at Time by the hub's clock. Created is when the order was posted.
	By      string    `json:"by"`
	Hub     string    `json:"hub"`
	Time    time.Time `json:"time"`
	Created time.Time `json:"created"`

	// key is the digest of the message id of the client publish that made
	// this event (header keyHeader), to recognise its retry.
	key string
	// seq is the record's stream sequence, where a reader needs it.
	seq uint64
}

// Parcel returns the order's classroom payload.
func (r *Record) Parcel() Parcel {
	return Parcel{Store: r.Store, OrderID: r.OrderID, Customer: r.Customer, Address: r.Address}
}

// Order is an order as track and the dashboard show it: its state and its
// timeline.
type Order struct {
	OrderID    string `json:"orderID"`
	Store      string `json:"store"`
	Customer   string `json:"customer"`
	Address    string `json:"address"`
	Phone      string `json:"phone,omitempty"`
	Note       string `json:"note,omitempty"`
	RequirePIN bool   `json:"requirePIN,omitempty"`
	Status     Status `json:"status"`
	// Driver holds the order (or held it last, once delivered or returned).
	Driver      string `json:"driver,omitempty"`
	Attempt     int    `json:"attempt"`
	MaxAttempts int    `json:"maxAttempts"`
	Timeline    []Step `json:"timeline"`
}

// Step is one event of an order.
type Step struct {
	Status Status    `json:"status"`
	Event  string    `json:"event"`
	Time   time.Time `json:"time"` // the hub's clock
	// By is who caused it: the store for a pickup, the driver otherwise
	// (the hub's name for an offer after a failure).
	By     string `json:"by,omitempty"`
	Hub    string `json:"hub,omitempty"`
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
}

// maxTimeline bounds the steps an order shows: a pickup handed from driver
// to driver many times keeps its first and latest steps.
const maxTimeline = 32

// orderOf folds an order's records (oldest first) into its view.
func orderOf(recs []*Record) *Order {
	if len(recs) == 0 {
		return nil
	}
	o := &Order{}
	for _, r := range recs {
		o.Apply(r)
	}
	return o
}

// Apply folds the order's next record into o: its state becomes the
// record's, and its step ends the timeline (kept bounded).
func (o *Order) Apply(r *Record) {
	o.OrderID, o.Store, o.Customer, o.Address = r.OrderID, r.Store, r.Customer, r.Address
	o.Phone, o.Note, o.RequirePIN = r.Phone, r.Note, r.RequirePIN
	o.Status, o.Driver, o.Attempt, o.MaxAttempts = r.Status, r.Driver, r.Attempt, r.MaxAttempts
	o.Timeline = append(o.Timeline, Step{Status: r.Status, Event: r.Event, Time: r.Time, By: r.By, Hub: r.Hub, Reason: r.Reason, Detail: r.Detail})
	if n := len(o.Timeline); n > maxTimeline {
		o.Timeline = append(o.Timeline[:1], o.Timeline[n-maxTimeline+1:]...)
	}
}

// At returns the time of the latest step with status s, or the zero time.
func (o *Order) At(s Status) time.Time {
	for i := len(o.Timeline) - 1; i >= 0; i-- {
		if o.Timeline[i].Status == s {
			return o.Timeline[i].Time
		}
	}
	return time.Time{}
}

// Parcel returns the order's classroom payload.
func (o *Order) Parcel() Parcel {
	return Parcel{Store: o.Store, OrderID: o.OrderID, Customer: o.Customer, Address: o.Address}
}

// Refusal is a rule the dispatcher enforces, with the reason it was broken.
// It becomes an ERR frame with code "rejected" and text "<rule>: <reason>".
type Refusal struct {
	Rule   string
	Reason string
}

func (r *Refusal) Error() string { return r.Rule + ": " + r.Reason }

func refuse(rule, format string, args ...any) *Refusal {
	return &Refusal{Rule: rule, Reason: fmt.Sprintf(format, args...)}
}

// Rule names, the first word of every refusal.
const (
	RuleBadPayload     = "bad-payload"
	RuleMissingField   = "missing-field"
	RuleUnknownField   = "unknown-field"
	RuleBadField       = "bad-field"
	RuleFieldTooLong   = "field-too-long"
	RuleBadOrderID     = "bad-order-id"
	RuleUnknownEvent   = "unknown-event"
	RuleWrongStore     = "wrong-store"
	RuleDuplicate      = "duplicate-order"
	RuleNoSuchOrder    = "no-such-order"
	RuleMismatch       = "order-mismatch"
	RuleNotHolder      = "not-holder"
	RuleOutOfOrder     = "out-of-order"
	RuleNotCancellable = "not-cancellable"
	RulePINRequired    = "pin-required"
	RuleWrongPIN       = "wrong-pin"
	// RulePINLocked refuses a delivery attempt that was given too many
	// wrong PINs (Options.MaxPINTries), the right one included.
	RulePINLocked = "pin-locked"
	// RuleStoreFull is the refusal of a new order when the order store is
	// nearly full (code store_full).
	RuleStoreFull = "store-full"
)

// payloadFields is the form of a client's payload: every field a client
// may set, and those of a Record, which a classroom driver echoes back (the
// hub's own are ignored: json.RawMessage takes any value). A field not
// listed is refused.
type payloadFields struct {
	Store      *string `json:"store"`
	OrderID    *string `json:"orderID"`
	Customer   *string `json:"customer"`
	Address    *string `json:"address"`
	Phone      *string `json:"phone"`
	Note       *string `json:"note"`
	Reason     *string `json:"reason"`
	Detail     *string `json:"detail"`
	PIN        *string `json:"pin"`
	Driver     *string `json:"driver"`
	RequirePIN *bool   `json:"requirePIN"`

	Time        json.RawMessage `json:"time"`
	EventID     json.RawMessage `json:"eventID"`
	Event       json.RawMessage `json:"event"`
	Status      json.RawMessage `json:"status"`
	Attempt     json.RawMessage `json:"attempt"`
	MaxAttempts json.RawMessage `json:"maxAttempts"`
	By          json.RawMessage `json:"by"`
	Hub         json.RawMessage `json:"hub"`
	Created     json.RawMessage `json:"created"`
}

// ParsePayload decodes and checks a client's order event payload as a
// whole: a JSON object of at most MaxPayload bytes whose fields are all
// known (a Record's, which a classroom driver echoes, or an Event's), whose
// strings are bounded and free of control characters, with the fields
// event needs (store and a UUID orderID always; customer and address for a
// pickup; a known reason for a failure). The orderID is returned in lower
// case. ParsePayload checks a classroom order (store, orderID, customer and
// address, any event).
func ParsePayload(b []byte) (Event, error) { return parseEvent(b, "") }

func parseEvent(b []byte, event string) (Event, error) {
	var ev Event
	if len(b) > MaxPayload {
		return ev, refuse(RuleBadPayload, "payload is %d bytes, at most %d allowed", len(b), MaxPayload)
	}
	notObject := refuse(RuleBadPayload, `payload must be a JSON object {"store","orderID","customer","address"}`)
	if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return ev, notObject
	}
	var f payloadFields
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		var typeErr *json.UnmarshalTypeError
		switch {
		case errors.As(err, &typeErr) && typeErr.Field != "":
			return ev, refuse(RuleBadField, "%q must be a %s", clip(typeErr.Field), typeName(typeErr.Type.String()))
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return ev, refuse(RuleUnknownField, "payload field %s is not an order field", clip(strings.TrimPrefix(err.Error(), "json: unknown field ")))
		}
		return ev, notObject
	}
	if dec.More() {
		return ev, refuse(RuleBadPayload, "payload has more than one JSON value")
	}
	always := []string{EventPickup, EventInTransit, EventDelivered, EventFailed, EventReturned, EventCancelled}
	for _, x := range []struct {
		name  string
		src   *string
		dst   *string
		limit int
		need  []string
	}{
		{"store", f.Store, &ev.Store, MaxField, always},
		{"orderID", f.OrderID, &ev.OrderID, 36, always},
		{"customer", f.Customer, &ev.Customer, MaxField, []string{EventPickup}},
		{"address", f.Address, &ev.Address, MaxField, []string{EventPickup}},
		{"phone", f.Phone, &ev.Phone, MaxField, nil},
		{"note", f.Note, &ev.Note, MaxNote, nil},
		{"reason", f.Reason, &ev.Reason, MaxField, []string{EventFailed}},
		{"detail", f.Detail, &ev.Detail, MaxField, nil},
		{"pin", f.PIN, &ev.PIN, 32, nil},
		{"driver", f.Driver, &ev.Driver, MaxField, nil},
	} {
		// Without an event, the classroom's order: store, orderID, customer, address.
		needed := slices.Contains(x.need, event) || (event == "" && slices.Contains(x.need, EventPickup))
		s := ""
		if x.src != nil {
			s = strings.TrimSpace(*x.src)
		}
		switch {
		case x.src == nil && needed:
			return ev, refuse(RuleMissingField, "payload has no %q", x.name)
		case s == "" && needed:
			return ev, refuse(RuleMissingField, "%q is empty", x.name)
		case len(s) > x.limit && x.name == "orderID":
			return ev, refuse(RuleBadOrderID, "orderID %q is not a UUID (want the form 8-4-4-4-12 hex digits)", clip(s))
		case len(s) > x.limit:
			return ev, refuse(RuleFieldTooLong, "%q is %d bytes, at most %d allowed", x.name, len(s), x.limit)
		case !printable(s):
			return ev, refuse(RuleBadField, "%q contains control characters or invalid UTF-8", x.name)
		}
		*x.dst = s
	}
	if f.RequirePIN != nil && event == EventPickup {
		ev.RequirePIN = *f.RequirePIN
	}
	if len(f.Time) > 0 {
		_ = json.Unmarshal(f.Time, &ev.Time) // informational only
	}
	var err error
	if ev.OrderID, err = NormalizeID(ev.OrderID); err != nil {
		return ev, err
	}
	if !protocol.ValidName(ev.Store) {
		return ev, refuse(RuleBadField, "store %q is not a valid name (1-32 letters, digits, _ or -)", ev.Store)
	}
	if event == EventFailed && !slices.Contains(FailReasons, ev.Reason) {
		return ev, refuse(RuleBadField, "reason %q is not one of %s", clip(ev.Reason), strings.Join(FailReasons, ", "))
	}
	if event == EventFailed && ev.Reason == "other" && ev.Detail == "" {
		return ev, refuse(RuleMissingField, `a failure for reason "other" needs a "detail"`)
	}
	return ev, nil
}

// typeName names a Go type of payloadFields for a person.
func typeName(t string) string {
	switch strings.TrimPrefix(t, "*") {
	case "string":
		return "string"
	case "bool":
		return "true or false"
	}
	return "valid value"
}

// NormalizeID checks that id is a UUID in its canonical 36-character form and
// returns it in lower case.
func NormalizeID(id string) (string, error) {
	if len(id) != 36 {
		return "", refuse(RuleBadOrderID, "orderID %q is not a UUID (want the form 8-4-4-4-12 hex digits)", clip(id))
	}
	u, err := uuid.Parse(id)
	if err != nil {
		return "", refuse(RuleBadOrderID, "orderID %q is not a UUID: %v", clip(id), err)
	}
	return u.String(), nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// keyDigest is what the hub keeps of a client's message id: enough to
// recognise the same id again, bounded in size whatever the client sent.
func keyDigest(key string) string {
	if key == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:12])
}

// marshalJSON encodes v without escaping HTML characters (payloads are read
// by people and by classroom clients, not by browsers as HTML).
func marshalJSON(v any) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return bytes.TrimRight(buf.Bytes(), "\n")
}

// marshalEvent encodes a client's event payload.
func marshalEvent(ev Event) []byte { return marshalJSON(ev) }
