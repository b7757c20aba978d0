package parcel

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// Secrets are what only an order's store (and, through it, its customer)
// may know: the PIN the customer gives the driver as proof of delivery, and
// the code of the customer's tracking page. They are kept in their own
// bucket, written only for orders that need them (posted with requirePIN,
// posted over the HTTP API, or asked for by the store), and never in the
// order's events, which drivers, loggers and webhooks read.
//
// The bucket holds two keys per order: the order id, whose value is this
// record, and "track.<code>", whose value is the order id (the tracking
// page's lookup). A code is trusted only when the record it leads to names
// it too, so a crash between the two writes leaves nothing reachable.
type Secrets struct {
	OrderID string `json:"orderID"`
	// PIN is the proof-of-delivery PIN (6 digits).
	PIN string `json:"pin"`
	// TrackingCode names the customer's tracking page: unguessable (120
	// random bits), and not the order id, which drivers and loggers see.
	TrackingCode string `json:"trackingCode"`
	// WrongPINs counts the wrong PINs a driver gave for delivery attempt
	// PINAttempt: after MaxPINTries the attempt cannot be delivered
	// (pin-locked), so a driver cannot try the million PINs in turn.
	WrongPINs  int `json:"wrongPINs,omitempty"`
	PINAttempt int `json:"pinAttempt,omitempty"`
}

// trackKeyPrefix starts the key that maps a tracking code to its order.
const trackKeyPrefix = "track."

// trackingCodeLen is the length of a tracking code: 15 random bytes in
// lower-case base32.
const trackingCodeLen = 24

// ValidTrackingCode reports whether code has the form of a tracking code
// (24 of a-z and 2-7), so that nothing else reaches the bucket.
func ValidTrackingCode(code string) bool {
	if len(code) != trackingCodeLen {
		return false
	}
	for _, c := range code {
		if (c < 'a' || c > 'z') && (c < '2' || c > '7') {
			return false
		}
	}
	return true
}

// newSecrets draws a PIN and a tracking code for order id.
func newSecrets(id string) (*Secrets, error) {
	pin, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		return nil, err
	}
	code := make([]byte, 15)
	if _, err := rand.Read(code); err != nil {
		return nil, err
	}
	return &Secrets{OrderID: id, PIN: fmt.Sprintf("%06d", pin.Int64()),
		TrackingCode: strings.ToLower(base32.StdEncoding.EncodeToString(code))}, nil
}

// makeSecrets returns an order's secrets, creating them unless it has some
// already (a retried pickup keeps the PIN its customer may have been
// given). Concurrent calls for one order agree on one set.
func (d *Dispatcher) makeSecrets(ctx context.Context, id string) (*Secrets, error) {
	if s, err := d.Secrets(ctx, id); err == nil || !errors.Is(err, jetstream.ErrKeyNotFound) {
		return s, err
	}
	for range 3 {
		s, err := newSecrets(id)
		if err != nil {
			return nil, err
		}
		b, _ := json.Marshal(s)
		// The code's key first: a record is never visible with a code that
		// does not lead back to it.
		if _, err := d.secrets.Create(ctx, trackKeyPrefix+s.TrackingCode, []byte(id)); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				continue // a code drawn twice: draw again
			}
			return nil, secretsErr(err)
		}
		_, err = d.secrets.Create(ctx, id, b)
		switch {
		case err == nil:
			return s, nil
		case errors.Is(err, jetstream.ErrKeyExists):
			// Another call made them first: theirs stand.
			_ = d.secrets.Delete(ctx, trackKeyPrefix+s.TrackingCode)
			return d.Secrets(ctx, id)
		default:
			_ = d.secrets.Delete(ctx, trackKeyPrefix+s.TrackingCode)
			return nil, secretsErr(err)
		}
	}
	return nil, errors.New("could not draw a tracking code not yet in use")
}

func secretsErr(err error) error {
	if engine.IsFull(err) {
		return hub.Reject(protocol.CodeStoreFull, RuleStoreFull+": the order secrets bucket is full; nothing was changed")
	}
	return fmt.Errorf("store the order's secrets: %w", err)
}

// Secrets returns an order's secrets (jetstream.ErrKeyNotFound when it has none).
func (d *Dispatcher) Secrets(ctx context.Context, id string) (*Secrets, error) {
	s, _, err := d.readSecrets(ctx, id)
	return s, err
}

func (d *Dispatcher) readSecrets(ctx context.Context, id string) (*Secrets, uint64, error) {
	e, err := d.secrets.Get(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	var s Secrets
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return nil, 0, fmt.Errorf("order %s: corrupt secrets: %w", id, err)
	}
	return &s, e.Revision(), nil
}

