package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/client"
)

// logger builds the slog logger from the persistent flags (to stderr, so
// stdout carries only the lines people and scripts read).
func logger(cmd *cobra.Command) (*slog.Logger, error) {
	format, _ := cmd.Flags().GetString("log-format")
	levelName, _ := cmd.Flags().GetString("log-level")
	var level slog.Level
	if err := level.UnmarshalText([]byte(levelName)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}

// hubAddrs resolves the hub address list: --hub, else CAPS_HUB, else localhost:3000.
func hubAddrs(flag string) []string { return client.DefaultAddrs(flag) }

// addHubFlag adds the --hub flag every client command has.
func addHubFlag(cmd *cobra.Command, dst *string) {
	cmd.Flags().StringVar(dst, "hub", "", "hub address(es), comma-separated for failover (default $CAPS_HUB or localhost:3000)")
}
