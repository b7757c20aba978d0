package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/api"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/dashboard"
	"github.com/caps-hub/caps/internal/parcel"
	"github.com/caps-hub/caps/internal/webhook"
	"github.com/caps-hub/caps/web"
)

func newHubCmd() *cobra.Command {
	var cfg hub.Config
	var orders parcel.Options
	var apiCfg api.Config
	var webhookHTTP, webhookPrivate string
	var syncAlways bool
	var natsCluster, natsRoutes, natsClient, natsClusterName string
	var origins, httpHosts string
	var chatCfg chat.AppConfig
	var sec hubSecurity
	cmd := &cobra.Command{
		Use:   "hub",
		Short: "Run the hub server",
		Long: `Run the CAPS hub. By default it embeds NATS with JetStream, storing its data
under --data; with --nats it joins an external NATS cluster instead.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.SyncAlways = &syncAlways
			if cfg.NATSURLs == "" && cfg.DataDir == "" {
				return fmt.Errorf("--data DIR is required with the embedded engine (or give --nats URLS)")
			}
			// --nats-cluster makes the embedded engine a cluster member (see
			// docs/DEPLOY.md); it cannot be combined with an external one.
			switch {
			case natsCluster != "" && cfg.NATSURLs != "":
				return fmt.Errorf("--nats-cluster runs the embedded NATS as a cluster member; it cannot be combined with --nats (an external cluster)")
			case natsCluster == "" && (natsRoutes != "" || natsClient != ""):
				return fmt.Errorf("--nats-routes and --nats-client need --nats-cluster host:port")
			}
			if natsCluster != "" {
				cfg.EngineCluster = hub.EngineCluster{Name: natsClusterName, Listen: natsCluster, Client: natsClient}
				for _, r := range strings.Split(natsRoutes, ",") {
					if r = strings.TrimSpace(r); r != "" {
						cfg.EngineCluster.Routes = append(cfg.EngineCluster.Routes, r)
					}
				}
			}
			switch cfg.Classroom {
			case hub.ClassroomAuto, hub.ClassroomOn, hub.ClassroomOff:
			default:
				return fmt.Errorf("--classroom %q: want auto, on or off", cfg.Classroom)
			}
			switch cfg.Text {
			case hub.TextAuto, hub.TextOn, hub.TextOff:
			default:
				return fmt.Errorf("--text %q: want auto, on or off", cfg.Text)
			}
			if cfg.Text == hub.TextOff && cfg.TextAddr != "" {
				return fmt.Errorf("--text-addr serves the text dialect, which --text off turns off")
			}
			if origins != "" {
				cfg.AllowedOrigins = strings.Split(origins, ",")
			}
			if httpHosts != "" {
				cfg.HTTPHosts = strings.Split(httpHosts, ",")
			}
			switch cfg.MetricsAccess {
			case "auto":
				cfg.MetricsAccess = "" // the hub's default: token with --auth, else open
			case hub.MetricsOpen, hub.MetricsOff:
			case hub.MetricsToken:
				if sec.authFile == "" {
					return fmt.Errorf("--metrics token needs --auth FILE: the token must be an admin's or a logger's from it")
				}
			default:
				return fmt.Errorf("--metrics %q: want auto, open, token or off", cfg.MetricsAccess)
			}
			if err := sec.apply(cmd.Context(), &cfg); err != nil {
				return err
			}
			apiCfg.Webhooks.AllowHTTP = webhook.ParseHosts(webhookHTTP)
			if apiCfg.Webhooks.AllowPrivate, err = webhook.ParsePrefixes(webhookPrivate); err != nil {
				return fmt.Errorf("--webhook-allow-private: %w", err)
			}
			apps, err := hubApps(orders, apiCfg, chatCfg)
			if err != nil {
				return err
			}
			cfg.Apps = append(cfg.Apps, apps...)
			h := hub.New(cfg)
			sec.attach(h)
			return h.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Addr, "addr", ":3000", "TCP address for CAPS clients")
	f.StringVar(&cfg.HTTPAddr, "http", ":8080", `HTTP address for /healthz, /readyz, /metrics, /ws and the dashboard ("off" disables)`)
	f.StringVar(&cfg.DataDir, "data", "", "data directory of the embedded engine")
	f.StringVar(&cfg.NATSURLs, "nats", "", "external NATS servers, comma-separated (nats://a:4222,nats://b:4222)")
	f.IntVar(&cfg.Replicas, "replicas", 0, "stream replicas (default 3 on a cluster of 3 or more servers, else 1)")
	f.StringVar(&cfg.Name, "name", "", "hub name (default: host name)")
	f.BoolVar(&syncAlways, "sync-always", true, "fsync every stored message before acknowledging it (embedded engine)")
	f.StringVar(&natsCluster, "nats-cluster", "", "run the embedded NATS as a cluster member, routes listening on host:port")
	f.StringVar(&natsRoutes, "nats-routes", "", "other cluster members' routes, comma-separated (nats-route://b:6222,…)")
	f.StringVar(&natsClient, "nats-client", "", "host:port where the embedded NATS accepts NATS clients (cluster mode)")
	f.StringVar(&natsClusterName, "nats-cluster-name", "caps", "NATS cluster name, the same on every member (cluster mode; the member's server name is --name)")
	f.StringVar(&cfg.Classroom, "classroom", hub.ClassroomAuto, "classroom JSON dialect: auto (on unless --auth), on, off")
	f.DurationVar(&cfg.ClassroomGrace, "classroom-grace", 6*time.Second, "silence after which a classroom connection is taken for a driver")
	// The names the classroom flags had before; hidden, kept working.
	f.StringVar(&cfg.Classroom, "legacy", hub.ClassroomAuto, "")
	f.DurationVar(&cfg.ClassroomGrace, "legacy-grace", 6*time.Second, "")
	_ = f.MarkDeprecated("legacy", "use --classroom")
	_ = f.MarkDeprecated("legacy-grace", "use --classroom-grace")
	f.StringVar(&cfg.Text, "text", hub.TextAuto, "chat from nc or telnet on the client port: auto (on; with --auth, @token TOKEN first), on (with --auth, guests too), off")
	f.StringVar(&cfg.TextAddr, "text-addr", "", "also listen here for nc or telnet only, greeting each newcomer (e.g. :3001; default: none)")
	f.StringVar(&origins, "ws-origins", "", `WebSocket origin patterns allowed, comma-separated ("*" = any)`)
	f.IntVar(&cfg.MaxConns, "max-conns", 20000, "maximum concurrent connections")
	f.IntVar(&cfg.MaxConnsPerAddr, "max-conns-per-addr", 256, "maximum connections to the CAPS port from one IP address")
	f.IntVar(&cfg.ClassroomMaxSilent, "classroom-max-silent", 0, "classroom connections that have sent nothing kept at once (default: half of --max-conns, at most 1000)")
	f.DurationVar(&cfg.ClassroomSilentTimeout, "classroom-silent-timeout", time.Hour, "close a classroom connection that has sent nothing for this long")
	f.IntVar(&cfg.MaxFrame, "max-frame", 1<<20, "maximum frame size in bytes")
	f.IntVar(&cfg.MaxSubs, "max-subs", 1000, "maximum subscriptions per connection")
	f.IntVar(&cfg.MaxSubsPerIdentity, "max-subs-per-identity", 10000, "maximum subscriptions of one identity (role and name) over all its connections to this hub")
	f.IntVar(&cfg.MaxDurablesPerIdentity, "max-durables-per-identity", 32, "durables one identity may have created and the engine still keeps (cluster-wide; too_many_durables)")
	f.IntVar(&cfg.MaxDurables, "max-durables", 10000, "durables (consumers) one stream may have (too_many_durables)")
	f.DurationVar(&cfg.DurableIdle, "durable-idle", 24*time.Hour, "delete a client's own durable unused this long (shared ones, a work queue or a mailbox: 30 days)")
	f.IntVar(&cfg.MaxPending, "max-pending", 8<<20, "outbound bytes queued per connection before it is cut off as a slow consumer")
	f.IntVar(&cfg.PubRate, "pub-rate", 5000, "publishes and requests per second per connection (-1 = unlimited)")
	f.IntVar(&cfg.PubBurst, "pub-burst", 0, "publishes a connection may make at once above --pub-rate (default: one second's worth)")
	f.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", 5*time.Second, "time a new connection has to send HELLO")
	f.DurationVar(&cfg.Heartbeat, "heartbeat", 10*time.Second, "ping idle connections this often; drop them after twice this")
	f.DurationVar(&cfg.AckWait, "ack-wait", 30*time.Second, "redeliver a durable message not acknowledged within this")
	f.IntVar(&cfg.MaxInFlight, "max-inflight", 64, "unacknowledged durable deliveries per connection")
	f.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "drain deadline on SIGTERM")
	f.BoolVar(&cfg.Quiet, "quiet", false, "do not print EVENT lines")
	// The HTTP port (docs/SECURITY.md).
	f.IntVar(&cfg.HTTPMaxConns, "http-max-conns", 10000, "maximum open connections on the HTTP port, WebSocket sessions included")
	f.IntVar(&cfg.HTTPMaxConnsPerAddr, "http-max-conns-per-addr", 256, "maximum open connections on the HTTP port from one IP address")
	f.DurationVar(&cfg.HTTPIdleTimeout, "http-idle-timeout", 30*time.Second, "close keep-alive HTTP connections idle this long")
	f.StringVar(&httpHosts, "http-hosts", "", `host names browsers may reach /ws by, comma-separated, besides IP addresses, localhost, this machine's name and the TLS certificate's names ("*.example.com" patterns; "*" = any)`)
	f.StringVar(&cfg.MetricsAccess, "metrics", "auto", "who may read /metrics: open, token (Authorization: Bearer <admin or logger token>), off; auto = token with --auth, else open")
	// Disk bounds (docs/OPERATIONS.md, Limits).
	f.DurationVar(&cfg.ClientsMaxAge, "clients-max-age", 7*24*time.Hour, "keep connection events (stream CAPS_CLIENTS) this long")
	f.Int64Var(&cfg.ClientsMaxBytes, "clients-max-bytes", 64<<20, "keep at most this many bytes of connection events (the oldest go first)")
	f.Int64Var(&chatCfg.MaxBytes, "chat-max-bytes", 256<<20, "keep at most this many bytes of chat rooms' messages (the oldest go first)")
	f.DurationVar(&chatCfg.MaxAge, "chat-max-age", 30*24*time.Hour, "keep chat rooms' messages this long")
	f.IntVar(&chatCfg.MaxRooms, "chat-max-rooms", 1000, "chat rooms that may have stored messages; the first message of one more is refused (too_many_rooms)")
	f.IntVar(&chatCfg.MaxRoomsPerClient, "chat-rooms-per-client", 50, "chat rooms one chat client may be in at once (too_many_rooms)")
	f.Int64Var(&chatCfg.PresenceMaxBytes, "chat-presence-max-bytes", 64<<20, "bytes of chat names and room memberships (bucket CHAT_PRESENCE)")
	// Orders (docs/OPERATIONS.md, Limits).
	f.IntVar(&orders.MaxAttempts, "max-attempts", 3, "delivery attempts of an order: a failed attempt before the last is offered to the drivers again")
	f.Int64Var(&orders.MaxBytes, "parcel-max-bytes", parcel.DefaultMaxBytes, "bytes the order events may take on disk; new orders are refused (store_full) at 90%, so that those accepted can finish")
	f.DurationVar(&orders.Retention, "parcel-retention", 7*24*time.Hour, "how long a finished order (delivered, returned, cancelled) is kept; orders in flight are kept however old")
	f.IntVar(&orders.MaxPINTries, "max-pin-tries", 5, "wrong PINs a delivery attempt of an order that needs one may be given before it is refused (pin-locked) and must be reported failed")
	// The REST API (docs/API.md).
	f.StringVar(&apiCfg.PublicURL, "public-url", "", "the HTTP port's URL as customers reach it (https://track.example.com), for the orders' trackingURL (default: the scheme and host of each API request)")
	f.Float64Var(&apiCfg.AddrRate, "api-rate", 20, "API requests per second from one IP address (bursts of twice that)")
	f.Float64Var(&apiCfg.TokenRate, "api-token-rate", 50, "API requests per second made with one token (bursts of twice that)")
	f.Float64Var(&apiCfg.TrackRate, "track-rate", 5, "tracking page requests per second from one IP address (bursts of 20)")
	// Webhooks (docs/API.md, Webhooks).
	f.DurationVar(&apiCfg.Webhooks.RetryWindow, "webhook-retry-window", webhook.DefaultRetryWindow, "how long a webhook delivery is retried, and how long an endpoint may fail before it is disabled")
	f.DurationVar(&apiCfg.Webhooks.BackoffBase, "webhook-backoff", webhook.DefaultBackoffBase, "wait before a webhook delivery's first retry; each further one waits twice as long, up to --webhook-backoff-max (±20 % jitter)")
	f.DurationVar(&apiCfg.Webhooks.BackoffMax, "webhook-backoff-max", webhook.DefaultBackoffMax, "the longest wait between two attempts of a webhook delivery")
	f.DurationVar(&apiCfg.Webhooks.RequestTimeout, "webhook-timeout", webhook.DefaultRequestTimeout, "how long a webhook receiver has to answer one delivery")
	f.StringVar(&webhookHTTP, "webhook-allow-http", "", "hosts webhook URLs may name with plain http, comma-separated (default none: https only; a shop's URL over http could be read or changed on the way)")
	f.StringVar(&webhookPrivate, "webhook-allow-private", "", "networks (CIDR, comma-separated) webhooks may reach although internal (loopback, private, link-local: refused by default against SSRF)")
	sec.addFlags(cmd)
	return cmd
}

// hubApps builds the applications the hub serves (parcel dispatcher, chat).
func hubApps(orders parcel.Options, apiCfg api.Config, chatCfg chat.AppConfig) ([]hub.App, error) {
	if orders.MaxAttempts < 1 || orders.MaxBytes < 1<<20 || orders.Retention < time.Minute {
		return nil, fmt.Errorf("--max-attempts must be at least 1, --parcel-max-bytes at least 1 MiB and --parcel-retention at least 1m")
	}
	var apps []hub.App
	// Parcels: order state, lifecycle rules, tracking (vendors, drivers).
	disp := parcel.NewDispatcher(orders)
	apps = append(apps, disp)
	// The REST API under /api/v1 on the HTTP port (orders; docs/API.md).
	apiCfg.Orders = disp
	apps = append(apps, api.New(apiCfg))
	// Chat: rooms, presence, history and private messages (role chat).
	apps = append(apps, chat.NewApp(chatCfg))
	// The web dashboard, at / on the HTTP port.
	apps = append(apps, dashboard.New(dashboard.Options{Assets: web.Dashboard()}))
	return apps, nil
}
