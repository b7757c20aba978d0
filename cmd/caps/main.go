// Command caps is the CAPS hub, its clients and its tools in one binary.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "caps",
		Short:         "CAPS: real-time parcel notifications and chat over TCP, on NATS JetStream",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("log-format", "text", "log format: text or json")
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn, error")
	root.AddCommand(
		newVersionCmd(),
		newHubCmd(),
		newTokenCmd(),
		newCertCmd(),
		newBenchCmd(),
		newChatCmd(),
		newVendorCmd(),
		newDriverCmd(),
		newLoggerCmd(),
		newTrackCmd(),
		newOrderCmd(),
		newDemoCmd(),
		newMigrateCmd(),
	)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "caps:", err)
		os.Exit(1)
	}
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "caps", version)
		},
	}
}
