package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// schemas compiles OpenAI's own response schemas (a copy of
// shared/conformance/openai-schemas.json, from openai/openai-openapi).
func schemas(t *testing.T) func(name string) *jsonschema.Schema {
	t.Helper()
	raw, err := os.ReadFile("testdata/openai-schemas.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Schemas map[string]any `json:"schemas"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	// The schemas refer to each other as #/components/schemas/<name>.
	// They are OpenAPI 3.0: "nullable" becomes JSON Schema's null type.
	for k, v := range file.Schemas {
		file.Schemas[k] = nullable(v)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(mustJSON(t, map[string]any{"components": map[string]any{"schemas": file.Schemas}})))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("openai.json", doc); err != nil {
		t.Fatal(err)
	}
	return func(name string) *jsonschema.Schema {
		t.Helper()
		s, err := c.Compile("openai.json#/components/schemas/" + name)
		if err != nil {
			t.Fatalf("compile %s: %v", name, err)
		}
		return s
	}
}

// nullable rewrites OpenAPI's `nullable: true` as JSON Schema: the null
// type (and value) is allowed beside whatever the schema allows.
func nullable(v any) any {
	switch x := v.(type) {
	case []any:
		for i := range x {
			x[i] = nullable(x[i])
		}
		return x
	case map[string]any:
		for k, c := range x {
			x[k] = nullable(c)
		}
		if n, _ := x["nullable"].(bool); !n {
			return x
		}
		delete(x, "nullable")
		if enum, ok := x["enum"].([]any); ok {
			x["enum"] = append(enum, nil)
		}
		if typ, ok := x["type"].(string); ok {
			x["type"] = []any{typ, "null"}
			return x
		}
		return map[string]any{"anyOf": []any{x, map[string]any{"type": "null"}}}
	}
	return v
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// conform validates one JSON document against a schema.
func conform(t *testing.T, s *jsonschema.Schema, what string, body []byte) {
	t.Helper()
	if err := validate(s, body); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// Every kind of answer the gateway gives validates against OpenAI's schemas.
func TestResponsesConformToOpenAISchemas(t *testing.T) {
	schema := schemas(t)
	m := startMesh(t, 1)
	do := func(method, path, body string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(method, m.GatewayURL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+m.DemoKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	_, b := do("POST", "/v1/chat/completions", `{"model":"synthetic-1","messages":[{"role":"user","content":"hi there"}],"max_tokens":6}`)
	conform(t, schema("CreateChatCompletionResponse"), "chat completion", b)

	_, b = do("POST", "/v1/completions", `{"model":"synthetic-1","prompt":"once upon","max_tokens":6}`)
	conform(t, schema("CreateCompletionResponse"), "completion", b)

	_, b = do("POST", "/v1/embeddings", `{"model":"synthetic-1","input":["a b c","d e"]}`)
	conform(t, schema("CreateEmbeddingResponse"), "embeddings", b)

	_, b = do("GET", "/v1/models", "")
	conform(t, schema("ListModelsResponse"), "models", b)

	for _, bad := range []string{`{"model":`, `{"model":"no-such-model","messages":[{"role":"user","content":"x"}]}`} {
		_, b = do("POST", "/v1/chat/completions", bad)
		conform(t, schema("ErrorResponse"), "error", b)
	}

	// Every streamed chunk, with and without usage asked for.
	for _, body := range []string{
		`{"model":"synthetic-1","messages":[{"role":"user","content":"stream"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"synthetic-1","messages":[{"role":"user","content":"stream"}],"max_tokens":5,"stream":true}`,
	} {
		_, b = do("POST", "/v1/chat/completions", body)
		chunks := 0
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok || data == "[DONE]" {
				continue
			}
			conform(t, schema("CreateChatCompletionStreamResponse"), "stream chunk", []byte(data))
			chunks++
		}
		if chunks < 5 {
			t.Fatalf("only %d chunks in %s", chunks, b)
		}
	}
}

// validate checks one JSON document against a schema.
func validate(s *jsonschema.Schema, body []byte) error {
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("not JSON: %v\n%s", err, body)
	}
	if err := s.Validate(v); err != nil {
		return fmt.Errorf("does not conform to OpenAI's schema: %v\n%s", err, body)
	}
	return nil
}
