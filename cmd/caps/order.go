package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/api"
	"github.com/caps-hub/caps/internal/parcel"
)

// envAPI stands in for --api.
const envAPI = "CAPS_API"

func newOrderCmd() *cobra.Command {
	var c api.Client
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "order",
		Short: "Create, read, list and cancel orders over the hub's HTTP API",
		Long: `Thin clients of the REST API under /api/v1 (docs/API.md): what a shop's
backend does with curl. --api is the hub's HTTP address (default $CAPS_API or
http://localhost:8080); --token a vendor's or admin's token (default
$CAPS_TOKEN); --store the store, for an admin or on a hub without --auth.`,
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&c.Base, "api", "", "the hub's HTTP address (default $"+envAPI+" or http://localhost:8080)")
	pf.StringVar(&c.Token, "token", "", "a vendor's or admin's token (default $"+envToken+")")
	pf.StringVar(&c.Store, "store", "", "the store to act for (an admin's token, or a hub without --auth)")
	pf.BoolVar(&asJSON, "json", false, "print the API's JSON answer as it is")
	pf.DurationVar(&timeout, "timeout", 30*time.Second, "give up on the request after this long")
	// run makes the request with the flags' client and prints its answer.
	run := func(cmd *cobra.Command, fn func(ctx context.Context, c *api.Client, out io.Writer) ([]byte, error)) error {
		if c.Base == "" {
			c.Base = os.Getenv(envAPI)
		}
		if c.Base == "" {
			c.Base = "http://localhost:8080"
		}
		if c.Token == "" {
			c.Token = os.Getenv(envToken)
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		var human strings.Builder
		raw, err := fn(ctx, &c, &human)
		if err != nil {
			return err
		}
		out := cmd.OutOrStdout()
		if asJSON {
			_, err = fmt.Fprintln(out, strings.TrimSpace(string(raw)))
			return err
		}
		_, err = io.WriteString(out, human.String())
		return err
	}

	var n api.NewOrderBody
	var key string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an order",
		Example: `  caps order create --customer "Ada Lovelace" --address "12 Analytical Row" --require-pin
  caps order create --store corner-shop --customer Bob --address "1 Main St" --idempotency-key checkout-42`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd, func(ctx context.Context, c *api.Client, out io.Writer) ([]byte, error) {
				o, raw, err := c.CreateOrder(ctx, n, key)
				if err != nil {
					return raw, fmt.Errorf("order create: %w", err)
				}
				writeOrder(out, o)
				return raw, nil
			})
		},
	}
	cf := create.Flags()
	cf.StringVar(&n.Customer, "customer", "", "the customer's name (required)")
	cf.StringVar(&n.Address, "address", "", "the delivery address (required)")
	cf.StringVar(&n.Phone, "phone", "", "the customer's phone")
	cf.StringVar(&n.Note, "note", "", "a note for the driver")
	cf.BoolVar(&n.RequirePIN, "require-pin", false, "proof of delivery: the driver must give the customer's PIN")
	cf.StringVar(&key, "idempotency-key", "", "run again with the same key: the same order, never a second one")
	_ = create.MarkFlagRequired("customer")
	_ = create.MarkFlagRequired("address")

	get := &cobra.Command{
		Use:   "get ORDER-ID",
		Short: "Show an order with its timeline",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(cmd, func(ctx context.Context, c *api.Client, out io.Writer) ([]byte, error) {
				o, raw, err := c.GetOrder(ctx, args[0])
				if err != nil {
					return raw, fmt.Errorf("order get %s: %w", args[0], err)
				}
				writeOrder(out, o)
				return raw, nil
			})
		},
	}

	cancelCmd := &cobra.Command{
		Use:   "cancel ORDER-ID",
		Short: "Cancel an order not yet in transit",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(cmd, func(ctx context.Context, c *api.Client, out io.Writer) ([]byte, error) {
				o, raw, err := c.CancelOrder(ctx, args[0])
				if err != nil {
					return raw, fmt.Errorf("order cancel %s: %w", args[0], err)
				}
				writeOrder(out, o)
				return raw, nil
			})
		},
	}

	var statuses []string
	var limit int
	var cursor string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the store's orders, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd, func(ctx context.Context, c *api.Client, out io.Writer) ([]byte, error) {
				l, raw, err := c.ListOrders(ctx, statuses, limit, cursor)
				if err != nil {
					return raw, fmt.Errorf("order list: %w", err)
				}
				tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "ORDER\tSTATUS\tCREATED\tCUSTOMER\tDRIVER")
				for _, o := range l.Items {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.OrderID, o.Status, o.Created.Local().Format("2006-01-02 15:04:05"), o.Customer, o.Driver)
				}
				tw.Flush()
				if l.NextCursor != "" {
					fmt.Fprintf(out, "more: --cursor %s\n", l.NextCursor)
				}
				return raw, nil
			})
		},
	}
	lf := list.Flags()
	lf.StringSliceVar(&statuses, "status", nil, "only these statuses (created, assigned, in-transit, delivered, failed, returned, cancelled), comma-separated")
	lf.IntVar(&limit, "limit", 20, "orders per page (1-100)")
	lf.StringVar(&cursor, "cursor", "", "the page after the one that printed this cursor")

	cmd.AddCommand(create, get, cancelCmd, list)
	return cmd
}

// writeOrder prints an order for people: its details, PIN and tracking
// link, and its timeline.
func writeOrder(w io.Writer, o *api.Order) {
	po := &parcel.Order{OrderID: o.OrderID, Store: o.Store, Customer: o.Customer, Address: o.Address,
		Status: parcel.Status(o.Status), Driver: o.Driver, Timeline: o.Timeline}
	_ = parcel.WriteTimeline(w, po)
	if o.PIN != "" || o.TrackingURL != "" {
		fmt.Fprintln(w)
	}
	if o.TrackingURL != "" {
		fmt.Fprintf(w, "tracking  %s\n", o.TrackingURL)
	}
	if o.PIN != "" {
		fmt.Fprintf(w, "PIN       %s (the customer gives it to the driver)\n", o.PIN)
	}
}
