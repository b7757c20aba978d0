package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/internal/parcel"
)

func newMigrateCmd() *cobra.Command {
	var dataDir, natsURLs string
	var maxAttempts int
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Carry orders stored by an older hub over to the current layout",
		Long: `Carry the orders an older hub stored (the KV bucket CAPS_ORDERS and events on
parcel.<event>.<store>) over to the current layout, in which an order's events
on parcel.<store>.<orderID>.<event> are its state. Orders in flight keep their
state and their driver; orders not yet handed to a driver are offered to the
drivers again; a vendor not yet told of a delivery is told, once. Stop every
hub first. A hub refuses to start on the old layout and says to run this.
Running it again finishes a migration that was cut short.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			if (dataDir == "") == (natsURLs == "") {
				return errors.New("give the hub's --data DIR (embedded engine) or --nats URLS (external engine)")
			}
			eng, err := engine.Start(cmd.Context(), engine.Config{DataDir: dataDir, URLs: natsURLs, Name: "caps-migrate", SyncAlways: true, Logger: log})
			if err != nil {
				return fmt.Errorf("start engine: %w", err)
			}
			defer eng.Close()
			rep, err := parcel.Migrate(cmd.Context(), eng, maxAttempts, log)
			if errors.Is(err, parcel.ErrNothingToMigrate) {
				fmt.Fprintln(cmd.OutOrStdout(), err)
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "migrated:", rep)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dataDir, "data", "", "data directory of the hub's embedded engine")
	f.StringVar(&natsURLs, "nats", "", "external NATS servers, comma-separated")
	f.IntVar(&maxAttempts, "max-attempts", 3, "delivery attempts the migrated orders get (as the hub's --max-attempts)")
	return cmd
}
