package transport

import (
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
)

// ServerLimits bound what one client connection may cost a node's HTTP
// server before a handler runs. Zero values take the defaults beside each
// field. Request bodies are bounded by APIConfig.BodyTimeout and MaxBody,
// and an upgraded WebSocket by APIConfig.PingInterval, not here.
type ServerLimits struct {
	// HeaderTimeout is how long a client has to send a request's line and
	// headers, a WebSocket upgrade's included; a slow loris is cut off then.
	// Default 10s.
	HeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no new request.
	// Default 2m.
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's line and headers; more gets 431.
	// Default 64 KiB.
	MaxHeaderBytes int
}

const (
	defaultHeaderTimeout  = 10 * time.Second
	defaultIdleTimeout    = 2 * time.Minute
	defaultMaxHeaderBytes = 64 << 10
)

func (l ServerLimits) withDefaults() ServerLimits {
	if l.HeaderTimeout == 0 {
		l.HeaderTimeout = defaultHeaderTimeout
	}
	if l.IdleTimeout == 0 {
		l.IdleTimeout = defaultIdleTimeout
	}
	if l.MaxHeaderBytes == 0 {
		l.MaxHeaderBytes = defaultMaxHeaderBytes
	}
	return l
}

// NewServer returns the HTTP server a node serves its client API, admin
// routes and metrics with: h behind the limits of l, with net/http's own
// errors (a bad TLS handshake, say) logged through log.
func NewServer(h http.Handler, log hclog.Logger, l ServerLimits) *http.Server {
	l = l.withDefaults()
	if log == nil {
		log = hclog.NewNullLogger()
	}
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: l.HeaderTimeout,
		IdleTimeout:       l.IdleTimeout,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
}
