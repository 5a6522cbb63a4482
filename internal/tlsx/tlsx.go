// Package tlsx secures the gRPC connections between stages with mutual TLS,
// from PEM files that may be replaced while the process runs.
//
// A [Reloader] reads a certificate, its key and a CA bundle. Servers require
// a client certificate signed by the CA; clients present their certificate
// and verify the server's against the CA; both speak TLS 1.3 only. Every
// handshake asks the Reloader for the current files, and it looks at them
// again (a stat of each, read only when one changed) at most once per check
// interval, so a rotated certificate (cert-manager renewing a mounted
// Secret) is used by the next connection without a restart. Files that
// changed but cannot be used (half-written, a key that does not match) are
// logged and ignored: the last good certificate stays in use.
package tlsx

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// DefaultCheckEvery is how often, at most, the files are looked at again.
const DefaultCheckEvery = time.Second

var (
	// ErrIncomplete is the error of [Files.Check] when some of the three
	// files are named but not all.
	ErrIncomplete = errors.New("the certificate, its key and the CA bundle go together")
	// ErrKeyPair is the error when the certificate file and the key file
	// cannot be read or do not form a usable pair.
	ErrKeyPair = errors.New("unusable certificate and key")
	// ErrCA is the error when the CA bundle cannot be read or holds no
	// certificate.
	ErrCA = errors.New("unusable CA bundle")
)

// Files names the PEM files of mutual TLS. All three are set, or none (no
// TLS).
type Files struct {
	// CertFile is this process's certificate (with any intermediates),
	// presented both as a server and as a client.
	CertFile string
	// KeyFile is the certificate's private key.
	KeyFile string
	// CAFile is the bundle of CAs peers' certificates must chain to.
	CAFile string
}

// Enabled reports whether any file is named.
func (f Files) Enabled() bool { return f.CertFile != "" || f.KeyFile != "" || f.CAFile != "" }

// Check reports whether the files are all named and usable, or none is. Its
// errors wrap [ErrIncomplete], [ErrKeyPair] or [ErrCA].
func (f Files) Check() error {
	if !f.Enabled() {
		return nil
	}
	if f.CertFile == "" || f.KeyFile == "" || f.CAFile == "" {
		return ErrIncomplete
	}
	_, err := load(f)
	return err
}

// Leaf returns the certificate of CertFile: its first, the one presented.
// Its errors wrap [ErrKeyPair].
func (f Files) Leaf() (*x509.Certificate, error) {
	b, err := os.ReadFile(f.CertFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyPair, err)
	}
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("%w: %s holds no PEM certificate", ErrKeyPair, f.CertFile)
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrKeyPair, f.CertFile, err)
		}
		return c, nil
	}
}

// material is one good set of files.
type material struct {
	cert *tls.Certificate
	pool *x509.CertPool
	sum  [sha256.Size]byte
}

// Reloader holds the current certificate and CA pool and re-reads them when
// their files change.
type Reloader struct {
	files      Files
	checkEvery time.Duration
	logger     *slog.Logger

	cur atomic.Pointer[material]

	mu      sync.Mutex
	checked time.Time
	stamps  []os.FileInfo
}

// New loads the files and returns a Reloader over them. checkEvery is the
// least time between two looks at the files: zero means
// [DefaultCheckEvery], a negative value looks on every handshake.
func New(files Files, checkEvery time.Duration, logger *slog.Logger) (*Reloader, error) {
	if files.CertFile == "" || files.KeyFile == "" || files.CAFile == "" {
		return nil, ErrIncomplete
	}
	if checkEvery == 0 {
		checkEvery = DefaultCheckEvery
	}
	r := &Reloader{files: files, checkEvery: checkEvery, logger: logger}
	r.stamps = stat(files)
	m, err := load(files)
	if err != nil {
		return nil, err
	}
	r.cur.Store(m)
	r.checked = time.Now()
	leaf := m.cert.Leaf
	logger.Info("TLS certificate loaded", certAttrs(files, leaf)...)
	if time.Now().After(leaf.NotAfter) {
		logger.Warn("TLS certificate has expired; peers will refuse it", certAttrs(files, leaf)...)
	}
	return r, nil
}

// Certificate returns the certificate in use.
func (r *Reloader) Certificate() *x509.Certificate { return r.current().cert.Leaf }

// ServerConfig returns the TLS configuration of a gRPC server: TLS 1.3, the
// current certificate, and a client certificate required and verified
// against the current CA bundle. Both are taken afresh for every handshake.
func (r *Reloader) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ClientAuth: tls.RequireAndVerifyClientCert,
		NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			// One snapshot per handshake, so the certificate and the CA
			// pool always come from the same set of files.
			m := r.current()
			return &tls.Config{
				MinVersion: tls.VersionTLS13,
				ClientAuth: tls.RequireAndVerifyClientCert,
				ClientCAs:  m.pool,
				// gRPC requires HTTP/2 to be negotiated.
				NextProtos: []string{"h2"},
				GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
					return m.cert, nil
				},
			}, nil
		},
	}
}

