package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// DevFiles are the files GenerateDev writes, by full path.
type DevFiles struct {
	CACert, CAKey, Cert, Key string
}

// File names GenerateDev uses inside its directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
	CertFile   = "cert.pem"
	KeyFile    = "key.pem"
)

// DevOptions configure GenerateDev.
type DevOptions struct {
	// Hosts are the DNS names and IP addresses the server certificate is valid
	// for (default localhost, 127.0.0.1, ::1).
	Hosts []string
	// ValidFor is the lifetime of both certificates (default one year).
	ValidFor time.Duration
	// Force overwrites existing files instead of refusing to.
	Force bool
}

// GenerateDev writes a self-signed development CA and a server certificate
// signed by it into dir: clients trust ca.pem (--tls-ca), the hub serves
// cert.pem and key.pem (--tls-cert, --tls-key). Private keys are written
// readable by their owner only. It refuses to overwrite existing files
// unless opts.Force is set, so a CA that clients already trust is not
// replaced by accident.
func GenerateDev(dir string, opts DevOptions) (DevFiles, error) {
	files := DevFiles{
		CACert: filepath.Join(dir, CACertFile), CAKey: filepath.Join(dir, CAKeyFile),
		Cert: filepath.Join(dir, CertFile), Key: filepath.Join(dir, KeyFile),
	}
	if len(opts.Hosts) == 0 {
		opts.Hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	if opts.ValidFor <= 0 {
		opts.ValidFor = 365 * 24 * time.Hour
	}
	var ips []net.IP
	var names []string
	for _, h := range opts.Hosts {
		h = strings.TrimSpace(h)
		switch {
		case h == "":
		case net.ParseIP(h) != nil:
			ips = append(ips, net.ParseIP(h))
		default:
			names = append(names, h)
		}
	}
	if len(ips)+len(names) == 0 {
		return files, errors.New("no host names or addresses for the certificate")
	}
	if !opts.Force {
		for _, p := range []string{files.CACert, files.CAKey, files.Cert, files.Key} {
			if _, err := os.Stat(p); err == nil {
				return files, fmt.Errorf("%s already exists (use --force to replace it)", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return files, err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return files, fmt.Errorf("create %s: %w", dir, err)
	}

	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return files, fmt.Errorf("generate CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{Organization: []string{"CAPS development"}, CommonName: "CAPS development CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(opts.ValidFor),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return files, fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return files, err
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return files, fmt.Errorf("generate server key: %w", err)
	}
	cn := "localhost"
	if len(names) > 0 {
		cn = names[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{Organization: []string{"CAPS development"}, CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(opts.ValidFor),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     names,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return files, fmt.Errorf("create server certificate: %w", err)
	}

	caKeyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	if err != nil {
		return files, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return files, err
	}
	writes := []struct {
		path, typ string
		der       []byte
		mode      os.FileMode
	}{
		{files.CAKey, "PRIVATE KEY", caKeyDER, 0o600},
		{files.Key, "PRIVATE KEY", keyDER, 0o600},
		{files.CACert, "CERTIFICATE", caDER, 0o644},
		{files.Cert, "CERTIFICATE", der, 0o644},
	}
	for _, w := range writes {
		if err := writePEM(w.path, w.typ, w.der, w.mode); err != nil {
			return files, err
		}
	}
	return files, nil
}

// writePEM writes one PEM block through a temporary file, so a crash never
// leaves half a key behind.
func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := pem.Encode(tmp, &pem.Block{Type: typ, Bytes: der}); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func serial() *big.Int {
	// crypto/rand.Reader never fails (since Go 1.24 it aborts the process instead).
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}
