// Package engine is how a Token-Router node reaches an inference engine, and
// the synthetic engine used for demos, tests, benchmarks and simulations.
//
// It has two halves.
//
// The synthetic engine ([Synthetic]) is a real OpenAI-compatible HTTP server
// (chat completions, completions, embeddings and models, streamed or not,
// with usage) that generates deterministic filler text at a configurable
// rate. It is labelled synthetic wherever it shows: models are owned by
// "synthetic", every response carries "system_fingerprint":"synthetic", and
// every response has the header X-Tokenrouter-Engine: synthetic. FailRate and
// TTFT make it misbehave on purpose.
//
//	s, err := engine.NewSynthetic(engine.DefaultSyntheticConfig())
//	if err != nil { ... }
//	http.ListenAndServe("127.0.0.1:9000", s.Handler())
//
// The upstream adapter ([Upstream]) is how a node talks to any
// OpenAI-compatible engine: Ollama, llama.cpp llama-server, vLLM, LM Studio,
// a cloud provider, or the synthetic engine. The node passes the client's
// body through untouched except that streamed requests always ask for usage
// ([WithUsage]), reads the stream with [SSEReader], and pulls the usage and
// the first generated text out of each chunk with [ChunkUsage] and
// [ChunkHasContent].
//
//	up := &engine.Upstream{BaseURL: "http://127.0.0.1:11434/v1"}
//	resp, err := up.Do(ctx, "/chat/completions", body)
//	if err != nil { ... }
//	defer resp.Body.Close()
//	r := engine.NewSSEReader(resp.Body)
//	for {
//		data, err := r.Next()
//		if err != nil { break } // io.EOF at the end
//		if string(data) == "[DONE]" { break }
//		if u := engine.ChunkUsage(data); u != nil { ... }
//		forward(data)
//	}
package engine