// ClientConfig returns the TLS configuration of one new client connection:
// TLS 1.3, the server verified against the current CA bundle, and the
// current certificate presented when the server asks for one.
func (r *Reloader) ClientConfig() *tls.Config {
	m := r.current()
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    m.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return m.cert, nil
		},
	}
}

// ServerCredentials returns gRPC server credentials over [Reloader.ServerConfig].
func (r *Reloader) ServerCredentials() credentials.TransportCredentials {
	return credentials.NewTLS(r.ServerConfig())
}

// ClientCredentials returns gRPC client credentials that take a fresh
// [Reloader.ClientConfig] for every connection. The server's certificate is
// verified against serverName when it is set, else against the host of the
// address dialled.
func (r *Reloader) ClientCredentials(serverName string) credentials.TransportCredentials {
	return &clientCreds{r: r, serverName: serverName}
}

// current returns the material in use, first looking at the files again if
// the check interval has passed.
func (r *Reloader) current() *material {
	r.maybeReload()
	return r.cur.Load()
}

func (r *Reloader) maybeReload() {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if r.checkEvery > 0 && now.Sub(r.checked) < r.checkEvery {
		return
	}
	r.checked = now
	stamps := stat(r.files)
	if sameStamps(stamps, r.stamps) {
		return
	}
	// Remember what was looked at even when it cannot be used, so a bad
	// file is reported once, not on every handshake, and looked at again
	// when it changes.
	r.stamps = stamps
	m, err := load(r.files)
	if err != nil {
		r.logger.Warn("TLS files changed but cannot be used; keeping the previous certificate",
			append(certAttrs(r.files, r.cur.Load().cert.Leaf), "err", err)...)
		return
	}
	if m.sum == r.cur.Load().sum {
		return
	}
	r.cur.Store(m)
	r.logger.Info("TLS certificate reloaded", certAttrs(r.files, m.cert.Leaf)...)
	if now.After(m.cert.Leaf.NotAfter) {
		r.logger.Warn("TLS certificate has expired; peers will refuse it", certAttrs(r.files, m.cert.Leaf)...)
	}
}

// load reads and checks the three files.
func load(f Files) (*material, error) {
	certPEM, err := os.ReadFile(f.CertFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyPair, err)
	}
	keyPEM, err := os.ReadFile(f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyPair, err)
	}
	caPEM, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCA, err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s and %s: %w", ErrKeyPair, f.CertFile, f.KeyFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: %s holds no PEM certificate", ErrCA, f.CAFile)
	}
	h := sha256.New()
	for _, b := range [][]byte{certPEM, keyPEM, caPEM} {
		h.Write(b)
		h.Write([]byte{0})
	}
	m := &material{cert: &cert, pool: pool}
	h.Sum(m.sum[:0])
	return m, nil
}

// stat returns what the files look like now; a file that cannot be
// stat'ed is nil, which never equals a previous look.
func stat(f Files) []os.FileInfo {
	out := make([]os.FileInfo, 3)
	for i, p := range []string{f.CertFile, f.KeyFile, f.CAFile} {
		if fi, err := os.Stat(p); err == nil {
			out[i] = fi
		}
	}
	return out
}

// sameStamps reports whether no file was replaced, written or resized. A
// Kubernetes Secret update swaps a symlink, so the file is another inode.
func sameStamps(a, b []os.FileInfo) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] == nil || b[i] == nil || !os.SameFile(a[i], b[i]) ||
			!a[i].ModTime().Equal(b[i].ModTime()) || a[i].Size() != b[i].Size() {
			return false
		}
	}
	return true
}

func certAttrs(f Files, leaf *x509.Certificate) []any {
	return []any{
		"cert_file", f.CertFile, "subject", leaf.Subject.String(),
		"serial", fmt.Sprintf("%x", leaf.SerialNumber), "not_after", leaf.NotAfter.UTC().Format(time.RFC3339),
	}
}

// clientCreds are gRPC client credentials taking a fresh TLS configuration,
// with the current CA bundle, for every connection.
type clientCreds struct {
	r          *Reloader
	serverName string
}

func (c *clientCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if c.serverName != "" {
		authority = c.serverName
	}
	return credentials.NewTLS(c.r.ClientConfig()).ClientHandshake(ctx, authority, raw)
}

func (c *clientCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("tlsx: client credentials used by a server")
}

func (c *clientCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.3", ServerName: c.serverName}
}

func (c *clientCreds) Clone() credentials.TransportCredentials {
	cc := *c
	return &cc
}

// OverrideServerName sets the name the server's certificate is verified
// against, as [Reloader.ClientCredentials] does.
func (c *clientCreds) OverrideServerName(name string) error {
	c.serverName = name
	return nil
}
