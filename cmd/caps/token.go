package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/auth"
	"github.com/caps-hub/caps/protocol"
)

func newTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage client tokens for a hub running with --auth",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newTokenNewCmd(), newTokenHashCmd())
	return cmd
}

func newTokenNewCmd() *cobra.Command {
	var e auth.Entry
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "new",
		Short: "Make a new token and print the entry to add to the auth file",
		Long: `Make a new random token. The token goes to the client (--token or CAPS_TOKEN);
the entry printed below it goes under "tokens:" in the hub's auth file, which
keeps only the token's SHA-256. Send SIGHUP to the hub to load the new entry.`,
		Example: `  caps token new --role vendor --store 1-206-flowers
  caps token new --role driver --name dana
  caps token new --role admin --name ops --ttl 720h`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !protocol.ValidRole(e.Role) {
				return fmt.Errorf("--role must be one of vendor, driver, chat, logger, admin, client (not %q)", e.Role)
			}
			if e.Role == protocol.RoleVendor {
				if e.Store == "" {
					return fmt.Errorf("a vendor token needs --store")
				}
				if e.Name == "" {
					e.Name = e.Store
				}
			} else if e.Store != "" {
				return fmt.Errorf("--store is only for --role vendor")
			}
			if e.Name == "" {
				return fmt.Errorf("--name is required for role %s", e.Role)
			}
			if !protocol.ValidName(e.Name) {
				return fmt.Errorf("name %q: 1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit", e.Name)
			}
			if e.Store != "" && !protocol.ValidName(e.Store) {
				return fmt.Errorf("--store %q: 1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit", e.Store)
			}
			if ttl < 0 {
				return fmt.Errorf("--ttl must be positive")
			}
			if ttl > 0 {
				exp := time.Now().Add(ttl).UTC().Truncate(time.Second)
				e.Expires = &exp
			}
			var token string
			token, e.SHA256 = auth.NewToken()
			// Check the entry the way the hub will, so a bad name fails here.
			if _, err := auth.Parse([]byte("tokens:\n" + auth.EntryYAML(e))); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintln(out, token)
			fmt.Fprintln(out)
			fmt.Fprintln(out, "# add under \"tokens:\" in the hub's auth file (the token itself is not stored there):")
			fmt.Fprint(out, auth.EntryYAML(e))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&e.Role, "role", "", "vendor, driver, chat, logger, admin or client")
	f.StringVar(&e.Store, "store", "", "the store a vendor token is bound to")
	f.StringVar(&e.Name, "name", "", "the name the token proves (default: the store, for vendors)")
	f.DurationVar(&ttl, "ttl", 0, "expire the token after this long (default: never)")
	_ = cmd.MarkFlagRequired("role")
	return cmd
}

func newTokenHashCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "hash TOKEN",
		Short: "Print a token's SHA-256, the value of the auth file's sha256 field",
		Args:  cobra.ExactArgs(1),
		Run: func(cmd *cobra.Command, args []string) {
			fmt.Fprintln(cmd.OutOrStdout(), auth.Hash(args[0]))
		},
	}
}
