package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/parcel"
)

func newVendorCmd() *cobra.Command {
	var cfg parcel.VendorConfig
	var hubFlag string
	var seed uint64
	cmd := &cobra.Command{
		Use:   "vendor",
		Short: "Run a simulated store that posts orders and thanks for deliveries",
		Long: `Run a simulated store. It posts a realistic fake order every --interval and
prints "VENDOR[<store>]: Thank you for delivering <orderID>" once for each of its
store's parcels delivered, including those delivered while it was away.
With --orders N it exits 0 once all N of its orders are confirmed delivered.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			if err := applyClientFlags(cmd, &cfg.Options); err != nil {
				return err
			}
			cfg.Hub = hubAddrs(hubFlag)
			cfg.Out = cmd.OutOrStdout()
			cfg.Log = log
			cfg.Faker = parcel.NewFaker(seed)
			return parcel.RunVendor(cmd.Context(), cfg)
		},
	}
	addHubFlag(cmd, &hubFlag)
	f := cmd.Flags()
	f.StringVar(&cfg.Store, "store", "1-206-flowers", "the store's name")
	f.DurationVar(&cfg.Interval, "interval", 5*time.Second, "time between orders")
	f.IntVar(&cfg.Orders, "orders", 0, "orders to post, then exit once all are delivered (0 = post forever)")
	f.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "give up when the hub is unreachable this long")
	f.Uint64Var(&seed, "seed", 0, "seed for the fake customers and addresses (0 = random)")
	return cmd
}
