package main

import (
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/dashboard"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/web"
)

func newDemoCmd() *cobra.Command {
	var cfg parcel.DemoConfig
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a hub, vendors, drivers and a logger in one process, then a summary",
		Long: `Run the whole parcel service in one process, with no setup: a hub with its
engine in a temporary directory, --vendors vendors, --drivers drivers and a
logger, each on its own connection over loopback TCP. It prints the live flow
(the VENDOR and DRIVER lines), then a summary: orders posted, delivered, lost,
duplicates, and the time from pickup to delivered (p50, p99). It exits 0 only
if every order was delivered exactly once (with --fail-rate: delivered
or returned to its store exactly once).

--orders is the total across all vendors. At the classroom's pace (the
defaults) 10 orders take about half a minute; for a quick run:

  caps demo --orders 20 --interval 50ms --pickup-delay 20ms --deliver-delay 50ms`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			// The hub's own logs would drown the flow: only errors, unless
			// asked for with --log-level.
			if !cmd.Flags().Changed("log-level") {
				log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
			}
			cfg.Log = log
			cfg.Out = cmd.OutOrStdout()
			if cfg.HTTPAddr != "off" {
				// With the dashboard on, its chat panel needs the chat app too.
				cfg.Apps = append(cfg.Apps, chat.NewApp(chat.AppConfig{}), dashboard.New(dashboard.Options{Assets: web.Dashboard()}))
			}
			_, err = parcel.RunDemo(cmd.Context(), cfg)
			return err
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Vendors, "vendors", 2, "vendors (stores)")
	f.IntVar(&cfg.Drivers, "drivers", 3, "drivers")
	f.IntVar(&cfg.Orders, "orders", 10, "orders in all, shared among the vendors")
	f.DurationVar(&cfg.Interval, "interval", 5*time.Second, "time between one vendor's orders")
	f.DurationVar(&cfg.PickupDelay, "pickup-delay", time.Second, "a driver's time from pickup to in-transit")
	f.DurationVar(&cfg.DeliverDelay, "deliver-delay", 3*time.Second, "a driver's time from in-transit to delivered")
	f.IntVar(&cfg.Capacity, "capacity", 5, "orders each driver carries at once")
	f.Float64Var(&cfg.FailRate, "fail-rate", 0, "share of delivery attempts the drivers fail (0 to 1): failed orders are offered again, returned after --max-attempts")
	f.IntVar(&cfg.MaxAttempts, "max-attempts", 3, "delivery attempts of an order before it is returned")
	f.IntVar(&cfg.PINEvery, "pin-every", 4, "every Nth order of a vendor asks for proof of delivery: the simulated customer tells the driver its PIN (0: none)")
	f.DurationVar(&cfg.Timeout, "timeout", 0, "give up after this long (default: enough for the orders at this pace, plus a minute)")
	f.StringVar(&cfg.HTTPAddr, "http", "off", `HTTP address for the dashboard and metrics, e.g. 127.0.0.1:8080 ("off" serves none)`)
	f.BoolVar(&cfg.Events, "events", false, "print the hub's EVENT lines too")
	f.StringVar(&cfg.EventLog, "event-log", "", "keep the logger's JSON lines in this file")
	return cmd
}
