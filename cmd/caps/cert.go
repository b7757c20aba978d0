package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/caps-hub/caps/internal/tlsutil"
)

func newCertCmd() *cobra.Command {
	var dir, hosts string
	var opts tlsutil.DevOptions
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Generate a self-signed development CA and a hub certificate signed by it",
		Long: `Generate a development certificate authority and a server certificate it signs,
for running the hub with TLS without a public CA. Clients trust ca.pem; the hub
serves cert.pem with key.pem. For production, use certificates from your own CA.`,
		Example: `  caps cert --dir certs --hosts localhost,127.0.0.1,hub1.example
  caps hub --data data --tls-cert certs/cert.pem --tls-key certs/key.pem
  caps driver --name dana --hub localhost:3000 --tls-ca certs/ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			for _, h := range strings.Split(hosts, ",") {
				if h = strings.TrimSpace(h); h != "" {
					opts.Hosts = append(opts.Hosts, h)
				}
			}
			if len(opts.Hosts) == 0 {
				return fmt.Errorf("--hosts names no host")
			}
			files, err := tlsutil.GenerateDev(dir, opts)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "CA certificate   %s  (clients: --tls-ca %s)\n", files.CACert, files.CACert)
			fmt.Fprintf(out, "CA key           %s  (keep private; signs more certificates)\n", files.CAKey)
			fmt.Fprintf(out, "hub certificate  %s  (hub: --tls-cert %s)\n", files.Cert, files.Cert)
			fmt.Fprintf(out, "hub key          %s  (hub: --tls-key %s)\n", files.Key, files.Key)
			fmt.Fprintf(out, "valid for %s until %s\n", strings.Join(opts.Hosts, ", "),
				time.Now().Add(opts.ValidFor).UTC().Format(time.DateOnly))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "certs", "directory to write ca.pem, ca-key.pem, cert.pem and key.pem into")
	f.StringVar(&hosts, "hosts", "localhost,127.0.0.1,::1", "host names and IP addresses the hub certificate is valid for, comma-separated")
	f.DurationVar(&opts.ValidFor, "valid-for", 365*24*time.Hour, "lifetime of the certificates")
	f.BoolVar(&opts.Force, "force", false, "replace existing files")
	return cmd
}
