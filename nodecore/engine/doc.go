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
// MLX servers, a cloud provider, or the synthetic engine. The node passes
// the client's body through untouched except that streamed requests always
// ask for usage ([WithUsage]) and the model is named as the engine names it
// ([WithModel], [CanonicalModel]). It reads the answer with [Stream], which
// copes with each engine's wire quirks (keep-alive comments, `data:` without
// a space, \r\n, llama.cpp's usage on the last content chunk, streams that
// end without [DONE] after a finish_reason), turns an in-stream failure
// (vLLM's {"object":"error"}, a top-level "error") into an [*APIError]
// instead of a chunk, fills the "id", "object", "created" and "model" a
// chunk lacks ([Filler]) without re-encoding chunks that have them, and
// counts the output ([Tally]). When the engine reports no usage the node
// estimates it with [EstimateUsage]. Package enginetest serves test engines
// with each real engine's quirks.
//
//	up := &engine.Upstream{BaseURL: "http://127.0.0.1:11434/v1"}
//	resp, err := up.Do(ctx, "/chat/completions", body)
//	if err != nil { ... }
//	defer resp.Body.Close()
//	s := engine.NewStream(resp.Body, engine.FillerFor("/chat/completions", true, id, model, now))
//	for {
//		chunk, hasUsage, err := s.Next()
//		if err != nil { break } // io.EOF at the end, an *APIError if the engine failed
//		forward(chunk, hasUsage)
//	}
//	if !s.Complete() { ... } // broke off
package engine
