package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"chorus/transport"
)

// tlsInitDir runs chorus tls init in a new temp dir with the given --node
// flags and returns the dir.
func tlsInitDir(t *testing.T, nodes ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	args := []string{"tls", "init", "--dir", dir}
	for _, n := range nodes {
		args = append(args, "--node", n)
	}
	if out, code, err := runOps(t, args...); code != 0 {
		t.Fatalf("tls init: exit %d, %v\n%s", code, err, out)
	}
	return dir
}

// readCert parses the first certificate of a PEM file.
func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dirContents maps each file of dir to its bytes.
func dirContents(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

func TestTLSInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	out, code, err := runOps(t, "tls", "init", "--dir", dir, "--node", "n1=127.0.0.54,Node1.Example", "--node", "n2=127.0.0.55,::1", "--days", "30")
	if code != 0 {
		t.Fatalf("tls init: exit %d, %v\n%s", code, err, out)
	}
	for _, want := range []string{"ca.pem", "ca-key.pem", "n1.pem", "n2-key.pem", "--peer-tls-ca", "--peer-tls-cert", "--tls-key", "--ca-cert"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// Files and modes: keys 0600, certificates 0644, the dir 0700.
	wantModes := map[string]os.FileMode{"ca.pem": 0o644, "ca-key.pem": 0o600, "n1.pem": 0o644, "n1-key.pem": 0o600, "n2.pem": 0o644, "n2-key.pem": 0o600}
	files := dirContents(t, dir)
	if len(files) != len(wantModes) {
		t.Fatalf("dir holds %v, want %d files", slices.Sorted(maps.Keys(files)), len(wantModes))
	}
	for name, mode := range wantModes {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode: %v, %v", st.Mode().Perm(), err)
	}

	// The CA, and n1's certificate: its name, SANs, usages, key, validity
	// and chain, for both the IP and the DNS name.
	ca := readCert(t, filepath.Join(dir, "ca.pem"))
	if !ca.IsCA || ca.Subject.CommonName == "" {
		t.Fatalf("ca.pem: IsCA %t, name %q", ca.IsCA, ca.Subject.CommonName)
	}
	n1 := readCert(t, filepath.Join(dir, "n1.pem"))
	if n1.Subject.CommonName != "n1" || len(n1.IPAddresses) != 1 || !n1.IPAddresses[0].Equal(net.ParseIP("127.0.0.54")) ||
		!slices.Equal(n1.DNSNames, []string{"node1.example"}) {
		t.Fatalf("n1.pem: name %q, IPs %v, DNS %v", n1.Subject.CommonName, n1.IPAddresses, n1.DNSNames)
	}
	if !slices.Contains(n1.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(n1.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		t.Fatalf("n1.pem: extended key usages %v, want server and client auth", n1.ExtKeyUsage)
	}
	if k, ok := n1.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("n1.pem: key %T, want ECDSA P-256", n1.PublicKey)
	}
	if d := time.Until(n1.NotAfter); d < 29*24*time.Hour || d > 31*24*time.Hour {
		t.Fatalf("n1.pem: expires in %v, want 30 days", d)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	for _, host := range []string{"127.0.0.54", "node1.example"} {
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := n1.Verify(x509.VerifyOptions{Roots: pool, DNSName: host, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
				t.Fatalf("n1.pem for %s, usage %v: %v", host, usage, err)
			}
		}
	}
	if n2 := readCert(t, filepath.Join(dir, "n2.pem")); len(n2.IPAddresses) != 2 || !n2.IPAddresses[1].Equal(net.IPv6loopback) {
		t.Fatalf("n2.pem: IPs %v", n2.IPAddresses)
	}
	// What a node loads at startup accepts the files as they are.
	if _, err := transport.LoadPeerTLS(filepath.Join(dir, "n1.pem"), filepath.Join(dir, "n1-key.pem"), filepath.Join(dir, "ca.pem")); err != nil {
		t.Fatalf("LoadPeerTLS: %v", err)
	}

	// It never overwrites: a node whose files exist stops the whole run,
	// before n3 is written, and nothing changes.
	_, code, err = runOps(t, "tls", "init", "--dir", dir, "--node", "n3=127.0.0.56", "--node", "n1=127.0.0.54")
	if code != exitCode || err == nil || !strings.Contains(err.Error(), "n1.pem already exists") {
		t.Fatalf("tls init over n1: exit %d, %v", code, err)
	}
	if got := dirContents(t, dir); !maps.Equal(got, files) {
		t.Fatal("a refused tls init changed the dir")
	}
	// An existing CA and no node: nothing to do.
	if _, code, err := runOps(t, "tls", "init", "--dir", dir); code != usageExitCode || !strings.Contains(err.Error(), "already holds a CA") {
		t.Fatalf("tls init with a CA and no node: exit %d, %v", code, err)
	}

	// A node added later gets a certificate of the same CA, which stays as it was.
	out, code, err = runOps(t, "tls", "init", "--dir", dir, "--node", "n4=127.0.0.58")
	if code != 0 || !strings.Contains(out, "used the CA in") {
		t.Fatalf("tls init n4: exit %d, %v\n%s", code, err, out)
	}
	after := dirContents(t, dir)
	for name, b := range files {
		if after[name] != b {
			t.Fatalf("adding n4 changed %s", name)
		}
	}
	if _, err := readCert(t, filepath.Join(dir, "n4.pem")).Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.58"}); err != nil {
		t.Fatalf("n4.pem does not verify against the existing CA: %v", err)
	}

	// Half a CA is refused; so is a certificate that would outlive a new CA,
	// and then not even the CA is written.
	half := t.TempDir()
	if err := os.WriteFile(filepath.Join(half, "ca.pem"), []byte(files["ca.pem"]), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, code, err := runOps(t, "tls", "init", "--dir", half, "--node", "n1=127.0.0.54"); code != exitCode || !strings.Contains(err.Error(), "ca-key.pem does not") {
		t.Fatalf("tls init with half a CA: exit %d, %v", code, err)
	}
	short := filepath.Join(t.TempDir(), "short")
	if _, code, err := runOps(t, "tls", "init", "--dir", short, "--ca-days", "10", "--days", "20", "--node", "n1=127.0.0.54"); code != exitCode || !strings.Contains(err.Error(), "outlive the CA") {
		t.Fatalf("tls init with a node outliving the CA: exit %d, %v", code, err)
	}
	if _, err := os.Stat(short); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed tls init created %s: %v", short, err)
	}
}

// TestTLSInitCommandLines: bad command lines exit 2 with a message that
// says what is wrong, and write nothing.
func TestTLSInitCommandLines(t *testing.T) {
	tests := []struct {
		args   []string
		wantIn string
	}{
		{[]string{"tls"}, "want init"},
		{[]string{"tls", "create"}, "want init"},
		{[]string{"tls", "init", "--node", "n1"}, "want NAME=HOST"},
		{[]string{"tls", "init", "--node", "n1="}, "want NAME=HOST"},
		{[]string{"tls", "init", "--node", "=10.0.0.1"}, "must be 1 to 64"},
		{[]string{"tls", "init", "--node", "../n1=10.0.0.1"}, "must be 1 to 64"},
		{[]string{"tls", "init", "--node", "ca=10.0.0.1"}, "taken by the CA"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1:9081"}, "has a port"},
		{[]string{"tls", "init", "--node", "n1=node_1!"}, "neither an IP address nor a DNS name"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "--node", "n1=10.0.0.2"}, "n1 given twice"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "--days", "0"}, "--days 0"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "--ca-days", "-1"}, "--ca-days -1"},
		{[]string{"tls", "init", "--node", "n1=10.0.0.1", "now"}, `unexpected argument "now"`},
		{[]string{"tls", "init", "--bogus"}, "bogus"},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "tls")
		args := append(slices.Clone(tt.args), "--dir", dir)
		if len(tt.args) < 2 || tt.args[1] != "init" {
			args = tt.args
		}
		_, code, err := runOps(t, args...)
		// The message is what the user reads: its wording is under test.
		if code != usageExitCode || err == nil || !strings.Contains(err.Error(), tt.wantIn) {
			t.Errorf("%q: exit %d, %v; want %d with %q", tt.args, code, err, usageExitCode, tt.wantIn)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%q created %s", tt.args, dir)
		}
	}
	if out, code, err := runOps(t, "tls", "-h"); code != 0 || !strings.Contains(out, "chorus tls init") {
		t.Errorf("tls -h: exit %d, %v\n%s", code, err, out)
	}
}
