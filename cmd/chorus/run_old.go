//go:build !wip

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"

	"chorus/node"
	"chorus/transport"
)

type nodeOptions struct {
	cfg        node.Config
	httpAddr   string
	adminToken string
}

// runNode starts a node and its HTTP server and runs them until ctx ends;
// then it hands leadership over, closes the HTTP server and stops the node.
func runNode(ctx context.Context, log hclog.Logger, o nodeOptions) error {
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("listen http: %w", err)
	}
	o.cfg.HTTPAddr = ln.Addr().String()
	n, err := node.New(o.cfg)
	if err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	transport.AdminHandler(mux, transport.AdminConfig{Cluster: n, AdminToken: o.adminToken, Logger: log})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true})}
	log.Info("listening", "http_addr", ln.Addr().String(), "peer_addr", n.PeerAddr())

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case serveErr = <-served:
		log.Error("http server stopped", "error", serveErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	shutdownErr := n.Shutdown(sctx)
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("http shutdown", "error", err)
	}
	if serveErr == nil {
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
		}
	}
	return errors.Join(serveErr, shutdownErr)
}
