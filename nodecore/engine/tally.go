package engine

// maxTrackedChoices bounds the choice indexes a [Tally] follows (OpenAI
// allows n up to 128).
const maxTrackedChoices = 128

// Tally accumulates, chunk by chunk, what a node needs to know of an
// engine's stream: the output it relayed, the usage the engine reported,
// and whether every choice finished.
type Tally struct {
	Chunks int64  // chunks that carried generated output
	Chars  int64  // characters of generated output (see [Chunk])
	Usage  *Usage // the last usage the engine reported; nil when none

	seen, finished [maxTrackedChoices]bool
	any            bool // some choice was seen
}

// Add counts one relayed chunk.
func (t *Tally) Add(c *Chunk) {
	if c.Usage != nil {
		t.Usage = c.Usage
	}
	if c.Content {
		t.Chunks++
		t.Chars += c.Chars
	}
	for _, ch := range c.Choices {
		if ch.Index < 0 || ch.Index >= maxTrackedChoices {
			continue
		}
		t.seen[ch.Index] = true
		t.any = true
		if ch.Finished {
			t.finished[ch.Index] = true
		}
	}
}

// Finished reports whether every choice the stream carried has ended with
// a finish_reason. A stream that ends without [DONE] after that (some MLX
// servers close the connection instead) is complete: nothing of the answer
// is missing but the terminator.
func (t *Tally) Finished() bool {
	if !t.any {
		return false
	}
	for i := range maxTrackedChoices {
		if t.seen[i] && !t.finished[i] {
			return false
		}
	}
	return true
}
