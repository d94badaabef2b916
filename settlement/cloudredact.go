package settlement

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tokenrouter/tokenrouter/nodecore/engine"
)

// redacted is what a secret becomes wherever it would show.
const redacted = engine.Redacted

// redact returns s with secret redacted, as a node redacts its engine's
// token (engine.RedactSecret).
func redact(s, secret string) string { return engine.RedactSecret(s, secret) }

// redactHandler is a slog.Handler that removes a secret from the message
// and every attribute before passing a record on: a hosted node's logs go
// through it, so an upstream that echoes its API token in an error cannot
// put the token in the settlement peer's logs.
type redactHandler struct {
	inner  slog.Handler
	secret string
}

func (h redactHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h redactHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, redact(r.Message, h.secret), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.attr(a))
		return true
	})
	return h.inner.Handle(ctx, out)
}

func (h redactHandler) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = h.attr(a)
	}
	return redactHandler{inner: h.inner.WithAttrs(clean), secret: h.secret}
}

func (h redactHandler) WithGroup(name string) slog.Handler {
	return redactHandler{inner: h.inner.WithGroup(name), secret: h.secret}
}

// attr returns a with the secret removed from its value, rendering values of
// any other kind (errors, structs) to text when their text holds it.
func (h redactHandler) attr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, redact(v.String(), h.secret))
	case slog.KindGroup:
		g := v.Group()
		clean := make([]any, len(g))
		for i, ga := range g {
			clean[i] = h.attr(ga)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		if s := fmt.Sprint(v.Any()); strings.Contains(s, h.secret) {
			return slog.String(a.Key, redact(s, h.secret))
		}
	}
	return slog.Attr{Key: a.Key, Value: v}
}
