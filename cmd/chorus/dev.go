package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"chorus/node"
)

// devSecret is the cluster secret of the local development cluster. The
// dev cluster listens on 127.0.0.1 only.
const devSecret = "chorus-dev-cluster-secret"

// dev runs three nodes in this process: HTTP on 127.0.0.1:8081-8083, peers
// on :9081-9083, data under ./data. Ctrl-C stops all of them.
func dev(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("chorus dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dataDir := fs.String("data-dir", "data", "directory for the three nodes' data (n1, n2, n3 under it)")
	httpPort := fs.Int("http-port", 8081, "HTTP port of n1; n2 and n3 take the next two")
	peerPort := fs.Int("peer-port", 9081, "peer port of n1; n2 and n3 take the next two")
	host := fs.String("host", "127.0.0.1", "address to listen on")
	staticDir := fs.String("static-dir", "", "serve this directory (a Keyboardia build) instead of the built-in web client")
	wsRate := fs.Int("ws-rate", 100, "messages per second per socket, bursts of twice that; 0 turns the limit off")
	logLevel := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	if help, err := parseCommand(fs, args, getenv, "chorus dev [flags]",
		"Runs a three-node cluster in this process for local development. Restarting it\nkeeps the sessions (they live under --data-dir). Every flag has a CHORUS_* twin."); help || err != nil {
		return err
	}
	root, err := newLogger(*logLevel, "text", stderr)
	if err != nil {
		return &exitError{code: usageExitCode, err: err}
	}
	var peers []node.Peer
	for i := 0; i < 3; i++ {
		peers = append(peers, node.Peer{ID: "n" + strconv.Itoa(i+1), Addr: net.JoinHostPort(*host, strconv.Itoa(*peerPort+i))})
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	nodes := make([]*running, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := peers[i].ID
			log := root.Named(id)
			nodes[i], errs[i] = startNode(log, nodeOptions{
				cfg: node.Config{
					ID: id, DataDir: filepath.Join(*dataDir, id), PeerAddr: peers[i].Addr,
					Peers: peers, ClusterSecret: []byte(devSecret), Logger: log,
				},
				httpAddr: net.JoinHostPort(*host, strconv.Itoa(*httpPort+i)),
				wsRate:   *wsRate, staticDir: *staticDir,
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		stopAll(nodes)
		return err
	}
	fmt.Fprintf(stdout, "\nchorus dev: three nodes are up (data in %s). Open any of them, in two browser windows:\n\n", *dataDir)
	for i, r := range nodes {
		fmt.Fprintf(stdout, "  n%d  http://%s/\n", i+1, r.addr)
	}
	fmt.Fprintf(stdout, "\nCluster status: http://%s/cluster/status   Ctrl-C stops all three.\n\n", nodes[0].addr)

	<-ctx.Done()
	fmt.Fprintln(stdout, "chorus dev: stopping")
	return stopAll(nodes)
}

// stopAll stops the nodes phase by phase, so that every node still has a
// quorum when it retires its players: first all sockets, then the retires,
// then the nodes one by one.
func stopAll(nodes []*running) error {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var errs []error
	each := func(phase func(r *running) error) {
		var wg sync.WaitGroup
		out := make([]error, len(nodes))
		for i, r := range nodes {
			if r == nil {
				continue
			}
			wg.Add(1)
			go func() { defer wg.Done(); out[i] = phase(r) }()
		}
		wg.Wait()
		errs = append(errs, out...)
	}
	each(func(r *running) error { return r.closeSockets(ctx) })
	each(func(r *running) error { return r.retire(ctx) })
	for _, r := range nodes {
		if r != nil {
			errs = append(errs, r.shutdown(ctx))
		}
	}
	return errors.Join(errs...)
}
