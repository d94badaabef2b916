package engine

import (
	"encoding/json"
	"fmt"
	"strings"
)

// latestTag is the tag Ollama adds to a model pulled without one.
const latestTag = ":latest"

// CanonicalModel is the name a model is announced and routed under: name
// without a trailing ":latest". Ollama lists "llama3.2:latest" for a model
// pulled as "llama3.2" and treats the two names as one, so consumers use
// either; every other name ("qwen2.5:7b", "Qwen/Qwen2.5-7B-Instruct",
// "mlx-community/Llama-3.2-3B-Instruct-4bit") is its own canonical form.
// The rule is applied to every engine's names, not only Ollama's, so a
// gateway can canonicalize a consumer's model without knowing the engine.
func CanonicalModel(name string) string {
	if c, ok := strings.CutSuffix(name, latestTag); ok && c != "" {
		return c
	}
	return name
}

// WithModel returns body with its top-level "model" replaced by model (the
// last one, should the body name it twice); the rest of the body is copied
// byte for byte, not re-encoded. A body that is
// not a JSON object, or has no "model", is an error wrapping
// [ErrInvalidBody].
func WithModel(body []byte, model string) ([]byte, error) {
	start, end, ok := topLevelValue(body, "model")
	if !ok {
		return nil, fmt.Errorf("%w: no top-level model", ErrInvalidBody)
	}
	name, err := json.Marshal(model)
	if err != nil {
		return nil, fmt.Errorf("engine: encode model: %w", err)
	}
	return splice(body, start, end, name), nil
}
