package engine

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"
)

// MaxCompletionTokens is the synthetic engine's natural length cap: a request
// asking for more tokens than this is rejected with 400.
const MaxCompletionTokens = 4096

// maxRequestBody bounds the size of a request body the synthetic engine reads.
const maxRequestBody = 32 << 20

// ErrInvalidConfig is returned (wrapped) by [SyntheticConfig.Validate] and
// [NewSynthetic] when a configuration value is out of range.
var ErrInvalidConfig = errors.New("engine: invalid synthetic config")

// SyntheticConfig configures a [Synthetic] engine. Zero values of Models and
// DefaultMaxTokens mean their defaults; a zero Logger discards logs.
type SyntheticConfig struct {
	// Models are the model ids served; empty means []string{"synthetic-1"}.
	Models []string
	// Rate is the speed in tokens per second per stream; 0 means as fast as
	// it can (no sleeping).
	Rate float64
	// FailRate is the probability in [0,1] that a generation or embedding
	// request answers 500 (OpenAI error shape, type "server_error").
	FailRate float64
	// TTFT is the delay before the first token (and before an embeddings
	// response).
	TTFT time.Duration
	// DefaultMaxTokens is the completion length when the request gives no
	// max_tokens/max_completion_tokens; 0 means 32.
	DefaultMaxTokens int
	// MaxTokens is the largest max_tokens a request may ask for; 0 means
	// MaxCompletionTokens. Tests of long streams raise it.
	MaxTokens int
	// Seed seeds the failure draws; the generated text does not depend on it.
	Seed int64
	// Logger receives debug logs of each request; nil discards them.
	Logger *slog.Logger
}

// DefaultSyntheticConfig returns the configuration `tokenrouter engine` and
// `tokenrouter dev` start from.
func DefaultSyntheticConfig() SyntheticConfig {
	return SyntheticConfig{
		Models:           []string{"synthetic-1"}, // one model is enough for a demo and names itself synthetic
		Rate:             40,                      // near a local 7B model on a laptop, so streams are visible by eye
		FailRate:         0,                       // misbehaviour is opt-in (--fail-rate)
		TTFT:             0,                       // latency is opt-in (--ttft)
		DefaultMaxTokens: 32,                      // short answers keep demos and tests quick
		Seed:             1,                       // fixed so failure patterns reproduce run to run
		Logger:           nil,                     // silent unless the caller injects a logger
	}
}

// withDefaults returns c with zero Models and DefaultMaxTokens filled in.
func (c SyntheticConfig) withDefaults() SyntheticConfig {
	d := DefaultSyntheticConfig()
	if len(c.Models) == 0 {
		c.Models = d.Models
	}
	if c.MaxTokens <= 0 {
		c.MaxTokens = MaxCompletionTokens
	}
	if c.DefaultMaxTokens == 0 {
		c.DefaultMaxTokens = d.DefaultMaxTokens
	}
	return c
}

// Validate reports whether every value of c is in range. Zero Models and
// DefaultMaxTokens are valid (they mean the defaults).
func (c SyntheticConfig) Validate() error {
	seen := make(map[string]bool, len(c.Models))
	for _, m := range c.Models {
		if m == "" {
			return fmt.Errorf("%w: empty model id", ErrInvalidConfig)
		}
		if seen[m] {
			return fmt.Errorf("%w: duplicate model id %q", ErrInvalidConfig, m)
		}
		seen[m] = true
	}
	if c.Rate < 0 || math.IsNaN(c.Rate) || math.IsInf(c.Rate, 0) {
		return fmt.Errorf("%w: rate %v must be a finite number >= 0", ErrInvalidConfig, c.Rate)
	}
	if !(c.FailRate >= 0 && c.FailRate <= 1) {
		return fmt.Errorf("%w: fail rate %v must be in [0,1]", ErrInvalidConfig, c.FailRate)
	}
	if c.TTFT < 0 {
		return fmt.Errorf("%w: ttft %v must be >= 0", ErrInvalidConfig, c.TTFT)
	}
	if c.DefaultMaxTokens < 0 || c.DefaultMaxTokens > MaxCompletionTokens {
		return fmt.Errorf("%w: default max tokens %d must be in [0,%d] (0 = default)", ErrInvalidConfig, c.DefaultMaxTokens, MaxCompletionTokens)
	}
	return nil
}

// Synthetic is an OpenAI-compatible inference engine that generates
// deterministic text. It is safe for concurrent use.
type Synthetic struct {
	cfg      SyntheticConfig
	log      *slog.Logger
	created  int64         // unix time reported for every model
	interval time.Duration // time between tokens; 0 = no pacing

	mu  sync.Mutex
	rng *mrand.Rand // failure draws; guarded by mu
}

