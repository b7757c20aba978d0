package main

import (
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/parcel"
)

func newLoggerCmd() *cobra.Command {
	var cfg parcel.LoggerConfig
	var hubFlag, out string
	cmd := &cobra.Command{
		Use:   "logger",
		Short: "Record every event the hub lets a logger see, as JSON lines",
		Long: `Record every event the hub lets a logger see — parcel events, chat, and the
hub's client.connected / client.disconnected — as JSON lines
{"time","event","topic","payload","hub"} on --out (appended) or standard output.
It reconnects by itself when the hub restarts, noting the gap with
"logger.disconnected" and "logger.connected" lines.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			if err := applyClientFlags(cmd, &cfg.Options); err != nil {
				return err
			}
			cfg.Out = cmd.OutOrStdout()
			if out != "" && out != "-" {
				f, err := os.OpenFile(out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
				if err != nil {
					return fmt.Errorf("--out: %w", err)
				}
				defer f.Close()
				cfg.Out = f
			}
			cfg.Hub = hubAddrs(hubFlag)
			cfg.Log = log
			return parcel.RunLogger(cmd.Context(), cfg)
		},
	}
	addHubFlag(cmd, &hubFlag)
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "file to append the JSON lines to (default standard output)")
	f.StringVar(&cfg.Name, "name", "logger", "the logger's name")
	f.StringVar(&cfg.Pattern, "topics", ">", "topic pattern to record")
	f.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "give up when the hub is unreachable this long")
	return cmd
}
