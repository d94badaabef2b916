package mesh

import (
	"context"
	"log/slog"
	"strings"
	"sync"

	"github.com/libp2p/go-libp2p/gologshim"
)

var libp2pLogOnce sync.Once

// routeLibp2pLogs sends go-libp2p's own warnings and errors to log, once per process
// (go-libp2p reads its handler once, before its first line). A killed
// host's "listener unintentionally closed" is what killing it means, not
// news, and is dropped.
func routeLibp2pLogs(log *slog.Logger) {
	libp2pLogOnce.Do(func() {
		gologshim.SetDefaultHandler(killFilter{log.Handler()})
	})
}

type killFilter struct{ slog.Handler }

// Enabled passes warnings and errors: go-libp2p's informational lines
// (identify failing on a closed connection, and the like) are routine.
func (f killFilter) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && f.Handler.Enabled(ctx, l)
}

func (f killFilter) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "listener unintentionally closed") {
		return nil
	}
	return f.Handler.Handle(ctx, r)
}

func (f killFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return killFilter{f.Handler.WithAttrs(as)}
}
func (f killFilter) WithGroup(g string) slog.Handler { return killFilter{f.Handler.WithGroup(g)} }
