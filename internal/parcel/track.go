package parcel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/protocol"
)

// TrackConfig configures a one-shot tracking request.
type TrackConfig struct {
	ClientConfig
	// Role and Name to ask as (default logger "track"): vendors see only
	// their store's orders, drivers the orders they carried.
	Role, Name string
}

// ErrNoSuchOrder is returned by Track for an order the hub does not know.
var ErrNoSuchOrder = errors.New("no such order")

// Track asks the hub for an order's timeline.
func Track(ctx context.Context, cfg TrackConfig, orderID string) (*Order, error) {
	cfg.defaults()
	if cfg.Role == "" {
		cfg.Role = protocol.RoleLogger
	}
	if cfg.Name == "" {
		cfg.Name = "track"
	}
	id, err := NormalizeID(orderID)
	if err != nil {
		return nil, err
	}
	cfg.Options.NoReconnect = true
	s, err := dial(ctx, cfg.ClientConfig, cfg.Role, cfg.Name)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	return trackOn(ctx, s.Conn, id, cfg.Timeout)
}

func trackOn(ctx context.Context, c *client.Conn, id string, timeout time.Duration) (*Order, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	b, err := c.Request(ctx, TrackService, []byte(id))
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) && pe.Code == protocol.CodeNotFound {
			return nil, fmt.Errorf("%w %s", ErrNoSuchOrder, id)
		}
		return nil, fmt.Errorf("track %s: %w", id, err)
	}
	var o Order
	if err := json.Unmarshal(b, &o); err != nil {
		return nil, fmt.Errorf("track %s: unreadable answer: %w", id, err)
	}
	return &o, nil
}

// WriteTimeline prints an order and its timeline for people.
func WriteTimeline(w io.Writer, o *Order) error {
	status := string(o.Status)
	if o.Driver != "" {
		status += " (driver " + o.Driver + ")"
	}
	head := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, kv := range [][2]string{{"order", o.OrderID}, {"store", o.Store}, {"customer", o.Customer}, {"address", o.Address}, {"status", status}} {
		fmt.Fprintf(head, "%s\t%s\n", kv[0], kv[1])
	}
	if err := head.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	steps := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(steps, "TIME\tSTATUS\tBY\tHUB")
	var start time.Time
	for i, st := range o.Timeline {
		when := st.Time.Local().Format("2006-01-02 15:04:05.000")
		if i == 0 {
			start = st.Time
		} else {
			when += fmt.Sprintf(" (+%s)", st.Time.Sub(start).Round(time.Millisecond))
		}
		status := string(st.Status)
		if st.Reason != "" { // a failed attempt says why
			status += " (" + st.Reason
			if st.Detail != "" {
				status += ": " + st.Detail
			}
			status += ")"
		}
		fmt.Fprintf(steps, "%s\t%s\t%s\t%s\n", when, status, st.By, st.Hub)
	}
	return steps.Flush()
}
