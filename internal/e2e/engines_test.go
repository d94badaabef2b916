package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
	"github.com/tokenrouter/tokenrouter/nodecore/engine/enginetest"
)

// Operators bring Ollama, llama.cpp, vLLM, LM Studio, MLX and cloud APIs;
// consumers bring the official SDK. Each test engine answers the way that
// engine does on the wire (quirks included); through a real node and
// gateway the official client gets answers that conform to OpenAI's
// schemas (the validating middleware checks every one), with usage and
// cost on each.
func TestEveryEngineFlavorThroughTheGateway(t *testing.T) {
	m := startMesh(t, 1)
	ctx := context.Background()
	c := client(t, m, m.DemoKey)
	instances := 1
	flavors := []enginetest.Flavor{enginetest.Ollama, enginetest.NoUsage, enginetest.LlamaCpp,
		enginetest.VLLM, enginetest.Cloud, enginetest.MLX, enginetest.Bare}
	for _, f := range flavors {
		models := enginetest.DefaultModels(f)
		if f == enginetest.NoUsage {
			models = []string{"lmstudio-community/Meta-Llama-3.1-8B-Instruct-GGUF"} // its own, so calls reach it and not the Ollama node
		}
		e := enginetest.Start(enginetest.Config{Flavor: f, Models: models})
		t.Cleanup(e.Close)
		instances += len(models)
		addNode(t, m, e.URL, instances)
		model := models[0]
		estimated := f == enginetest.NoUsage || f == enginetest.MLX
		t.Run(string(f), func(t *testing.T) {
			names := []string{model}
			if canon := engine.CanonicalModel(model); canon != model {
				names = append(names, canon) // Ollama's "x:latest" is also "x"
			}
			for _, name := range names {
				resp, err := c.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
					Model: name, MaxTokens: openai.Int(16),
					Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say hello")},
				})
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if resp.Choices[0].Message.Content != strings.Join(enginetest.DefaultReply, "") {
					t.Fatalf("%s: content %q", name, resp.Choices[0].Message.Content)
				}
				checkUsage(t, resp.Usage.RawJSON(), estimated)
			}

			s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
				Model: model, MaxTokens: openai.Int(16),
				Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say hello")},
				StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
			})
			var text strings.Builder
			var usage string
			for s.Next() {
				ch := s.Current()
				for _, c := range ch.Choices {
					text.WriteString(c.Delta.Content)
				}
				if ch.Usage.TotalTokens > 0 {
					usage = ch.Usage.RawJSON()
				}
			}
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			if text.String() != strings.Join(enginetest.DefaultReply, "") || usage == "" {
				t.Fatalf("streamed: text %q usage %s", text.String(), usage)
			}
			checkUsage(t, usage, estimated)
		})
	}

	// Engines that fail mid-stream, each in its own way: the client gets
	// what was generated, then one error.
	// Their nodes live as long as the whole test: a node stopped at the end
	// of its subtest leaves membership at once, and the instance count
	// below would shrink.
	for _, f := range []enginetest.Flavor{enginetest.VLLM, enginetest.Cloud, enginetest.LlamaCpp} {
		model := "broken-" + strings.ReplaceAll(string(f), ".", "")
		e := enginetest.Start(enginetest.Config{Flavor: f, Models: []string{model}, FailAfter: 2})
		t.Cleanup(e.Close)
		instances++
		addNode(t, m, e.URL, instances)
		t.Run(string(f)+" failing mid-stream", func(t *testing.T) {
			s := c.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
				Model: model, MaxTokens: openai.Int(16),
				Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say hello")},
			})
			var text strings.Builder
			for s.Next() {
				for _, c := range s.Current().Choices {
					text.WriteString(c.Delta.Content)
				}
			}
			var apiErr *openai.Error
			if err := s.Err(); err == nil || errors.As(err, &apiErr) && apiErr.StatusCode != 0 {
				t.Fatalf("a stream broken mid-way ended with %v", err)
			}
			if want := strings.Join(enginetest.DefaultReply[:2], ""); text.String() != want {
				t.Fatalf("delivered %q before the failure, want %q", text.String(), want)
			}
		})
	}
}

// checkUsage checks a usage object carries tokens and cost, and says
// estimated exactly when the engine reported none.
func checkUsage(t *testing.T, raw string, estimated bool) {
	t.Helper()
	var u struct {
		Prompt     int64 `json:"prompt_tokens"`
		Completion int64 `json:"completion_tokens"`
		Estimated  bool  `json:"estimated"`
	}
	if err := json.Unmarshal([]byte(raw), &u); err != nil {
		t.Fatal(err)
	}
	if u.Prompt <= 0 || u.Completion <= 0 || u.Estimated != estimated {
		t.Fatalf("usage %s (want estimated=%v)", raw, estimated)
	}
	costOf(t, raw)
}
