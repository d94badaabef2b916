package launch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/tokenrouter/tokenrouter/gateway"
	"github.com/tokenrouter/tokenrouter/nodecore/provider"
	"github.com/tokenrouter/tokenrouter/p2p"
	"github.com/tokenrouter/tokenrouter/settlement"
)

// Every long-running role answers GET /status on a unix socket in its data
// directory, <data>/status.sock (mode 0600: only its user may ask), with a
// Status in JSON: `tokenrouter status --data DIR` and the node's terminal
// view read it. The socket is removed when the role stops cleanly; one
// left behind by a process killed outright is replaced on the next start.
// A Status never holds a secret (API keys, engine tokens).

// StatusSocket is the name of the status socket in a role's data directory.
const StatusSocket = "status.sock"

// Status is what a running role says it is doing.
type Status struct {
	Role     string    `json:"role"` // node, gateway, settle or bootstrap
	PeerID   string    `json:"peer_id"`
	PID      int       `json:"pid"`
	Data     string    `json:"data"`
	State    string    `json:"state"` // starting (not serving yet), ready, stopping
	Started  time.Time `json:"started"`
	UptimeS  int64     `json:"uptime_s"`
	Addrs    []string  `json:"addrs"`               // libp2p multiaddrs with /p2p/<id>
	HTTPAddr string    `json:"http_addr,omitempty"` // gateway and settle
	Peers    PeerStats `json:"peers"`
	// The role's own facts: exactly one is set.
	Node      *provider.Stats   `json:"node,omitempty"`
	Gateway   *gateway.Stats    `json:"gateway,omitempty"`
	Settle    *settlement.Stats `json:"settle,omitempty"`
	Bootstrap *BootstrapStats   `json:"bootstrap,omitempty"`
}

// PeerStats counts the peers a role is connected to, by what they are
// when it can tell: a bootstrap peer it dials, a peer serving settlement or
// inference, a gateway that called this node in the last 10 minutes.
type PeerStats struct {
	Connected  int `json:"connected"`
	Bootstrap  int `json:"bootstrap"`
	Settlement int `json:"settlement"`
	Nodes      int `json:"nodes"`
	Gateways   int `json:"gateways"` // known to nodes only
	Other      int `json:"other"`
	// Members is the membership's count of live peers (failure detection),
	// this one included; 0 without membership.
	Members int `json:"members"`
}

// BootstrapStats are a bootstrap peer's own facts.
type BootstrapStats struct {
	KnownPeers int `json:"known_peers"` // peers in its peerstore, connected or not
}

// statusSource fills in the role's own facts of a Status.
type statusSource struct {
	role  string
	facts func(ctx context.Context, st *Status)
}

func nodeStatus(n *provider.Node) statusSource {
	return statusSource{"node", func(ctx context.Context, st *Status) {
		// Earnings come from the settlement peer, asked at most every
		// EarningsMaxAge and only while someone looks.
		ctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		n.RefreshEarnings(ctx, provider.EarningsMaxAge)
		cancel()
		s := n.Stats()
		st.Node = &s
	}}
}

func gatewayStatus(g *gateway.Gateway) statusSource {
	return statusSource{"gateway", func(_ context.Context, st *Status) {
		s := g.Stats()
		st.Gateway = &s
	}}
}

func settleStatus(s *settlement.Settlement) statusSource {
	return statusSource{"settle", func(_ context.Context, st *Status) {
		ss := s.Stats()
		st.Settle = &ss
	}}
}

func bootstrapStatus(h *p2p.Host) statusSource {
	return statusSource{"bootstrap", func(_ context.Context, st *Status) {
		st.Bootstrap = &BootstrapStats{KnownPeers: len(h.Peerstore().Peers())}
	}}
}

// serveStatus answers GET /status on <data>/status.sock until the
// returned func is called, which stops it and removes the socket. A role
// that cannot serve its status logs why and runs without it.
func serveStatus(ctx context.Context, c Common, h *p2p.Host, src statusSource) (stop func()) {
	log := c.logger()
	path := filepath.Join(c.Data, StatusSocket)
	ln, err := listenStatus(path)
	if err != nil {
		log.Warn("no status socket: `tokenrouter status` cannot ask this "+src.role, "socket", path, "err", err)
		return func() {}
	}
	mine, _ := os.Lstat(path)
	started := time.Now()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		st := status(r.Context(), ctx, c.Data, h, src, started)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(st)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
		<-done
		// Only our own socket: a role started since on this directory
		// (after a kill) keeps its.
		if now, err := os.Lstat(path); err == nil && mine != nil && os.SameFile(now, mine) {
			os.Remove(path)
		}
	}
}

