package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/node"
	"chorus/transport"
)

// serveFlags are the flags of chorus serve; each has a CHORUS_* environment twin.
type serveFlags struct {
	id, dataDir, httpAddr, peerAddr, advertise, peers string
	advertiseHTTP                                     string
	secret, adminToken                                string
	logLevel, logFormat                               string
	heartbeat, election, lease, commit                time.Duration
	snapshotThreshold                                 uint64
	snapshotInterval                                  time.Duration
	presenceTimeout                                   time.Duration
	wsRate, createRate, maxConnsPerIP                 int
	allowedOrigins, staticDir                         string
	peerTLSCert, peerTLSKey, peerTLSCA                string
	tlsCert, tlsKey                                   string
}

func (f *serveFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.id, "id", "", "node id, stable for the life of the node (required)")
	fs.StringVar(&f.dataDir, "data-dir", "", "directory for the raft log, snapshots and epoch (required)")
	fs.StringVar(&f.httpAddr, "http-addr", "127.0.0.1:8081", "client HTTP and WebSocket listen address")
	fs.StringVar(&f.peerAddr, "peer-addr", "127.0.0.1:9081", "peer port listen address (raft and node-to-node RPC)")
	fs.StringVar(&f.advertise, "advertise-addr", "", "peer address other nodes dial (default: the bound --peer-addr)")
	fs.StringVar(&f.advertiseHTTP, "advertise-http-addr", "", "client HTTP address announced to the cluster, which chorus status and the web client use to reach this node (default: the bound --http-addr; set it when binding 0.0.0.0)")
	fs.StringVar(&f.peers, "peers", "", "initial cluster as id=host:port,... including this node; used once, to bootstrap an empty data dir")
	fs.StringVar(&f.secret, "cluster-secret", "", "shared secret that authenticates peer connections (required; with --peer-tls-* it is checked inside the TLS session, as a second factor)")
	fs.StringVar(&f.adminToken, "admin-token", "", "bearer token for the admin routes (/cluster/members, /cluster/leadership-transfer, /cluster/state, /cluster/snapshot, /cluster/backup, /cluster/restore, /debug/pprof/); empty disables them")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: trace, debug, info, warn, error")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.DurationVar(&f.heartbeat, "heartbeat-timeout", 500*time.Millisecond, "raft heartbeat timeout")
	fs.DurationVar(&f.election, "election-timeout", 500*time.Millisecond, "raft election timeout")
	fs.DurationVar(&f.lease, "lease-timeout", 250*time.Millisecond, "raft leader lease timeout")
	fs.DurationVar(&f.commit, "commit-timeout", 5*time.Millisecond, "how long the leader waits without new entries before telling followers the commit index; lower answers writes through followers sooner and costs idle CPU")
	fs.Uint64Var(&f.snapshotThreshold, "snapshot-threshold", 8192, "log entries between snapshots")
	fs.DurationVar(&f.snapshotInterval, "snapshot-interval", 30*time.Second, "how often to check whether a snapshot is due")
	fs.IntVar(&f.wsRate, "ws-rate", 100, "WebSocket messages per second per socket, bursts of twice that; 0 turns the limit off")
	fs.IntVar(&f.createRate, "create-rate", 10, "session creates per minute per client IP; 0 turns the limit off")
	fs.IntVar(&f.maxConnsPerIP, "max-conns-per-ip", 100, "WebSockets one client IP may hold open on this node (more get 429); behind a reverse proxy all clients share its IP, so raise it or use 0 (off)")
	fs.StringVar(&f.allowedOrigins, "allowed-origins", "", "comma-separated Origins allowed to open WebSockets, or *; default: the request's own host and the cluster's members")
	fs.StringVar(&f.staticDir, "static-dir", "", "serve this directory at / (a Keyboardia build, with /s/{id} falling back to index.html) instead of the built-in web client")
	fs.DurationVar(&f.presenceTimeout, "presence-timeout", 15*time.Second, "how long a node may be unreachable before the leader drops its players (negative: never)")
	fs.StringVar(&f.peerTLSCert, "peer-tls-cert", "", "this node's certificate (PEM) for mutual TLS on the peer port, from 'chorus tls init'; with --peer-tls-key and --peer-tls-ca every peer connection, both ways, is TLS 1.3 and both ends must present a certificate of that CA. Its SANs must hold the host of --advertise-addr (or --peer-addr). --cluster-secret is still required: it is checked inside TLS, as a second factor")
	fs.StringVar(&f.peerTLSKey, "peer-tls-key", "", "the private key (PEM) of --peer-tls-cert")
	fs.StringVar(&f.peerTLSCA, "peer-tls-ca", "", "the CA certificate (PEM) that signs every member's --peer-tls-cert; a peer with a certificate of another CA, or none, is refused before any raft or RPC byte")
	fs.StringVar(&f.tlsCert, "tls-cert", "", "certificate (PEM) to serve HTTPS and WSS on --http-addr (HTTP/1.1, so that WebSocket upgrades work), with --tls-key; the node's certificate from 'chorus tls init' will do. Without it, plain HTTP")
	fs.StringVar(&f.tlsKey, "tls-key", "", "the private key (PEM) of --tls-cert")
}

