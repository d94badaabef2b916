package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// target is one way to reach the engine.
type target struct {
	name   string
	url    string // base, without /v1
	key    string
	client *http.Client
	calls  atomic.Int64 // calls answered in full, streamed or not
}

func newTarget(name, url, key string) *target {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256, // every client keeps its connection
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}
	return &target{name: name, url: url, key: key, client: &http.Client{Transport: tr}}
}

func (t *target) post(ctx context.Context, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+t.key)
	return t.client.Do(req)
}

func chatBody(maxTokens int, stream bool) []byte {
	return fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":"benchmark the path"}],"max_tokens":%d,"stream":%v}`,
		model, maxTokens, stream)
}

// once makes one non-streamed call and checks it was answered in full.
func (t *target) once(ctx context.Context, body []byte) error {
	resp, err := t.post(ctx, body)
	if err != nil {
		return fmt.Errorf("%s: %w", t.name, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("%s: reading the answer: %w", t.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: status %d: %.300s", t.name, resp.StatusCode, b)
	}
	if !bytes.Contains(b, []byte(`"usage"`)) {
		return fmt.Errorf("%s: answer without usage: %.300s", t.name, b)
	}
	t.calls.Add(1)
	return nil
}

// loadResult is one fixed-duration run of closed-loop clients.
type loadResult struct {
	calls   int
	elapsed time.Duration
	lat     []time.Duration // sorted
}

func (r loadResult) rps() float64 { return float64(r.calls) / r.elapsed.Seconds() }

func (r loadResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(p*float64(len(r.lat))))]
}

// load runs conc clients, each calling back to back, for d. Any failed call
// ends the run with an error: a figure with failures in it is no figure.
func (t *target) load(conc int, d time.Duration, body []byte) (loadResult, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu    sync.Mutex
		all   []time.Duration
		first error
		wg    sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for range conc {
		wg.Go(func() {
			lat := make([]time.Duration, 0, 4096)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				t0 := time.Now()
				if err := t.once(ctx, body); err != nil {
					mu.Lock()
					if first == nil && ctx.Err() == nil {
						first = err
					}
					mu.Unlock()
					cancel()
					break
				}
				lat = append(lat, time.Since(t0))
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if first != nil {
		return loadResult{}, first
	}
	slices.Sort(all)
	return loadResult{calls: len(all), elapsed: elapsed, lat: all}, nil
}

// streamResult is back-to-back streamed completions for a fixed duration.
type streamResult struct {
	streams int
	tokens  int
	elapsed time.Duration // wall time, each stream's setup and end included
	span    time.Duration // summed over streams: first content chunk to last
	ttft    []time.Duration
}

// tokPerS is the relay rate: content chunks per second while they flow,
// from each stream's first to its last.
func (r streamResult) tokPerS() float64 {
	return float64(r.tokens-r.streams) / r.span.Seconds()
}

// tokPerSAll counts each stream's setup (time to first token) and end too.
func (r streamResult) tokPerSAll() float64 { return float64(r.tokens) / r.elapsed.Seconds() }

func (r streamResult) ttftMedian() time.Duration {
	s := slices.Clone(r.ttft)
	slices.Sort(s)
	return s[len(s)/2]
}

// streams makes streamed completions of maxTokens one after another for at
// least d, counting content chunks as the client receives them. Each must
// end with [DONE] and carry exactly maxTokens of them.
func (t *target) streams(maxTokens int, d time.Duration) (streamResult, error) {
	body := chatBody(maxTokens, true)
	var r streamResult
	start := time.Now()
	for r.streams == 0 || time.Since(start) < d {
		st, err := t.stream(body)
		if err != nil {
			return r, err
		}
		if st.n != maxTokens {
			return r, fmt.Errorf("%s: stream carried %d content chunks, want %d", t.name, st.n, maxTokens)
		}
		r.streams++
		r.tokens += st.n
		r.span += st.last.Sub(st.first)
		r.ttft = append(r.ttft, st.first.Sub(st.start))
	}
	r.elapsed = time.Since(start)
	return r, nil
}

// oneStream is what the client saw of one stream.
type oneStream struct {
	n                  int
	start, first, last time.Time
}

var (
	dataPrefix = []byte("data: ")
	contentKey = []byte(`"content":"`)
)

func (t *target) stream(body []byte) (oneStream, error) {
	st := oneStream{start: time.Now()}
	resp, err := t.post(context.Background(), body)
	if err != nil {
		return st, fmt.Errorf("%s: %w", t.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return st, fmt.Errorf("%s: stream status %d: %.300s", t.name, resp.StatusCode, b)
	}
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return st, fmt.Errorf("%s: stream ended without [DONE] after %d chunks: %v", t.name, st.n, err)
		}
		data, ok := bytes.CutPrefix(line, dataPrefix)
		if !ok {
			continue
		}
		data = bytes.TrimSpace(data)
		if string(data) == "[DONE]" {
			t.calls.Add(1)
			return st, nil
		}
		if bytes.Contains(data, []byte(`"finish_reason":"error"`)) {
			return st, fmt.Errorf("%s: stream broke: %s", t.name, data)
		}
		if i := bytes.Index(data, contentKey); i >= 0 && i+len(contentKey) < len(data) && data[i+len(contentKey)] != '"' {
			st.n++
			st.last = time.Now()
			if st.n == 1 {
				st.first = st.last
			}
		}
	}
}
