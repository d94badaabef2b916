package engine

import (
	"hash/fnv"
	"math"
	"math/rand/v2"
	"strings"
	"unicode"
)

// Token counting in the synthetic engine is deliberately simple and
// documented, so callers and tests can predict it exactly:
//
//   - A prompt token is a whitespace-separated word (strings.Fields).
//   - Chat prompt tokens = the words across every message's content (a string,
//     or the "text" of each {type:"text"} part of an array) plus 1 per message.
//   - Completion prompt tokens = the words across the prompt (a string or an
//     array of strings), or the number of token ids when the prompt is given as
//     token ids.
//   - Embedding prompt tokens = the words across all inputs.
//   - Every prompt counts at least 1 token.
//   - Completion tokens = the number of generated words; each generated token
//     is one word followed by a space.

// words is the fixed vocabulary the synthetic engine draws from.
var words = strings.Fields(`lorem ipsum dolor sit amet consectetur adipiscing
elit sed do eiusmod tempor incididunt ut labore et dolore magna aliqua enim ad
minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea
commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum
fugiat nulla pariatur excepteur sint occaecat cupidatat non proident sunt culpa
qui officia deserunt mollit anim id est laborum`)

// tokens holds each word with its trailing space, so generation allocates
// nothing per token.
var tokens = func() []string {
	t := make([]string, len(words))
	for i, w := range words {
		t[i] = w + " "
	}
	return t
}()

// countWords returns the number of whitespace-separated words in s.
func countWords(s string) int64 {
	var n int64
	in := false
	for _, r := range s {
		if unicode.IsSpace(r) {
			in = false
			continue
		}
		if !in {
			n++
			in = true
		}
	}
	return n
}

// atLeastOne returns n, or 1 when n is smaller.
func atLeastOne(n int64) int64 {
	return max(n, 1)
}

// textSeed hashes the model and the prompt text with FNV-64a; it seeds the
// generator so that the same request always yields the same text.
func textSeed(model, prompt string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(model))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(prompt))
	return h.Sum64()
}

// textGen yields deterministic tokens for one request.
type textGen struct {
	rng *rand.Rand
}

// newTextGen returns a generator seeded from model and prompt.
func newTextGen(model, prompt string) *textGen {
	seed := textSeed(model, prompt)
	return &textGen{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// next returns the next token: a word followed by a space.
func (g *textGen) next() string {
	return tokens[g.rng.IntN(len(tokens))]
}

// text returns the next n tokens concatenated.
func (g *textGen) text(n int) string {
	var b strings.Builder
	b.Grow(n * 8)
	for range n {
		b.WriteString(g.next())
	}
	return b.String()
}

// embed returns a deterministic unit vector of dims float32s for text.
func embed(model, text string, dims int) []float32 {
	seed := textSeed(model, text)
	rng := rand.New(rand.NewPCG(seed, ^seed))
	v := make([]float32, dims)
	var norm float64
	for i := range v {
		x := rng.Float64()*2 - 1
		v[i] = float32(x)
		norm += x * x
	}
	norm = math.Sqrt(norm)
	if norm == 0 {
		return v
	}
	for i := range v {
		v[i] = float32(float64(v[i]) / norm)
	}
	return v
}