// envName is the environment twin of a flag: --data-dir is CHORUS_DATA_DIR.
func envName(flagName string) string {
	return "CHORUS_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseWithEnv sets each flag from its environment twin, then parses args,
// which win over the environment.
func parseWithEnv(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", envName(f.Name), err))
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return fs.Parse(args)
}

// parseCommand installs the usage text and parses args over the environment.
// help is true when the user asked for -h (the usage is printed); a bad
// command line is a usage error.
func parseCommand(fs *flag.FlagSet, args []string, getenv func(string) string, synopsis, about string) (help bool, err error) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s\n\n%s\n\nFlags:\n", synopsis, about)
		fs.PrintDefaults()
	}
	if err := parseWithEnv(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, &exitError{code: usageExitCode, err: err}
	}
	return false, nil
}

// parsePeers reads "n1=127.0.0.1:9081,n2=127.0.0.1:9082".
func parsePeers(s string) ([]node.Peer, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var peers []node.Peer
	for _, part := range strings.Split(s, ",") {
		id, addr, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || id == "" || addr == "" {
			return nil, fmt.Errorf("--peers: %q is not id=host:port", part)
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("--peers: %s: %w", id, err)
		}
		peers = append(peers, node.Peer{ID: id, Addr: addr})
	}
	return peers, nil
}

