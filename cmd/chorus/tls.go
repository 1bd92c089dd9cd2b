package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"chorus/transport"
)

const tlsAbout = `Creates the certificates for mutual TLS between the nodes (serve's --peer-tls-*)
and HTTPS for clients (--tls-cert, --tls-key), with no external tools:

  chorus tls init --dir tls --node n1=10.0.0.1,node1.example --node n2=10.0.0.2 --node n3=10.0.0.3

It writes into --dir a CA, ca.pem with its key ca-key.pem, and for each --node
NAME=HOST[,HOST...] a certificate NAME.pem and its key NAME-key.pem, ECDSA
P-256, signed by the CA, valid both as a server and a client certificate.
The HOSTs (IP addresses and DNS names) become the certificate's subject
alternative names: give every address the node is reached at, by the other
nodes (the host of its --advertise-addr or --peer-addr) and by clients
(the host browsers or the proxy use for HTTPS).

When --dir already holds a CA, the new nodes' certificates are issued with it:
that is how a node joins later (chorus tls init --dir tls --node n4=10.0.0.4).
It never overwrites a file: if a node's files exist, it stops before writing
anything. Keys are written with mode 0600. It reads no environment variables.`

// nodeNamePattern is what a node name may look like: it becomes a file name.
var nodeNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// dnsLabel is one label of a DNS name.
var dnsLabel = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// tlsNode is one --node: a name and its SANs.
type tlsNode struct {
	name string
	ips  []net.IP
	dns  []string
}

// hosts lists the node's SANs as given.
func (n tlsNode) hosts() string {
	var hs []string
	for _, ip := range n.ips {
		hs = append(hs, ip.String())
	}
	return strings.Join(append(hs, n.dns...), ", ")
}

// parseTLSNode reads NAME=HOST[,HOST...].
func parseTLSNode(s string) (tlsNode, error) {
	name, hosts, ok := strings.Cut(s, "=")
	var n tlsNode
	if !ok || strings.TrimSpace(hosts) == "" {
		return n, fmt.Errorf("%q: want NAME=HOST[,HOST...], e.g. n1=10.0.0.1,node1.example", s)
	}
	if !nodeNamePattern.MatchString(name) {
		return n, fmt.Errorf("%q: the name %q must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", s, name)
	}
	if name == "ca" {
		return n, fmt.Errorf("%q: the name ca is taken by the CA's files", s)
	}
	n.name = name
	seen := map[string]bool{}
	for _, h := range strings.Split(hosts, ",") {
		h = strings.TrimSpace(h)
		if h == "" || seen[strings.ToLower(h)] {
			continue
		}
		seen[strings.ToLower(h)] = true
		if ip := net.ParseIP(h); ip != nil {
			n.ips = append(n.ips, ip)
			continue
		}
		if _, _, err := net.SplitHostPort(h); err == nil {
			return n, fmt.Errorf("%q: %q has a port; give hosts only", s, h)
		}
		if !validDNSName(h) {
			return n, fmt.Errorf("%q: %q is neither an IP address nor a DNS name", s, h)
		}
		n.dns = append(n.dns, strings.ToLower(h))
	}
	return n, nil
}

func validDNSName(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if !dnsLabel.MatchString(l) {
			return false
		}
	}
	return true
}

