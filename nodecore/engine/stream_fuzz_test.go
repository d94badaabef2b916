package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"testing"
)

// FuzzStream feeds arbitrary event streams through the reader the node
// relays engines' streams with. Nothing panics, the stream always ends,
// and every chunk it hands on is a JSON object carrying id, object,
// created and model (the filler's promise), so the gateway and the
// consumer's SDK can always parse what they get.
func FuzzStream(f *testing.F) {
	for _, s := range []string{
		"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: [DONE]\n\n",
		"data:{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\r\n\r\n",
		": keep-alive\n\ndata: {\"object\":\"error\",\"message\":\"boom\",\"code\":500}\n\n",
		"data: {\"error\":{\"message\":\"x\"},\"choices\":[{\"finish_reason\":\"error\"}]}\n\n",
		"event: error\ndata: {\"message\":\"down\"}\n\n",
		"error: {\"code\":500,\"message\":\"llama\"}\n\n",
		"data: [1,2]\n\ndata: \"s\"\n\ndata: {\"choices\":[{\"index\":7,\"text\":\"t\",\"finish_reason\":\"stop\"}]}\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		s := NewStream(bytes.NewReader(in), FillerFor("/chat/completions", true, "req_fuzz", "m", 1))
		for range len(in) + 2 {
			chunk, _, err := s.Next()
			if err != nil {
				var apiErr *APIError
				if !errors.Is(err, io.EOF) && !errors.As(err, &apiErr) && !errors.Is(err, ErrSSELineTooLong) {
					t.Fatalf("unexpected error %T %v", err, err)
				}
				return
			}
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(chunk, &obj); err != nil || obj == nil {
				t.Fatalf("relayed a chunk that is not a JSON object: %q (%v)", chunk, err)
			}
			for _, k := range []string{"id", "object", "created", "model"} {
				if len(obj[k]) == 0 {
					t.Fatalf("relayed a chunk without %q: %s", k, chunk)
				}
			}
		}
		t.Fatal("the stream did not end")
	})
}
