package engine

import (
	"bytes"
	"encoding/json"
)

// CharsPerToken is the divisor of the usage estimate: OpenAI's published
// rule of thumb that one token is about 4 characters of English text.
const CharsPerToken = 4

// EstimateUsage is how a node counts a call whose engine reported no usage
// (older Ollama, LM Studio, some MLX servers, engines that failed mid-stream).
// The result is marked estimated wherever it shows; docs/usage-estimation.md
// states the same rule for consumers.
//
//   - Prompt tokens = ceil(characters of the prompt text / 4), where the
//     prompt text is, for /chat/completions, every message's content (a
//     string, or the "text" of each part of an array); for /completions, the
//     prompt (a string or an array of strings); for /embeddings, the input
//     (the same). Prompts given as token ids (an array of integers, or of
//     arrays of integers) count one token per id. Roles, names, tool
//     definitions, images and template overhead are not counted, so the
//     estimate errs low.
//   - Completion tokens = max(outChunks, ceil(outChars / 4)), where outChars
//     counts the characters of the generated output the node relayed
//     (content, text, reasoning, tool-call names and arguments) and
//     outChunks the streamed chunks that carried any (0 when not streamed):
//     engines stream about one token per chunk, so the count of chunks is
//     a floor.
//
// Characters are Unicode code points. Both numbers stay under what the
// gateway lets a node bill: a token per byte of the request, and a token
// per byte (or per content chunk) delivered.
func EstimateUsage(path string, request []byte, outChars, outChunks int64) Usage {
	prompt := EstimatePrompt(path, request)
	completion := EstimateCompletion(outChars, outChunks)
	return Usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}

// EstimateCompletion is EstimateUsage's completion tokens for outChars
// characters of output in outChunks streamed chunks.
func EstimateCompletion(outChars, outChunks int64) int64 {
	return max(outChunks, ceilDiv(outChars, CharsPerToken))
}

// ceilDiv is ceil(a/b) for a >= 0, b > 0.
func ceilDiv(a, b int64) int64 {
	if a <= 0 {
		return 0
	}
	return (a + b - 1) / b
}

// EstimatePrompt returns the prompt tokens of a request body on path, by
// the rule of [EstimateUsage].
func EstimatePrompt(path string, body []byte) int64 {
	var req struct {
		Messages []struct {
			Content json.RawMessage `json:"content"`
		} `json:"messages"`
		Prompt json.RawMessage `json:"prompt"`
		Input  json.RawMessage `json:"input"`
	}
	// A field of an odd type leaves the others decoded: use what there is.
	_ = json.Unmarshal(body, &req)
	switch path {
	case "/chat/completions":
		var chars int64
		for _, m := range req.Messages {
			chars += contentChars(m.Content)
		}
		return ceilDiv(chars, CharsPerToken)
	case "/completions":
		return inputTokens(req.Prompt)
	case "/embeddings":
		return inputTokens(req.Input)
	}
	return 0
}

// inputTokens estimates a completions prompt or an embeddings input: a
// string, an array of strings, an array of token ids, or an array of arrays
// of token ids.
func inputTokens(raw json.RawMessage) int64 {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0
	}
	if raw[0] == '"' {
		return ceilDiv(stringChars(raw), CharsPerToken)
	}
	var items []json.RawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &items) != nil {
		return 0
	}
	var chars, ids int64
	for _, it := range items {
		it = bytes.TrimSpace(it)
		switch {
		case len(it) == 0:
		case it[0] == '"':
			chars += stringChars(it)
		case it[0] == '[':
			var sub []json.RawMessage
			if json.Unmarshal(it, &sub) == nil {
				ids += int64(len(sub))
			}
		default:
			ids++ // one token id
		}
	}
	return ceilDiv(chars, CharsPerToken) + ids
}
