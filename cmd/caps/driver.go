package main

import (
	"crypto/rand"
	"encoding/hex"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/parcel"
)

func newDriverCmd() *cobra.Command {
	var cfg parcel.DriverConfig
	var hubFlag string
	cmd := &cobra.Command{
		Use:   "driver",
		Short: "Run a simulated driver that picks up and delivers parcels",
		Long: `Run a simulated driver. It takes pickups from the drivers' shared work queue
(each pickup goes to one driver), waits --pickup-delay, reports in-transit and
prints "DRIVER[<name>]: picked up <orderID>", waits --deliver-delay, reports
delivered and prints "DRIVER[<name>]: delivered <orderID>". It carries up to
--capacity orders at once. A pickup it has not reported in-transit goes to
another driver if it disappears. Give each driver its own --name: the hub lets
only the driver holding an order move it on. With --fail-rate some attempts
fail ("DRIVER[<name>]: failed <orderID> …"); the hub offers the order to the
drivers again, and after its last attempt the driver returns it to its store
("DRIVER[<name>]: returned <orderID> to <store>").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			if err := applyClientFlags(cmd, &cfg.Options); err != nil {
				return err
			}
			if cfg.Name == "" {
				var b [3]byte
				_, _ = rand.Read(b[:])
				cfg.Name = "driver-" + hex.EncodeToString(b[:])
			}
			cfg.Hub = hubAddrs(hubFlag)
			cfg.Out = cmd.OutOrStdout()
			cfg.Log = log
			return parcel.RunDriver(cmd.Context(), cfg)
		},
	}
	addHubFlag(cmd, &hubFlag)
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "", `the driver's name (default "driver-" and 6 random hex digits)`)
	f.DurationVar(&cfg.PickupDelay, "pickup-delay", time.Second, "time from a pickup to in-transit")
	f.DurationVar(&cfg.DeliverDelay, "deliver-delay", 3*time.Second, "time from in-transit to delivered")
	f.IntVar(&cfg.Capacity, "capacity", 5, "orders carried at once")
	f.Float64Var(&cfg.FailRate, "fail-rate", 0, "share of delivery attempts that fail, 0 to 1 (recipient absent: the hub offers the order again, and after its last attempt the driver returns it)")
	f.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "give up when the hub is unreachable this long")
	return cmd
}
