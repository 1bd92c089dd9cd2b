package transport

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
)

// Sentinel errors that a Cluster implementation wraps so that the HTTP layer
// can pick a status without knowing the node's types.
var (
	// ErrBadRequest: the request cannot be carried out as asked (400).
	ErrBadRequest = errors.New("bad request")
	// ErrUnavailable: try again later (503). An error that also implements
	// RetryAfterHint sets the Retry-After header.
	ErrUnavailable = errors.New("unavailable")
	// ErrConflict: the node's state rules the request out; repeating it
	// unchanged fails the same way until something else changes (409).
	ErrConflict = errors.New("conflict")
	// ErrLeaderElsewhere: only the leader serves the request, and this node
	// does not lead. An error that also implements LeaderHint with an address
	// gets 307 to the same path on the leader; otherwise 503.
	ErrLeaderElsewhere = errors.New("not the leader")
)

// LeaderHint is implemented by errors that know the leader's HTTP address
// (host:port), or "" when it is not known.
type LeaderHint interface{ LeaderHTTPAddr() string }

// Backup is a backup file ready to stream.
type Backup struct {
	Name string        // a file name to suggest to the client
	Size int64         // bytes of Body
	Body io.ReadCloser // the file; the handler closes it
}

// RetryAfterHint is implemented by errors that know when to retry.
type RetryAfterHint interface{ RetryAfterHint() time.Duration }

// Cluster is what the admin and health routes need from a node.
type Cluster interface {
	// ClusterStatus returns the JSON-encodable status of DESIGN.md §7.
	ClusterStatus() any
	// Ready reports whether the node has a leader and has caught up.
	Ready() bool
	AddMember(ctx context.Context, id, peerAddr, httpAddr string, voter bool) error
	RemoveMember(ctx context.Context, id string) error
	TransferLeadership(ctx context.Context, target string) error
	// WriteState writes the node's local FSM state in the snapshot format
	// (which carries the applied index it reflects).
	WriteState(w io.Writer) (uint64, error)
	// ClusterSnapshot takes a raft snapshot of this node (never forwarded),
	// waits for it to be persisted and returns the JSON-encodable report of
	// DESIGN.md §7. An error matching ErrConflict means the node has applied
	// nothing since its last snapshot.
	ClusterSnapshot(ctx context.Context) (any, error)
	// ClusterBackup takes a consistent backup of the cluster's state on the
	// leader (ErrLeaderElsewhere elsewhere). ctx bounds taking it, not
	// reading Body.
	ClusterBackup(ctx context.Context) (Backup, error)
	// ClusterRestore replaces the cluster's state with the backup read from
	// body and returns a JSON-encodable report; leader only. It fails with
	// ErrBadRequest for a backup it cannot use and with ErrConflict for a
	// cluster that holds sessions, unless force, having changed nothing.
	ClusterRestore(ctx context.Context, body io.Reader, force bool) (any, error)
}

// AdminConfig configures the cluster routes.
type AdminConfig struct {
	Cluster Cluster
	// AdminToken guards the membership, leadership, state, snapshot,
	// backup, restore and profile routes. Empty disables them.
	AdminToken string
	Logger     hclog.Logger
	// Timeout bounds each admin operation. Default 15s.
	Timeout time.Duration
	// TransferTimeout bounds a backup download and a restore, from the
	// request to the last byte of the answer; a restore's body must arrive
	// within it (408 otherwise). Default 10 minutes.
	TransferTimeout time.Duration
	// MaxRestoreBytes bounds a restore's body (413 beyond; the API's 64 KiB
	// limit does not apply). Default 1 GiB.
	MaxRestoreBytes int64
}