// NewSynthetic validates cfg and returns a synthetic engine.
func NewSynthetic(cfg SyntheticConfig) (*Synthetic, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	cfg.Models = slices.Clone(cfg.Models)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Synthetic{
		cfg:     cfg,
		log:     log,
		created: time.Now().Unix(),
		rng:     mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x5eed5eed5eed5eed)),
	}
	if cfg.Rate > 0 {
		s.interval = time.Duration(float64(time.Second) / cfg.Rate)
	}
	return s, nil
}

// Handler returns the engine's HTTP handler. It serves GET /v1/models and
// POST /v1/chat/completions, /v1/completions and /v1/embeddings; any
// Authorization header is accepted and ignored.
func (s *Synthetic) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

// serveHTTP routes a request by path, then checks its method.
func (s *Synthetic) serveHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Tokenrouter-Engine", "synthetic")
	var h http.HandlerFunc
	method := http.MethodPost
	switch r.URL.Path {
	case "/v1/models":
		h, method = s.serveModels, http.MethodGet
	case "/v1/chat/completions":
		h = s.serveChat
	case "/v1/completions":
		h = s.serveCompletions
	case "/v1/embeddings":
		h = s.serveEmbeddings
	default:
		writeError(w, http.StatusNotFound, errTypeInvalidRequest,
			fmt.Sprintf("unknown path %s", r.URL.Path), "", "unknown_url")
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeError(w, http.StatusMethodNotAllowed, errTypeInvalidRequest,
			fmt.Sprintf("method %s not allowed on %s; use %s", r.Method, r.URL.Path, method), "", "method_not_allowed")
		return
	}
	if method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	}
	h(w, r)
}

// serveModels answers GET /v1/models.
func (s *Synthetic) serveModels(w http.ResponseWriter, _ *http.Request) {
	list := modelList{Object: "list", Data: make([]modelInfo, len(s.cfg.Models))}
	for i, m := range s.cfg.Models {
		list.Data[i] = modelInfo{ID: m, Object: "model", Created: s.created, OwnedBy: "synthetic"}
	}
	writeJSON(w, http.StatusOK, list)
}

// checkModel writes a 400 or 404 and returns false when model is missing or
// not served.
func (s *Synthetic) checkModel(w http.ResponseWriter, model string) bool {
	if model == "" {
		badRequest(w, "you must provide a model parameter", "model")
		return false
	}
	if !slices.Contains(s.cfg.Models, model) {
		writeError(w, http.StatusNotFound, errTypeInvalidRequest,
			fmt.Sprintf("the model %q does not exist on this synthetic engine", model), "model", errCodeModelNotFound)
		return false
	}
	return true
}

// fail draws whether this request fails on purpose and, if so, writes the
// 500 and returns true. With FailRate 0 it draws nothing.
func (s *Synthetic) fail(w http.ResponseWriter, path string) bool {
	if s.cfg.FailRate <= 0 {
		return false
	}
	s.mu.Lock()
	x := s.rng.Float64()
	s.mu.Unlock()
	if x >= s.cfg.FailRate {
		return false
	}
	s.log.Debug("synthetic engine: injected failure", "path", path)
	writeError(w, http.StatusInternalServerError, errTypeServer,
		"synthetic engine failure (--fail-rate)", "", errCodeSynthetic)
	return true
}

// newID returns a response id such as "chatcmpl-XXXX".
func newID(prefix string) string {
	return prefix + rand.Text()
}

// sleep waits d, or until ctx is done, reusing *t across calls.
func sleep(ctx context.Context, t **time.Timer, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	if *t == nil {
		*t = time.NewTimer(d)
	} else {
		(*t).Reset(d)
	}
	select {
	case <-ctx.Done():
		(*t).Stop()
		return ctx.Err()
	case <-(*t).C:
		return nil
	}
}

// pacer spaces the tokens of one stream: TTFT before the first, then one
// interval between each, on an absolute schedule so write time does not
// slow the rate.
type pacer struct {
	ctx      context.Context
	ttft     time.Duration
	interval time.Duration
	next     time.Time
	started  bool
	timer    *time.Timer
}

// wait blocks until the next token is due; it returns the context's error
// as soon as the request is cancelled.
func (p *pacer) wait() error {
	if !p.started {
		p.started = true
		err := sleep(p.ctx, &p.timer, p.ttft)
		p.next = time.Now()
		return err
	}
	if p.interval <= 0 {
		return p.ctx.Err()
	}
	p.next = p.next.Add(p.interval)
	return sleep(p.ctx, &p.timer, time.Until(p.next))
}

// stop releases the pacer's timer.
func (p *pacer) stop() {
	if p.timer != nil {
		p.timer.Stop()
	}
}
