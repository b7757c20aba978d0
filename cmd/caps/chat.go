package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"os"
	"os/user"
	"regexp"

	"github.com/charmbracelet/x/term"
	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/protocol"
)

func newChatCmd() *cobra.Command {
	var hubFlag, name, room string
	var history int
	var plain bool
	cmd := &cobra.Command{
		Use:   "chat",
		Short: "Chat in rooms with everyone on the hub",
		Long: `Chat with everyone connected to the hub (or to any hub of the same cluster).

On a terminal it runs full-screen: messages above, a status line, and an
input line with history (up/down, pgup/pgdown to scroll back). When stdin is
not a terminal (or with --plain) it runs in line mode for scripts: each input
line is sent, and each message is printed as "[room] name: text".

Commands:
` + chat.Help(),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logger(cmd)
			if err != nil {
				return err
			}
			var o client.Options
			if err := applyClientFlags(cmd, &o); err != nil {
				return err
			}
			if name == "" {
				name = defaultChatName()
			}
			cfg := chat.ClientConfig{
				Hubs: hubAddrs(hubFlag), Name: name, Room: room, History: history,
				Token: o.Token, TLS: o.TLS,
			}
			ctx := cmd.Context()
			if !plain && term.IsTerminal(os.Stdin.Fd()) && term.IsTerminal(os.Stdout.Fd()) {
				// Log lines on stderr would scribble over the screen; the
				// status line shows the connection state instead.
				return chat.RunTUI(ctx, cfg, os.Stdin, os.Stdout)
			}
			// The chat prints its own connection lines; the library's info
			// logs would only repeat them, unless asked for.
			if !cmd.Flags().Changed("log-level") {
				log = slog.New(minLevel{log.Handler(), slog.LevelWarn})
			}
			cfg.Logger = log
			return chat.RunLines(ctx, cfg, cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	addHubFlag(cmd, &hubFlag)
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "your name: 1-32 of A-Z a-z 0-9 _ . - (default: your login name)")
	f.StringVar(&room, "room", "lobby", "room to join at start")
	f.IntVar(&history, "history", 50, "messages of a room's history to show on joining it")
	f.BoolVar(&plain, "plain", false, "line mode even on a terminal")
	return cmd
}

var notNameChar = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// defaultChatName is the login name made valid, or guest-XXXX.
func defaultChatName() string {
	if u, err := user.Current(); err == nil {
		n := notNameChar.ReplaceAllString(u.Username, "")
		if len(n) > 32 {
			n = n[:32]
		}
		if protocol.ValidName(n) {
			return n
		}
	}
	var b [2]byte
	_, _ = rand.Read(b[:])
	return "guest-" + hex.EncodeToString(b[:])
}

// minLevel drops records below a level.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (m minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= m.min && m.Handler.Enabled(ctx, l)
}

func (m minLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevel{m.Handler.WithAttrs(as), m.min}
}

func (m minLevel) WithGroup(g string) slog.Handler { return minLevel{m.Handler.WithGroup(g), m.min} }
