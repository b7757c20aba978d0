package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/protocol"
)

func newTrackCmd() *cobra.Command {
	var cfg parcel.TrackConfig
	var hubFlag string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "track ORDER_ID",
		Short: "Show an order's timeline",
		Long: `Show an order's store, customer, status and driver, and the time of each step
(pickup, assigned to a driver, in-transit, delivered). Exits non-zero with
"no such order" when the hub does not know it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			// A one-shot command: connection chatter only when asked for.
			if !cmd.Flags().Changed("log-level") {
				log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			}
			if err := applyClientFlags(cmd, &cfg.Options); err != nil {
				return err
			}
			cfg.Hub = hubAddrs(hubFlag)
			cfg.Log = log
			o, err := parcel.Track(cmd.Context(), cfg, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(o)
			}
			return parcel.WriteTimeline(cmd.OutOrStdout(), o)
		},
	}
	addHubFlag(cmd, &hubFlag)
	f := cmd.Flags()
	f.BoolVar(&asJSON, "json", false, "print the order as JSON")
	f.StringVar(&cfg.Role, "role", protocol.RoleLogger, "role to ask as (vendors see only their store's orders)")
	f.StringVar(&cfg.Name, "name", "track", "name to ask as (a vendor's store)")
	f.DurationVar(&cfg.Timeout, "timeout", 10*time.Second, "give up when the hub does not answer within this")
	return cmd
}