// EnsureSecrets returns an order's secrets, making them (on disk before it
// returns) if it has none yet: a store may ask for the tracking link of an
// order it posted over TCP without requirePIN.
func (d *Dispatcher) EnsureSecrets(ctx context.Context, id string) (*Secrets, error) {
	if s, err := d.Secrets(ctx, id); err == nil || !errors.Is(err, jetstream.ErrKeyNotFound) {
		return s, err
	}
	s, err := d.makeSecrets(ctx, id)
	if err != nil {
		return nil, err
	}
	return s, d.host.Sync(ctx)
}

// ErrNoSuchCode is returned for a tracking code that leads to no order.
var ErrNoSuchCode = errors.New("no order has this tracking code")

// OrderByTrackingCode returns the order a tracking code names, with its
// secrets (ErrNoSuchCode when the code leads nowhere, or to an order since
// removed).
func (d *Dispatcher) OrderByTrackingCode(ctx context.Context, code string) (*Order, *Secrets, error) {
	if !ValidTrackingCode(code) {
		return nil, nil, ErrNoSuchCode
	}
	e, err := d.secrets.Get(ctx, trackKeyPrefix+code)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, ErrNoSuchCode
	}
	if err != nil {
		return nil, nil, err
	}
	id := string(e.Value())
	s, err := d.Secrets(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, ErrNoSuchCode
	}
	if err != nil {
		return nil, nil, err
	}
	if subtle.ConstantTimeCompare([]byte(s.TrackingCode), []byte(code)) != 1 {
		return nil, nil, ErrNoSuchCode // a code left by an interrupted creation
	}
	o, _, err := d.Order(ctx, id)
	if errors.Is(err, errNoOrder) {
		return nil, nil, ErrNoSuchCode
	}
	if err != nil {
		return nil, nil, err
	}
	return o, s, nil
}

// dropSecrets removes an order's secrets (the sweeper, with the order).
func (d *Dispatcher) dropSecrets(ctx context.Context, id string) error {
	s, err := d.Secrets(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := d.secrets.Purge(ctx, trackKeyPrefix+s.TrackingCode); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return err
	}
	return d.secrets.Purge(ctx, id)
}

// checkPIN checks a delivered's PIN against the order's, for the order's
// current attempt. A wrong PIN is counted (in the secrets record: the order
// itself is unchanged); once an attempt has had MaxPINTries wrong ones, it
// is refused even the right one (pin-locked): the driver reports the
// attempt failed, and the next attempt has as many tries again.
func (d *Dispatcher) checkPIN(ctx context.Context, cur *Record, pin string) error {
	id := cur.OrderID
	if pin == "" {
		return refuse(RulePINRequired, "order %s needs the customer's PIN as proof of delivery (\"pin\")", id)
	}
	for range maxTries {
		s, rev, err := d.readSecrets(ctx, id)
		if err != nil {
			return fmt.Errorf("order %s: its PIN cannot be read: %w", id, err)
		}
		if s.PINAttempt != cur.Attempt {
			s.PINAttempt, s.WrongPINs = cur.Attempt, 0
		}
		if s.WrongPINs >= d.opts.MaxPINTries {
			return refuse(RulePINLocked, "order %s had %d wrong PINs on attempt %d: it cannot be delivered on this attempt; report it failed",
				id, s.WrongPINs, cur.Attempt)
		}
		if subtle.ConstantTimeCompare([]byte(pin), []byte(s.PIN)) == 1 {
			return nil
		}
		s.WrongPINs++
		b, _ := json.Marshal(s)
		if _, err := d.secrets.Update(ctx, id, b, rev); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isConflict(err) {
				continue // another wrong PIN counted meanwhile: count again
			}
			return fmt.Errorf("order %s: count a wrong PIN: %w", id, err)
		}
		return refuse(RuleWrongPIN, "that is not order %s's PIN (%d of %d tries left on this attempt)", id, d.opts.MaxPINTries-s.WrongPINs, d.opts.MaxPINTries)
	}
	return errContention
}

// secret answers parcel.secret: the order's secrets, for its store's vendor
// (or an admin), made if it has none yet. The request is an order id, bare
// or {"orderID": …}.
func (d *Dispatcher) secret(ctx context.Context, s hub.SessionInfo, payload []byte) ([]byte, error) {
	id, err := requestedID(payload)
	if err != nil {
		return nil, err
	}
	cur, _, err := d.store.last(ctx, id, "", true)
	if errors.Is(err, errNoOrder) {
		return nil, hub.Reject(protocol.CodeNotFound, "no such order "+id)
	}
	if err != nil {
		return nil, unavailable(err)
	}
	if s.Role != protocol.RoleAdmin && (s.Role != protocol.RoleVendor || StoreOf(s) != cur.Store) {
		return nil, hub.Reject(protocol.CodeForbidden, fmt.Sprintf("%s %s may not see the secrets of order %s", s.Role, s.Name, id))
	}
	sec, err := d.EnsureSecrets(ctx, id)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, unavailable(err)
	}
	return json.Marshal(sec)
}
