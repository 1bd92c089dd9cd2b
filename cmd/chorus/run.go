package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/node"
	"chorus/transport"
)

// nodeOptions is everything a node process serves with.
type nodeOptions struct {
	cfg            node.Config
	httpAddr       string
	advertiseHTTP  string      // announced instead of the bound httpAddr when set
	httpTLS        *tls.Config // nil: plain HTTP
	adminToken     string
	wsRate         int
	createRate     int
	maxConnsPerIP  int
	allowedOrigins []string
	staticDir      string // empty: the built-in web client
}

// running is a started node with its HTTP server.
type running struct {
	log    hclog.Logger
	node   *node.Node
	api    *transport.API
	srv    *http.Server
	served chan error
	addr   string
}

// startNode starts a node and serves its HTTP API.
func startNode(log hclog.Logger, o nodeOptions) (*running, error) {
	var static fs.FS = transport.WebClient()
	if o.staticDir != "" {
		st, err := os.Stat(o.staticDir)
		if err != nil || !st.IsDir() {
			return nil, fmt.Errorf("--static-dir %s: not a directory", o.staticDir)
		}
		static = os.DirFS(o.staticDir)
	}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return nil, fmt.Errorf("listen http: %w", err)
	}
	o.cfg.HTTPAddr = ln.Addr().String()
	if o.advertiseHTTP != "" {
		o.cfg.HTTPAddr = o.advertiseHTTP
	}
	if o.httpTLS != nil {
		// http.Server runs each connection's handshake itself, bounded by
		// ReadHeaderTimeout, and answers plain HTTP with a 400.
		ln = tls.NewListener(ln, o.httpTLS)
	}
	nm, tm := node.NewMetrics(), transport.NewMetrics() // this node's own: no global registry
	o.cfg.Metrics = nm
	n, err := node.New(o.cfg)
	if err != nil {
		ln.Close()
		return nil, err
	}
	api := transport.NewAPI(transport.APIConfig{
		Backend: n.API(), Logger: log, CreateRate: o.createRate, WSRate: o.wsRate, MaxConnsPerIP: o.maxConnsPerIP,
		AllowedOrigins: o.allowedOrigins, Static: static, Metrics: tm,
	})
	mux := http.NewServeMux()
	transport.AdminHandler(mux, transport.AdminConfig{Cluster: n, AdminToken: o.adminToken, Logger: log})
	mux.Handle("GET /metrics", metricsHandler(n, api, nm, tm))
	mux.Handle("/", api)
	r := &running{
		log: log, node: n, api: api, served: make(chan error, 1), addr: ln.Addr().String(),
		srv: transport.NewServer(mux, log, transport.ServerLimits{}),
	}
	go func() { r.served <- r.srv.Serve(ln) }()
	log.Info("listening", "http_addr", r.addr, "https", o.httpTLS != nil, "peer_addr", n.PeerAddr(), "peer_tls", o.cfg.PeerTLS != nil)
	return r, nil
}

// stop closes sockets with 1012, retires this node's players, hands
// leadership over, and stops the HTTP server and the node.
func (r *running) stop(ctx context.Context) error {
	return errors.Join(r.closeSockets(ctx), r.retire(ctx), r.shutdown(ctx))
}

// closeSockets closes every socket with 1012 (service restart).
func (r *running) closeSockets(ctx context.Context) error {
	if err := r.api.Shutdown(ctx); err != nil {
		return fmt.Errorf("close sockets: %w", err)
	}
	return nil
}

// retire drops this node's players in one log entry; if that fails, the
// node's next epoch (or the leader's reaper) drops them.
func (r *running) retire(ctx context.Context) error {
	if err := r.node.Retire(ctx); err != nil {
		r.log.Warn("players not retired; the next epoch drops them", "error", err)
	}
	return nil
}

// shutdown hands leadership over and stops the node and the HTTP server.
func (r *running) shutdown(ctx context.Context) error {
	errs := []error{r.node.Shutdown(ctx)}
	if err := r.srv.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	if err := <-r.served; !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// runNode serves until ctx ends or the HTTP server fails.
func runNode(ctx context.Context, log hclog.Logger, o nodeOptions) error {
	r, err := startNode(log, o)
	if err != nil {
		return err
	}
	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-r.served:
		log.Error("http server stopped", "error", serveErr)
		r.served <- serveErr
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.stop(sctx)
}
