package engine

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"time"
)

// EmbeddingDims is the default length of a synthetic embedding vector.
const EmbeddingDims = 16

// maxEmbeddingDims bounds the "dimensions" a request may ask for.
const maxEmbeddingDims = 4096

type embeddingRequest struct {
	Model          string          `json:"model"`
	Input          json.RawMessage `json:"input"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     *int            `json:"dimensions"`
}

// parseInput returns the texts of an embeddings input and their token
// count: a string, an array of strings, an array of token ids, or an array
// of arrays of token ids (each token-id input is seeded by its JSON text).
func parseInput(raw json.RawMessage) ([]string, int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, 0, errors.New("you must provide an input")
	}
	errEmpty := errors.New("input must not be empty")
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if s == "" {
			return nil, 0, errEmpty
		}
		return []string{s}, countWords(s), nil
	}
	var ss []string
	if json.Unmarshal(raw, &ss) == nil {
		if len(ss) == 0 {
			return nil, 0, errEmpty
		}
		var n int64
		for i, t := range ss {
			if t == "" {
				return nil, 0, fmt.Errorf("input[%d] must not be empty", i)
			}
			n += countWords(t)
		}
		return ss, n, nil
	}
	var ids []int64
	if json.Unmarshal(raw, &ids) == nil {
		if len(ids) == 0 {
			return nil, 0, errEmpty
		}
		return []string{string(raw)}, int64(len(ids)), nil
	}
	var idss []json.RawMessage
	if json.Unmarshal(raw, &idss) == nil && len(idss) > 0 {
		texts := make([]string, len(idss))
		var n int64
		for i, one := range idss {
			if json.Unmarshal(one, &ids) != nil || len(ids) == 0 {
				return nil, 0, fmt.Errorf("input[%d] must be a non-empty array of token ids", i)
			}
			texts[i] = string(bytes.TrimSpace(one))
			n += int64(len(ids))
		}
		return texts, n, nil
	}
	return nil, 0, errors.New("input must be a string, an array of strings, or an array of token ids")
}

// serveEmbeddings answers POST /v1/embeddings with one deterministic unit
// vector per input, after TTFT.
func (s *Synthetic) serveEmbeddings(w http.ResponseWriter, r *http.Request) {
	var req embeddingRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Model == "" {
		badRequest(w, "you must provide a model parameter", "model")
		return
	}
	texts, promptTokens, err := parseInput(req.Input)
	if err != nil {
		badRequest(w, err.Error(), "input")
		return
	}
	if req.EncodingFormat != "" && req.EncodingFormat != "float" && req.EncodingFormat != "base64" {
		badRequest(w, fmt.Sprintf("encoding_format %q must be \"float\" or \"base64\"", req.EncodingFormat), "encoding_format")
		return
	}
	dims := EmbeddingDims
	if req.Dimensions != nil {
		dims = *req.Dimensions
		if dims < 1 || dims > maxEmbeddingDims {
			badRequest(w, fmt.Sprintf("dimensions is %d; it must be between 1 and %d", dims, maxEmbeddingDims), "dimensions")
			return
		}
	}
	if !s.checkModel(w, req.Model) || s.fail(w, r.URL.Path) {
		return
	}
	var t *time.Timer
	if err := sleep(r.Context(), &t, s.cfg.TTFT); err != nil {
		return
	}
	promptTokens = atLeastOne(promptTokens)
	out := embeddingList{
		Object: "list",
		Data:   make([]embeddingItem, len(texts)),
		Model:  req.Model,
		Usage:  embeddingUsage{PromptTokens: promptTokens, TotalTokens: promptTokens},
	}
	for i, text := range texts {
		var v any = embed(req.Model, text, dims)
		if req.EncodingFormat == "base64" {
			v = float32Base64(v.([]float32))
		}
		out.Data[i] = embeddingItem{Object: "embedding", Index: i, Embedding: v}
	}
	writeJSON(w, http.StatusOK, out)
	s.log.Debug("synthetic engine: request done", "path", r.URL.Path, "model", req.Model,
		"inputs", len(texts), "prompt_tokens", promptTokens)
}

// float32Base64 encodes v as little-endian float32s in base64, as OpenAI
// does for encoding_format "base64".
func float32Base64(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
	}
	return base64.StdEncoding.EncodeToString(b)
}