func newLogger(level, format string, out io.Writer) (hclog.Logger, error) {
	lvl := hclog.LevelFromString(level)
	if lvl == hclog.NoLevel {
		return nil, fmt.Errorf("--log-level %q: want trace, debug, info, warn or error", level)
	}
	if format != "text" && format != "json" {
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	return hclog.New(&hclog.LoggerOptions{
		Name: "chorus", Level: lvl, Output: out, JSONFormat: format == "json",
		TimeFormat: "15:04:05.000",
	}), nil
}

func serve(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	o, log, err := serveOptions(args, stderr, getenv)
	if o == nil || err != nil {
		return err // -h, or a bad command line
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runNode(ctx, log, *o)
}

// serveOptions reads serve's command line into what the node runs with,
// loading the TLS certificates it names. The options are nil, with no
// error, when the user asked for -h.
func serveOptions(args []string, stderr io.Writer, getenv func(string) string) (*nodeOptions, hclog.Logger, error) {
	fs := flag.NewFlagSet("chorus serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var f serveFlags
	f.register(fs)
	if help, err := parseCommand(fs, args, getenv, "chorus serve --id ID --data-dir DIR --cluster-secret S [flags]",
		"Runs one cluster node. Every flag can also be set by its CHORUS_* environment twin\n(--data-dir is CHORUS_DATA_DIR); flags win over the environment."); help || err != nil {
		return nil, nil, err
	}
	if fs.NArg() > 0 {
		return nil, nil, &exitError{code: usageExitCode, err: fmt.Errorf("serve: unexpected argument %q", fs.Arg(0))}
	}
	var missing []string
	for name, v := range map[string]string{"id": f.id, "data-dir": f.dataDir, "cluster-secret": f.secret} {
		if v == "" {
			missing = append(missing, "--"+name)
		}
	}
	if len(missing) > 0 {
		return nil, nil, &exitError{code: usageExitCode, err: fmt.Errorf("serve: missing %s (or their CHORUS_* variables)", strings.Join(missing, ", "))}
	}
	peers, err := parsePeers(f.peers)
	if err != nil {
		return nil, nil, &exitError{code: usageExitCode, err: err}
	}
	if f.advertiseHTTP != "" {
		host, _, err := net.SplitHostPort(f.advertiseHTTP)
		if ip := net.ParseIP(host); err != nil || host == "" || (ip != nil && ip.IsUnspecified()) {
			return nil, nil, &exitError{code: usageExitCode, err: fmt.Errorf("serve: --advertise-http-addr %q: want host:port with a host clients can dial", f.advertiseHTTP)}
		}
	}
	log, err := newLogger(f.logLevel, f.logFormat, stderr)
	if err != nil {
		return nil, nil, &exitError{code: usageExitCode, err: err}
	}
	log = log.With("node_id", f.id)
	peerTLS, err := f.loadPeerTLS()
	if err != nil {
		return nil, nil, err
	}
	httpTLS, err := f.loadHTTPTLS()
	if err != nil {
		return nil, nil, err
	}
	return &nodeOptions{
		cfg: node.Config{
			ID: f.id, DataDir: f.dataDir, PeerAddr: f.peerAddr, AdvertiseAddr: f.advertise,
			HTTPAddr: f.httpAddr, Peers: peers, ClusterSecret: []byte(f.secret), PeerTLS: peerTLS, Logger: log,
			HeartbeatTimeout: f.heartbeat, ElectionTimeout: f.election, LeaderLeaseTimeout: f.lease, CommitTimeout: f.commit,
			SnapshotThreshold: f.snapshotThreshold, SnapshotInterval: f.snapshotInterval,
			PresenceTimeout: f.presenceTimeout,
		},
		httpAddr:       f.httpAddr,
		advertiseHTTP:  f.advertiseHTTP,
		httpTLS:        httpTLS,
		adminToken:     f.adminToken,
		wsRate:         f.wsRate,
		createRate:     f.createRate,
		maxConnsPerIP:  f.maxConnsPerIP,
		allowedOrigins: splitList(f.allowedOrigins),
		staticDir:      f.staticDir,
	}, log, nil
}

// loadPeerTLS loads the peer port's certificate, key and CA when the three
// flags are set, and checks that the certificate names the host the other
// nodes dial (they would refuse it otherwise). It returns nil without them.
func (f *serveFlags) loadPeerTLS() (*transport.PeerTLS, error) {
	set := map[string]string{"--peer-tls-cert": f.peerTLSCert, "--peer-tls-key": f.peerTLSKey, "--peer-tls-ca": f.peerTLSCA}
	var missing []string
	for _, name := range []string{"--peer-tls-cert", "--peer-tls-key", "--peer-tls-ca"} {
		if set[name] == "" {
			missing = append(missing, name)
		}
	}
	switch len(missing) {
	case 3:
		return nil, nil
	case 0:
	default:
		return nil, &exitError{code: usageExitCode, err: fmt.Errorf("serve: --peer-tls-cert, --peer-tls-key and --peer-tls-ca go together; missing %s", strings.Join(missing, ", "))}
	}
	pt, err := transport.LoadPeerTLS(f.peerTLSCert, f.peerTLSKey, f.peerTLSCA)
	if err != nil {
		return nil, fmt.Errorf("serve: peer TLS: %w", err)
	}
	addr := f.advertise
	if addr == "" {
		addr = f.peerAddr
	}
	if host, _, err := net.SplitHostPort(addr); err == nil && host != "" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsUnspecified() {
			if err := pt.Cert.Leaf.VerifyHostname(host); err != nil {
				return nil, fmt.Errorf("serve: peer TLS: %s is not valid for %s, the host other nodes dial (add it to the node's hosts in 'chorus tls init', or set --advertise-addr): %w",
					f.peerTLSCert, host, err)
			}
		}
	}
	return pt, nil
}

// loadHTTPTLS loads the HTTPS certificate when --tls-cert and --tls-key are
// set; it returns nil without them.
func (f *serveFlags) loadHTTPTLS() (*tls.Config, error) {
	switch {
	case f.tlsCert == "" && f.tlsKey == "":
		return nil, nil
	case f.tlsCert == "" || f.tlsKey == "":
		return nil, &exitError{code: usageExitCode, err: errors.New("serve: --tls-cert and --tls-key go together")}
	}
	cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("serve: --tls-cert %s, --tls-key %s: %w", f.tlsCert, f.tlsKey, err)
	}
	return httpsConfig(cert), nil
}

// httpsConfig serves cert to clients. It offers HTTP/1.1 only in ALPN: a
// WebSocket is an HTTP/1.1 upgrade, which coder/websocket does not do over
// HTTP/2, and a browser that was offered h2 would send the upgrade over it.
// TLS 1.2 stays allowed for older clients and proxies.
func httpsConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"},
	}
}

// splitList reads a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