// tlsCmd runs chorus tls; init is its only verb.
func tlsCmd(args []string, stdout, stderr io.Writer) error {
	const synopsis = "chorus tls init --dir DIR --node NAME=HOST[,HOST...] [--node ...] [flags]"
	if len(args) == 0 || (args[0] != "init" && !isHelp(args[0])) {
		_, _ = io.WriteString(stderr, "Usage: "+synopsis+"\n\n"+tlsAbout+"\n")
		return &exitError{code: usageExitCode, err: errors.New("tls: want init")}
	}
	if isHelp(args[0]) {
		_, err := io.WriteString(stdout, "Usage: "+synopsis+"\n\n"+tlsAbout+"\n")
		return err
	}
	fs := flag.NewFlagSet("chorus tls init", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "tls", "directory for the CA and the node certificates; created (mode 0700) if missing")
	var nodes []tlsNode
	fs.Func("node", "NAME=HOST[,HOST...]: issue a certificate for node NAME (its --id) valid for these IP addresses and DNS names; repeat for each node", func(s string) error {
		n, err := parseTLSNode(s)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		return nil
	})
	days := fs.Int("days", 825, "how many days the node certificates are valid")
	caDays := fs.Int("ca-days", 3650, "how many days a new CA is valid; node certificates cannot outlive it")
	noEnv := func(string) string { return "" }
	if help, err := parseCommand(fs, args[1:], noEnv, synopsis, tlsAbout); help || err != nil {
		return err
	}
	usage := func(err error) error { return &exitError{code: usageExitCode, err: fmt.Errorf("tls init: %w", err)} }
	switch {
	case fs.NArg() > 0:
		return usage(fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	case *days < 1:
		return usage(fmt.Errorf("--days %d: want at least 1", *days))
	case *caDays < 1:
		return usage(fmt.Errorf("--ca-days %d: want at least 1", *caDays))
	case *dir == "":
		return usage(errors.New("--dir is empty"))
	}
	seen := map[string]bool{}
	for _, n := range nodes {
		if seen[n.name] {
			return usage(fmt.Errorf("node %s given twice", n.name))
		}
		seen[n.name] = true
	}
	return tlsInit(stdout, *dir, nodes, time.Duration(*days)*24*time.Hour, time.Duration(*caDays)*24*time.Hour, time.Now())
}

// pemFile is a file tls init writes.
type pemFile struct {
	path string
	data []byte
	mode os.FileMode
}

// tlsInit creates or reuses the CA in dir and issues the nodes'
// certificates, all in memory first; then it writes every file, none of
// which may exist.
func tlsInit(stdout io.Writer, dir string, nodes []tlsNode, validity, caValidity time.Duration, now time.Time) error {
	caCertPath, caKeyPath := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	certExists, err := exists(caCertPath)
	if err != nil {
		return err
	}
	keyExists, err := exists(caKeyPath)
	if err != nil {
		return err
	}
	var (
		ca    *transport.CA
		files []pemFile
	)
	notBefore := now.Add(-time.Hour) // a little clock skew between machines
	switch {
	case certExists && keyExists:
		if len(nodes) == 0 {
			return &exitError{code: usageExitCode, err: fmt.Errorf("tls init: %s already holds a CA; give --node NAME=HOST to issue a node certificate with it", dir)}
		}
		certPEM, err := os.ReadFile(caCertPath)
		if err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
		keyPEM, err := os.ReadFile(caKeyPath)
		if err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
		if ca, err = transport.ParseCA(certPEM, keyPEM); err != nil {
			return fmt.Errorf("tls init: %s, %s: %w", caCertPath, caKeyPath, err)
		}
		if !now.Before(ca.Cert.NotAfter) {
			return fmt.Errorf("tls init: the CA in %s expired on %s; a new CA means new certificates for every node",
				caCertPath, ca.Cert.NotAfter.UTC().Format(time.DateOnly))
		}
	case certExists || keyExists:
		have, lack := caCertPath, caKeyPath
		if keyExists {
			have, lack = caKeyPath, caCertPath
		}
		return fmt.Errorf("tls init: %s exists but %s does not; restore it, or move %s away to create a new CA", have, lack, have)
	default:
		if ca, err = transport.NewCA(notBefore, now.Add(caValidity)); err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
		keyPEM, err := ca.KeyPEM()
		if err != nil {
			return fmt.Errorf("tls init: %w", err)
		}
		files = append(files, pemFile{caCertPath, ca.CertPEM(), 0o644}, pemFile{caKeyPath, keyPEM, 0o600})
	}
	for _, n := range nodes {
		certPEM, keyPEM, err := ca.Issue(n.name, n.ips, n.dns, notBefore, now.Add(validity))
		if err != nil {
			return fmt.Errorf("tls init: %w (lower --days)", err)
		}
		files = append(files, pemFile{filepath.Join(dir, n.name+".pem"), certPEM, 0o644}, pemFile{filepath.Join(dir, n.name+"-key.pem"), keyPEM, 0o600})
	}

	seen := map[string]bool{}
	for _, f := range files {
		ex, err := exists(f.path)
		if err != nil {
			return err
		}
		if ex || seen[f.path] {
			return fmt.Errorf("tls init: %s already exists; nothing was written (remove it first to replace it, or choose another name)", f.path)
		}
		seen[f.path] = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tls init: %w", err)
	}
	if err := writeAllNew(files); err != nil {
		return fmt.Errorf("tls init: %w", err)
	}

	if certExists {
		fmt.Fprintf(stdout, "used the CA in %s (%s, valid until %s)\n", caCertPath, ca.Cert.Subject.CommonName, ca.Cert.NotAfter.UTC().Format(time.DateOnly))
	} else {
		fmt.Fprintf(stdout, "wrote %s: the CA certificate; every node, and every client that checks HTTPS, trusts it\n", caCertPath)
		fmt.Fprintf(stdout, "wrote %s: the CA key; it issues the certificates of new nodes: keep it off the nodes\n", caKeyPath)
	}
	for _, n := range nodes {
		fmt.Fprintf(stdout, "wrote %s, %s: node %s, for %s, valid until %s\n", filepath.Join(dir, n.name+".pem"), filepath.Join(dir, n.name+"-key.pem"),
			n.name, n.hosts(), now.Add(validity).UTC().Format(time.DateOnly))
	}
	if len(nodes) > 0 {
		fmt.Fprintln(stdout, "\nServe flags, after copying ca.pem and its own two files to each node (keep the key 0600):")
		for _, n := range nodes {
			cert, key := filepath.Join(dir, n.name+".pem"), filepath.Join(dir, n.name+"-key.pem")
			fmt.Fprintf(stdout, "  %s: chorus serve --id %s --peer-tls-ca %s --peer-tls-cert %s --peer-tls-key %s --tls-cert %s --tls-key %s ...\n",
				n.name, n.name, caCertPath, cert, key, cert, key)
		}
		fmt.Fprintf(stdout, "Operator commands: chorus status --addr https://HOST:PORT --ca-cert %s\n", caCertPath)
	}
	return nil
}

// exists reports whether path exists; any other error than not existing is
// returned.
func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("tls init: %w", err)
}

// writeAllNew creates every file, failing if one exists (O_EXCL). If one
// cannot be written, it removes the files it created, so a failed run
// leaves nothing behind.
func writeAllNew(files []pemFile) error {
	var created []string
	for _, f := range files {
		err := writeNew(f)
		if err == nil {
			created = append(created, f.path)
			continue
		}
		for _, p := range created {
			// Best effort: the write error is the one to report.
			_ = os.Remove(p)
		}
		return err
	}
	return nil
}

func writeNew(f pemFile) error {
	fh, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, f.mode)
	if err != nil {
		return err
	}
	if _, err := fh.Write(f.data); err != nil {
		_ = fh.Close() // the write error matters
		_ = os.Remove(f.path)
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if err := fh.Sync(); err != nil {
		_ = fh.Close() // the sync error matters
		_ = os.Remove(f.path)
		return fmt.Errorf("sync %s: %w", f.path, err)
	}
	if err := fh.Close(); err != nil {
		_ = os.Remove(f.path)
		return fmt.Errorf("close %s: %w", f.path, err)
	}
	return nil
}
