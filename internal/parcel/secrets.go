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
// bucket, written only for orders that need them, and never in the order's
// events, which drivers, loggers and webhooks read.
type Secrets struct {
	OrderID string `json:"orderID"`
	// PIN is the proof-of-delivery PIN (6 digits).
	PIN string `json:"pin"`
	// TrackingCode names the customer's tracking page: unguessable, and not
	// the order id, which drivers and loggers see.
	TrackingCode string `json:"trackingCode"`
}

// makeSecrets creates an order's secrets, unless it has some already (a
// retried pickup keeps the PIN its customer may have been given).
func (d *Dispatcher) makeSecrets(ctx context.Context, id string) error {
	pin, err := rand.Int(rand.Reader, big.NewInt(1_000_000))
	if err != nil {
		return err
	}
	code := make([]byte, 15)
	if _, err := rand.Read(code); err != nil {
		return err
	}
	s := Secrets{OrderID: id, PIN: fmt.Sprintf("%06d", pin.Int64()),
		TrackingCode: strings.ToLower(base32.StdEncoding.EncodeToString(code))}
	b, _ := json.Marshal(s)
	if _, err := d.secrets.Create(ctx, id, b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		if engine.IsFull(err) {
			return hub.Reject(protocol.CodeStoreFull, RuleStoreFull+": the order secrets bucket is full; nothing was changed")
		}
		return fmt.Errorf("store the order's secrets: %w", err)
	}
	return nil
}

// Secrets returns an order's secrets (jetstream.ErrKeyNotFound when it has none).
func (d *Dispatcher) Secrets(ctx context.Context, id string) (*Secrets, error) {
	e, err := d.secrets.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var s Secrets
	if err := json.Unmarshal(e.Value(), &s); err != nil {
		return nil, fmt.Errorf("order %s: corrupt secrets: %w", id, err)
	}
	return &s, nil
}

// checkPIN checks a delivered's PIN against the order's.
func (d *Dispatcher) checkPIN(ctx context.Context, id, pin string) error {
	if pin == "" {
		return refuse(RulePINRequired, "order %s needs the customer's PIN as proof of delivery (\"pin\")", id)
	}
	s, err := d.Secrets(ctx, id)
	if err != nil {
		return fmt.Errorf("order %s: its PIN cannot be read: %w", id, err)
	}
	if subtle.ConstantTimeCompare([]byte(pin), []byte(s.PIN)) != 1 {
		return refuse(RuleWrongPIN, "that is not order %s's PIN", id)
	}
	return nil
}

// secret answers parcel.secret: the order's secrets, for its store's vendor
// (or an admin). The request is an order id, bare or {"orderID": …}.
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
	sec, err := d.Secrets(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, hub.Reject(protocol.CodeNotFound, "order "+id+" has no PIN or tracking code (post it with \"requirePIN\": true)")
	}
	if err != nil {
		return nil, unavailable(err)
	}
	return json.Marshal(sec)
}