// listenStatus listens on path, 0600 from its first moment: it binds a
// temporary name, tightens it, and renames it into place. A socket at path
// that nobody answers on (its process was killed) is replaced; one that a
// live process answers on is an error.
func listenStatus(path string) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if conn, err := net.DialTimeout("unix", path, time.Second); err == nil {
			conn.Close()
			return nil, errors.New("another process answers on it: is this data directory in use twice?")
		}
		os.Remove(path)
	}
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".status.%d.sock", os.Getpid()))
	os.Remove(tmp)
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	ul := ln.(*net.UnixListener)
	ul.SetUnlinkOnClose(false) // the socket's name changes below; stop removes it
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	return ln, nil
}

// status builds a role's Status; ctx is the request's, roleCtx the role's.
func status(ctx, roleCtx context.Context, dir string, h *p2p.Host, src statusSource, started time.Time) Status {
	st := Status{
		Role:    src.role,
		PeerID:  h.IDString(),
		PID:     os.Getpid(),
		Data:    dir,
		State:   "starting",
		Started: started.UTC().Truncate(time.Second),
		UptimeS: int64(time.Since(started).Seconds()),
		Addrs:   h.FullAddrs(),
	}
	if abs, err := filepath.Abs(dir); err == nil {
		st.Data = abs
	}
	if _, err := os.Stat(filepath.Join(dir, p2p.ReadyFile)); err == nil {
		st.State = "ready"
	}
	if roleCtx.Err() != nil {
		st.State = "stopping"
	}
	st.HTTPAddr, _ = ReadFirstLine(filepath.Join(dir, p2p.HTTPAddrFile))
	src.facts(ctx, &st)
	var gateways []string
	if st.Node != nil {
		gateways = st.Node.Gateways
	}
	st.Peers = peerStats(h, gateways)
	return st
}

// peerStats counts h's connected peers by what they are.
func peerStats(h *p2p.Host, gateways []string) PeerStats {
	var ps PeerStats
	boot := map[peer.ID]bool{}
	for _, b := range h.Bootstrap() {
		boot[b.ID] = true
	}
	for _, p := range h.Network().Peers() {
		if h.Network().Connectedness(p) != network.Connected {
			continue
		}
		ps.Connected++
		switch {
		case boot[p]:
			ps.Bootstrap++
		case supports(h, p, p2p.ProtoSettle):
			ps.Settlement++
		case supports(h, p, p2p.ProtoInfer):
			ps.Nodes++
		case slices.Contains(gateways, p.String()):
			ps.Gateways++
		default:
			ps.Other++
		}
	}
	if h.Members != nil {
		ps.Members = h.Members.NumMembers()
	}
	return ps
}

func supports(h *p2p.Host, p peer.ID, proto protocol.ID) bool {
	ok, err := h.Peerstore().SupportsProtocols(p, proto)
	return err == nil && len(ok) > 0
}

// ErrNotRunning is what QueryStatus's error matches (errors.Is) when no
// role runs with the data directory asked about.
var ErrNotRunning = errors.New("not running")

// NotRunningError says that no role runs with data directory Dir, and how
// that is known.
type NotRunningError struct {
	Dir string
	Why string
}

func (e *NotRunningError) Error() string {
	return "no tokenrouter role is running with data directory " + e.Dir + " (" + e.Why + ")"
}

// Is makes a NotRunningError match ErrNotRunning.
func (e *NotRunningError) Is(target error) bool { return target == ErrNotRunning }

// QueryStatus asks the role running with data directory dir what it is
// doing, on its status socket.
func QueryStatus(ctx context.Context, dir string) (*Status, error) {
	path := filepath.Join(dir, StatusSocket)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, &NotRunningError{dir, "the directory does not exist"}
	}
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, &NotRunningError{dir, "it has no " + StatusSocket}
	}
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tokenrouter/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, &NotRunningError{dir, "its " + StatusSocket + " was left by a process that did not stop cleanly"}
	case err != nil:
		return nil, fmt.Errorf("ask %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("ask %s: %s", path, resp.Status)
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("ask %s: %w", path, err)
	}
	return &st, nil
}
