// Package testcerts makes certificate authorities and certificates for
// tests of mutual TLS, in memory, so no key is ever committed.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a self-signed certificate authority.
type CA struct {
	// Cert is the CA's certificate; PEM is the same, PEM-encoded.
	Cert *x509.Certificate
	PEM  []byte
	key  *ecdsa.PrivateKey
}

// Pair is a certificate and its private key, PEM-encoded.
type Pair struct {
	CertPEM, KeyPEM []byte
	// Serial is the certificate's serial number, so a test can tell which
	// of two certificates a peer presented.
	Serial *big.Int
}

// NewCA returns a new certificate authority named name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("testcerts: create CA: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testcerts: parse CA: %v", err)
	}
	return &CA{Cert: cert, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Issue returns a certificate for name, valid for both server and client
// authentication, for the host names and IP addresses in hosts (127.0.0.1
// and localhost when none are given). name is its common name only: the
// certificate carries no telemesh identity (see [CA.Identity]).
func (ca *CA) Issue(t testing.TB, name string, hosts ...string) Pair {
	t.Helper()
	return ca.IssueSpec(t, Spec{CommonName: name, Hosts: hosts})
}

// TrustDomain is the trust domain of the identities [CA.Identity] issues,
// the one telemesh uses when none is configured.
const TrustDomain = "telemesh"

// Identity returns a certificate of the telemesh identity name (a stage,
// or operator): common name name and the URI SAN
// spiffe://telemesh/<name>, valid for server and client authentication,
// for hosts (127.0.0.1 and localhost when none are given).
func (ca *CA) Identity(t testing.TB, name string, hosts ...string) Pair {
	t.Helper()
	return ca.IssueSpec(t, Spec{CommonName: name, Hosts: hosts, URIs: []string{"spiffe://" + TrustDomain + "/" + name}})
}

// Spec describes a certificate for [CA.IssueSpec].
type Spec struct {
	// CommonName is the subject's common name.
	CommonName string
	// Hosts are the DNS names and IP addresses it is valid for (127.0.0.1
	// and localhost when empty); a DNS SAN <name>.telemesh is also an
	// identity.
	Hosts []string
	// URIs are its URI SANs, such as spiffe://telemesh/validator.
	URIs []string
}

// IssueSpec returns a certificate as spec describes it, valid for both
// server and client authentication.
func (ca *CA) IssueSpec(t testing.TB, spec Spec) Pair {
	t.Helper()
	hosts := spec.Hosts
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1", "localhost"}
	}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: spec.CommonName},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	for _, raw := range spec.URIs {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("testcerts: URI SAN %q: %v", raw, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("testcerts: issue %s: %v", spec.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testcerts: marshal key: %v", err)
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Serial:  tmpl.SerialNumber,
	}
}

// Files are the paths of a certificate, its key and the CA bundle, as the
// --tls-* flags take them.
type Files struct {
	Cert, Key, CA string
}

// Write writes the pair and the CA bundle (the concatenation of cas) into
// dir as tls.crt, tls.key and ca.crt, the names of a Kubernetes TLS Secret.
func Write(t testing.TB, dir string, p Pair, cas ...*CA) Files {
	t.Helper()
	f := Files{Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key"), CA: filepath.Join(dir, "ca.crt")}
	var bundle []byte
	for _, ca := range cas {
		bundle = append(bundle, ca.PEM...)
	}
	WriteFile(t, f.CA, bundle)
	WriteFile(t, f.Cert, p.CertPEM)
	WriteFile(t, f.Key, p.KeyPEM)
	return f
}

// WriteFile replaces path atomically (a new file renamed over the old one,
// as Kubernetes updates a mounted Secret), so a reader never sees it
// half-written.
func WriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatalf("testcerts: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatalf("testcerts: %v", err)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testcerts: generate key: %v", err)
	}
	return key
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("testcerts: serial: %v", err)
	}
	return n
}
