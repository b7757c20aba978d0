package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/internal/tlsutil"
)

// hubSecurity holds `caps hub`'s authentication and TLS flags.
type hubSecurity struct {
	authFile, tlsCert, tlsKey string
	// hub, once attached, re-checks its sessions after each reload.
	hub atomic.Pointer[hub.Hub]
}

// attach tells the SIGHUP reloader which hub's sessions to re-check.
func (s *hubSecurity) attach(h *hub.Hub) { s.hub.Store(h) }

func (s *hubSecurity) addFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&s.authFile, "auth", "", "token file (YAML) clients must authenticate against; reloaded on SIGHUP, closing sessions whose token was revoked or changed (see: caps token new)")
	f.StringVar(&s.tlsCert, "tls-cert", "", "serve TCP and HTTP over TLS with this certificate (PEM; see: caps cert)")
	f.StringVar(&s.tlsKey, "tls-key", "", "private key (PEM) of --tls-cert")
}

// apply loads the auth file and TLS certificate into cfg. With an auth file
// it also reloads it on SIGHUP until ctx ends.
func (s *hubSecurity) apply(ctx context.Context, cfg *hub.Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if s.tlsCert != "" || s.tlsKey != "" {
		if s.tlsCert == "" || s.tlsKey == "" {
			return errors.New("--tls-cert and --tls-key go together")
		}
		tc, err := tlsutil.ServerConfig(s.tlsCert, s.tlsKey)
		if err != nil {
			return err
		}
		cfg.TLS = tc
	}
	if s.authFile == "" {
		return nil
	}
	a, err := auth.Load(s.authFile)
	if err != nil {
		return err
	}
	cfg.Auth = a
	log.Info("authentication on", "file", s.authFile, "tokens", a.Tokens())
	warnLooseAuthFile(log, s.authFile, a)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := a.Reload(); err != nil {
					log.Error("auth file not reloaded; the previous tokens stay in force", "err", err)
					continue
				}
				closed := 0
				if h := s.hub.Load(); h != nil {
					closed = h.Reauthenticate()
				}
				log.Info("auth file reloaded", "file", s.authFile, "tokens", a.Tokens(), "sessions_closed", closed)
				warnLooseAuthFile(log, s.authFile, a)
			}
		}
	}()
	return nil
}

// warnLooseAuthFile says when the auth file is open to group or others.
func warnLooseAuthFile(log *slog.Logger, path string, a *auth.Authenticator) {
	if mode, loose := a.LooseMode(); loose {
		log.Warn("the auth file may be read or changed by other users: make it 0600 and owned by the hub's user (chmod 600)",
			"file", path, "mode", mode.String())
	}
}
