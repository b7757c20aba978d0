package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/bench"
)

func newBenchCmd() *cobra.Command {
	var o bench.Options
	var targets []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "bench SCENARIO...",
		Short: "Load generator: measure a CAPS hub side by side with raw NATS",
		Long: `Run benchmark scenarios against a CAPS hub (an embedded one by default, or
--target caps://host:port) and, with --vs-nats or --target nats://host:port,
the same load straight against NATS (an embedded nats-server on loopback when
no URL is given), so that the CAPS/NATS ratio comes out of one run.

Scenarios: ` + strings.Join(bench.Scenarios, ", ") + `, or all.
  pubsub   one publisher → one subscriber (--size): msgs/s, MB/s
  fanout   one publisher → --subs subscribers on one topic: deliveries/s
  latency  constant --rate schedule; p50/p90/p99/p99.9/max from each
           message's intended send time (coordinated omission corrected)
  orders   parcel lifecycles/s (pickup → in-transit → delivered, stored,
           acknowledged) with --vendors and --drivers, zero delays
  conns    --conns idle authenticated connections: hub memory per connection
           and the time to connect them all`,
		Example: `  caps bench pubsub --vs-nats
  caps bench all --vs-nats --duration 5s --runs 3 --json
  caps bench latency --rate 10000 --target caps://127.0.0.1:3000 --target nats://127.0.0.1:4222
  caps bench conns --conns 10000`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f := cmd.Flag("log-level"); f != nil && !f.Changed {
				_ = f.Value.Set("warn") // the hubs' start-up chatter would bury the table
			}
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			o.Logger = log
			for _, t := range targets {
				for _, x := range strings.Split(t, ",") {
					if x = strings.TrimSpace(x); x != "" {
						o.Targets = append(o.Targets, x)
					}
				}
			}
			if exe, err := os.Executable(); err == nil {
				o.HubProcess = bench.ChildHub([]string{exe, "bench", "serve-hub", "--log-level", "warn"})
			}
			rows, err := bench.Run(cmd.Context(), o, args)
			out := cmd.OutOrStdout()
			if asJSON {
				if werr := bench.WriteJSON(out, rows); werr != nil && err == nil {
					err = werr
				}
			} else if werr := bench.WriteTable(out, rows); werr != nil && err == nil {
				err = werr
			}
			if err != nil {
				return err
			}
			for _, r := range rows {
				if r.Err != "" {
					return fmt.Errorf("%s on %s failed: %s", r.Scenario, r.Target, r.Err)
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&targets, "target", nil, "system to measure: caps (embedded hub, default), nats (embedded nats-server), caps://host:port, nats://host:port; repeat or comma-separate for several")
	f.BoolVar(&o.VsNATS, "vs-nats", false, "also run every scenario against an embedded nats-server, and print the CAPS/NATS ratio")
	f.DurationVar(&o.Duration, "duration", 5*time.Second, "length of each measured run")
	f.IntVar(&o.Runs, "runs", 1, "runs per target (interleaved); the median is reported")
	f.IntVar(&o.Size, "size", 128, "payload bytes (pubsub, fanout, latency)")
	f.IntVar(&o.Subs, "subs", 100, "subscribers (fanout)")
	f.IntVar(&o.Rate, "rate", 10000, "messages per second on the schedule (latency)")
	f.IntVar(&o.Vendors, "vendors", 4, "vendor connections (orders)")
	f.IntVar(&o.Drivers, "drivers", 8, "driver connections (orders)")
	f.IntVar(&o.Conns, "conns", 1000, "idle connections to open (conns)")
	f.IntVar(&o.Window, "window", 8192, "messages a publisher may be ahead of its slowest subscriber (pubsub, fanout)")
	f.IntVar(&o.OrdersWindow, "orders-window", 32, "orders each vendor may have in flight (orders)")
	f.BoolVar(&o.SyncAlways, "sync-always", true, "fsync every stored message, in the embedded hub and the embedded nats-server alike (the hub's default)")
	f.BoolVar(&o.Events, "events", false, "the embedded hub formats EVENT lines (to nowhere) instead of running --quiet")
	f.StringVar(&o.CPUProfile, "cpuprofile", "", "write a CPU profile of the run (embedded hub and clients) to this file")
	f.StringVar(&o.MemProfile, "memprofile", "", "write an allocation profile of the run to this file")
	f.StringVar(&o.MetricsURL, "metrics", "", "/metrics URL of an external CAPS target (conns; default http://<host>:8080/metrics)")
	f.StringVar(&o.Token, "token", os.Getenv("CAPS_TOKEN"), "token for an external CAPS target that runs with --auth (default $CAPS_TOKEN)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per scenario instead of a table")
	cmd.AddCommand(newBenchServeHubCmd())
	return cmd
}

// newBenchServeHubCmd is the child process behind `caps bench conns`: the
// hub runs apart from the clients so that its memory can be measured alone.
func newBenchServeHubCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "serve-hub",
		Short:  "Run the hub of a benchmark (internal: started by caps bench)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			return bench.ServeHubFromEnv(cmd.Context(), log)
		},
	}
}