// AdminHandler serves these routes on mux (DESIGN.md §7); "token" marks the
// ones behind the admin token:
//
//	GET    /cluster/status               this node's view of the cluster
//	POST   /cluster/members              add a member (token; forwarded to the leader)
//	DELETE /cluster/members/{id}         remove a member (token; forwarded to the leader)
//	POST   /cluster/leadership-transfer  hand leadership over (token; forwarded to the leader)
//	GET    /cluster/state                this node's FSM state in the snapshot format (token)
//	POST   /cluster/snapshot             take a raft snapshot of this node, not forwarded (token):
//	                                     {index, term, pauseMs, persistMs, bytes, maxPauseMs};
//	                                     409 when nothing was applied since the last one
//	GET    /cluster/backup               a consistent backup of the cluster's state, from the leader
//	                                     (token; 307 to the leader from another node)
//	POST   /cluster/restore[?force=1]    replace the cluster's state with the backup in the body
//	                                     (token; 307 to the leader): {index, backupIndex, backupTerm,
//	                                     sessions, replaced, bytes, droppedNodes}; 400 for a backup it
//	                                     cannot use, 409 when the cluster holds sessions without force,
//	                                     413 beyond MaxRestoreBytes, 408 for a body slower than TransferTimeout
//	GET    /debug/pprof/...              Go's runtime profiles (token): profile?seconds=N, heap, goroutine, ...
//	GET    /healthz, /readyz             the process is up; the node has a leader and has caught up
//
// Another method on a known path gets 405.
func AdminHandler(mux *http.ServeMux, cfg AdminConfig) {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Second
	}
	if cfg.TransferTimeout == 0 {
		cfg.TransferTimeout = 10 * time.Minute
	}
	if cfg.MaxRestoreBytes == 0 {
		cfg.MaxRestoreBytes = 1 << 30
	}
	a := &admin{cfg: cfg, log: cfg.Logger.Named("admin")}
	mux.HandleFunc("GET /cluster/status", a.status)
	mux.HandleFunc("POST /cluster/members", a.guard(a.addMember))
	mux.HandleFunc("DELETE /cluster/members/{id}", a.guard(a.removeMember))
	mux.HandleFunc("POST /cluster/leadership-transfer", a.guard(a.transfer))
	mux.HandleFunc("GET /cluster/state", a.guard(a.state))
	mux.HandleFunc("POST /cluster/snapshot", a.guard(a.snapshot))
	mux.HandleFunc("GET /cluster/backup", a.authorized(a.backup))
	mux.HandleFunc("POST /cluster/restore", a.authorized(a.restore))
	mux.HandleFunc("GET /debug/pprof/", a.authorized(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/cmdline", a.authorized(pprof.Cmdline))
	mux.HandleFunc("GET /debug/pprof/profile", a.authorized(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/symbol", a.authorized(pprof.Symbol))
	mux.HandleFunc("GET /debug/pprof/trace", a.authorized(pprof.Trace))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !cfg.Cluster.Ready() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "error": "no leader yet, or still catching up"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"ready": true})
	})
}

type admin struct {
	cfg AdminConfig
	log hclog.Logger
}

// maxAdminBody bounds admin request bodies.
const maxAdminBody = 64 << 10

func (a *admin) status(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, a.cfg.Cluster.ClusterStatus())
}

// guard checks the bearer token in constant time (authorized: 401 without one,
// 403 for a wrong one) and bounds the operation by the admin timeout.
func (a *admin) guard(h http.HandlerFunc) http.HandlerFunc {
	return a.authorized(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), a.cfg.Timeout)
		defer cancel()
		h(w, r.WithContext(ctx))
	})
}

