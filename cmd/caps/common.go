package main

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/tlsutil"
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

// addHubFlag adds the --hub flag every client command has, and with it the
// connection security flags --token and --tls-ca (read by applyClientFlags).
func addHubFlag(cmd *cobra.Command, dst *string) {
	cmd.Flags().StringVar(dst, "hub", "", "hub address(es), comma-separated for failover (default $CAPS_HUB or localhost:3000)")
	cmd.Flags().String("token", "", "token for a hub that runs with --auth (default $"+envToken+")")
	cmd.Flags().String("tls-ca", "", "connect with TLS, trusting the CA certificate in this PEM file (default $"+envTLSCA+")")
}

// Environment variables that stand in for --token and --tls-ca.
const (
	envToken = "CAPS_TOKEN"
	envTLSCA = "CAPS_TLS_CA"
)

// applyClientFlags fills in the credentials and TLS settings of a client
// command's connection from --token / CAPS_TOKEN and --tls-ca / CAPS_TLS_CA.
// Every command that dials the hub calls it on its client.Options.
func applyClientFlags(cmd *cobra.Command, o *client.Options) error {
	token, _ := cmd.Flags().GetString("token")
	if token == "" {
		token = os.Getenv(envToken)
	}
	o.Token = token
	ca, _ := cmd.Flags().GetString("tls-ca")
	if ca == "" {
		ca = os.Getenv(envTLSCA)
	}
	if ca != "" {
		cfg, err := tlsutil.ClientConfig(ca)
		if err != nil {
			return fmt.Errorf("--tls-ca: %w", err)
		}
		o.TLS = cfg
	}
	return nil
}