// authorized checks the token like guard, without guard's time limit: a
// profile runs for as many seconds as it is asked to.
func (a *admin) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.cfg.AdminToken == "" {
			writeError(w, http.StatusForbidden, "admin API disabled: the node has no admin token")
			return
		}
		auth := r.Header.Get("Authorization")
		token, ok := strings.CutPrefix(auth, "Bearer ")
		if !ok || token == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="chorus"`)
			writeError(w, http.StatusUnauthorized, "admin token required (Authorization: Bearer <token>)")
			return
		}
		if subtle.ConstantTimeCompare([]byte(token), []byte(a.cfg.AdminToken)) != 1 {
			a.log.Warn("admin request with a wrong token", "remote_addr", r.RemoteAddr, "path", r.URL.Path)
			writeError(w, http.StatusForbidden, "wrong admin token")
			return
		}
		h(w, r)
	}
}

func (a *admin) addMember(w http.ResponseWriter, r *http.Request) {
	var body struct {
		ID       string `json:"id"`
		PeerAddr string `json:"peerAddr"`
		HTTPAddr string `json:"httpAddr"`
		Voter    *bool  `json:"voter"`
	}
	if !readJSON(w, r, &body) {
		return
	}
	if body.ID == "" || body.PeerAddr == "" {
		writeError(w, http.StatusBadRequest, "id and peerAddr are required")
		return
	}
	voter := body.Voter == nil || *body.Voter
	if err := a.cfg.Cluster.AddMember(r.Context(), body.ID, body.PeerAddr, body.HTTPAddr, voter); err != nil {
		a.fail(w, "add member", err)
		return
	}
	a.log.Info("member added", "member_id", body.ID, "peer_addr", body.PeerAddr, "voter", voter)
	writeJSON(w, http.StatusOK, a.cfg.Cluster.ClusterStatus())
}

func (a *admin) removeMember(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := a.cfg.Cluster.RemoveMember(r.Context(), id); err != nil {
		a.fail(w, "remove member", err)
		return
	}
	a.log.Info("member removed", "member_id", id)
	writeJSON(w, http.StatusOK, a.cfg.Cluster.ClusterStatus())
}

func (a *admin) transfer(w http.ResponseWriter, r *http.Request) {
	var body struct {
		ID string `json:"id"`
	}
	if r.ContentLength != 0 && !readJSON(w, r, &body) {
		return
	}
	if err := a.cfg.Cluster.TransferLeadership(r.Context(), body.ID); err != nil {
		a.fail(w, "leadership transfer", err)
		return
	}
	writeJSON(w, http.StatusOK, a.cfg.Cluster.ClusterStatus())
}

// state streams this node's FSM state as it stands, without a read barrier:
// the chaos harness compares nodes byte for byte at equal indexes (I4). A
// failure mid-stream truncates the body, which the snapshot's checksum
// catches.
func (a *admin) state(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/octet-stream")
	if _, err := a.cfg.Cluster.WriteState(w); err != nil {
		a.log.Warn("write state", "error", err)
	}
}

// snapshot snapshots this node, not the leader: the point is to measure what
// a snapshot costs the node that takes it.
func (a *admin) snapshot(w http.ResponseWriter, r *http.Request) {
	rep, err := a.cfg.Cluster.ClusterSnapshot(r.Context())
	if err != nil {
		a.fail(w, "snapshot", err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// backup streams a backup file from the leader. Taking it (read barrier,
// snapshot, a copy of a state's size) and sending it are bounded together by
// TransferTimeout; a failure mid-stream cuts the body short of its
// Content-Length, which the client sees.
func (a *admin) backup(w http.ResponseWriter, r *http.Request) {
	deadline := time.Now().Add(a.cfg.TransferTimeout)
	ctx, cancel := context.WithDeadline(r.Context(), deadline)
	b, err := a.cfg.Cluster.ClusterBackup(ctx)
	cancel()
	if err != nil {
		a.failOnLeader(w, r, "backup", err)
		return
	}
	defer b.Body.Close()
	_ = http.NewResponseController(w).SetWriteDeadline(deadline) // every server this runs on supports it
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(b.Size, 10))
	w.Header().Set("Content-Disposition", `attachment; filename="`+b.Name+`"`)
	w.WriteHeader(http.StatusOK)
	if n, err := io.Copy(w, b.Body); err != nil {
		a.log.Warn("backup download cut short", "remote_addr", r.RemoteAddr, "sent", n, "size", b.Size, "error", err)
	}
}

// restore hands the request body to the cluster, at most MaxRestoreBytes of
// it and within TransferTimeout, and tells body errors (413, 408) from
// errors about the backup.
func (a *admin) restore(w http.ResponseWriter, r *http.Request) {
	var force bool
	if v := r.URL.Query().Get("force"); v != "" {
		var err error
		if force, err = strconv.ParseBool(v); err != nil {
			writeError(w, http.StatusBadRequest, "force: want true or false")
			return
		}
	}
	if r.ContentLength > a.cfg.MaxRestoreBytes {
		writeError(w, http.StatusRequestEntityTooLarge, "backup larger than this node accepts ("+strconv.FormatInt(a.cfg.MaxRestoreBytes, 10)+" bytes)")
		return
	}
	deadline := time.Now().Add(a.cfg.TransferTimeout)
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(deadline) // every server this runs on supports it
	// The answer, a 408 included, goes out after the body's deadline.
	_ = rc.SetWriteDeadline(deadline.Add(a.cfg.Timeout))
	ctx, cancel := context.WithDeadline(r.Context(), deadline)
	defer cancel()
	body := &bodyReader{r: http.MaxBytesReader(w, r.Body, a.cfg.MaxRestoreBytes)}
	rep, err := a.cfg.Cluster.ClusterRestore(ctx, body, force)
	if err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case body.err == nil:
			a.failOnLeader(w, r, "restore", err)
		case errors.As(body.err, &tooBig):
			writeError(w, http.StatusRequestEntityTooLarge, "backup larger than this node accepts ("+strconv.FormatInt(a.cfg.MaxRestoreBytes, 10)+" bytes)")
		case errors.Is(body.err, os.ErrDeadlineExceeded):
			writeError(w, http.StatusRequestTimeout, "backup not received within "+a.cfg.TransferTimeout.String())
		default:
			writeError(w, http.StatusBadRequest, "reading the backup failed")
		}
		return
	}
	a.log.Info("backup restored", "remote_addr", r.RemoteAddr, "force", force)
	writeJSON(w, http.StatusOK, rep)
}

// bodyReader remembers the first error of the request body other than EOF.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// failOnLeader is fail for the routes only the leader serves: on another
// node the request is redirected (307) to the same path on the leader, or
// refused with 503 while no leader's address is known. A 503 carries the
// error's text here: after a restore it says what state the cluster is in.
func (a *admin) failOnLeader(w http.ResponseWriter, r *http.Request, op string, err error) {
	var hint LeaderHint
	switch {
	case errors.Is(err, ErrLeaderElsewhere) && errors.As(err, &hint) && hint.LeaderHTTPAddr() != "":
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		w.Header().Set("Location", scheme+"://"+hint.LeaderHTTPAddr()+r.URL.RequestURI())
		writeError(w, http.StatusTemporaryRedirect, err.Error())
	case errors.Is(err, ErrLeaderElsewhere):
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, op+": "+err.Error())
	case errors.Is(err, ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded):
		a.log.Warn("admin operation failed", "op", op, "error", err)
		retry := time.Second
		var hint RetryAfterHint
		if errors.As(err, &hint) {
			retry = hint.RetryAfterHint()
		}
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(retry.Round(time.Second)/time.Second))))
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		a.fail(w, op, err)
	}
}

// fail maps an operation's error to a status; clients never see internals
// beyond the error's own text for bad requests and conflicts.
func (a *admin) fail(w http.ResponseWriter, op string, err error) {
	switch {
	case errors.Is(err, ErrBadRequest):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrConflict):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		var hint RetryAfterHint
		if errors.As(err, &hint) {
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(hint.RetryAfterHint().Round(time.Second)/time.Second))))
		}
		writeError(w, http.StatusServiceUnavailable, op+": cluster unavailable, try again later")
	default:
		a.log.Error("admin operation failed", "op", op, "error", err)
		writeError(w, http.StatusInternalServerError, op+" failed")
	}
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxAdminBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "invalid JSON body")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v) // the status line is out; a broken connection has no one left to tell
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
