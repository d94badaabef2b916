package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/settlement/economy"
)

// A brand-new network serves what it declares: ramp-up (SPEC §4) shapes
// which instance is preferred, but while declared capacity is free no
// consumer is refused. Two new nodes of 4 declared each are ramped to 10%
// (an effective capacity of 1 each); 8 concurrent callers still get every
// one of 400 calls answered and billed exactly.
func TestFreshNetworkServesItsDeclaredCapacity(t *testing.T) {
	const (
		model     = "synthetic-1"
		declared  = 4
		callers   = 8
		calls     = 400
		maxTokens = 8
	)
	// 200 tok/s: a call of 8 tokens takes ~40 ms, so the 8 callers
	// overlap and the gateway has 8 calls in flight most of the time.
	m := startMeshWith(t, launch.MeshOptions{Nodes: 2, Capacity: declared, Rate: 200})

	// Ramp-up applies: the settlement peer's default (10%) ramps each new
	// instance below what it declared.
	for _, node := range m.NodeIDs {
		in, ok := instanceOf(t, m, model, node)
		if !ok {
			t.Fatalf("the gateway does not list %s's instance of %s", node, model)
		}
		// The ramp grows from 10% as the instance ages (to 100% in 7 days):
		// seconds old, it shows 10.0%.
		if in.Declared != declared || in.RampUp < 0.1 || in.RampPct != 10 || in.Capacity >= float64(in.Declared) {
			t.Fatalf("instance of %s: declared %d, ramp_up %v, effective capacity %v; want declared %d, ramp_up 0.1 and less effective than declared",
				node, in.Declared, in.RampUp, in.Capacity, declared)
		}
		t.Logf("node %s: declared %d, ramp_up %v, effective capacity %v", node, in.Declared, in.RampUp, in.Capacity)
	}

	before := getAccount(t, m.GatewayURL, m.DemoKey)
	// A generous bound on what the calls can cost: the starting grant pays
	// for them many times over.
	if most := calls * economy.Cost(economy.DefaultPriceTable().For(model), 100, maxTokens); before.BalanceUcr < 10*most {
		t.Fatalf("balance %d µcr cannot comfortably pay %d calls (up to %d µcr)", before.BalanceUcr, calls, most)
	}

	type result struct {
		usage string // raw usage of a call answered
		node  string
		err   error
	}
	results := make([]result, calls)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		c := client(t, m, m.DemoKey)
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= calls {
					return
				}
				var raw *http.Response
				resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
					Model:     model,
					Messages:  []openai.ChatCompletionMessageParamUnion{openai.UserMessage("say something")},
					MaxTokens: openai.Int(maxTokens),
				}, option.WithResponseInto(&raw))
				switch {
				case err != nil:
					results[i].err = err
				case len(resp.Choices) != 1 || resp.Choices[0].Message.Content == "" || resp.Usage.CompletionTokens != maxTokens:
					results[i].err = fmt.Errorf("answer %s", resp.RawJSON())
				default:
					results[i] = result{usage: resp.Usage.RawJSON(), node: raw.Header.Get("x-tokenrouter-node")}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)

	var total, answered int64
	served := map[string]int{}
	refused, failed := 0, 0
	var firstErrs []string
	for _, r := range results {
		if r.err != nil {
			var apiErr *openai.Error
			msg := r.err.Error()
			if errors.As(r.err, &apiErr) {
				msg = fmt.Sprintf("%d %s: %s", apiErr.StatusCode, apiErr.Code, apiErr.Message)
			}
			if apiErr != nil && apiErr.StatusCode == http.StatusServiceUnavailable && apiErr.Code == "no_capacity" {
				refused++
			} else {
				failed++
			}
			if len(firstErrs) < 3 {
				firstErrs = append(firstErrs, msg)
			}
			continue
		}
		total += costOf(t, r.usage)
		answered++
		served[r.node]++
	}
	nodes := make([]string, 0, len(served))
	for n := range served {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		t.Logf("node %s served %d calls", n, served[n])
	}
	t.Logf("%d calls by %d callers in %s: %d answered, %d refused no_capacity, %d failed otherwise",
		calls, callers, elapsed.Round(time.Millisecond), answered, refused, failed)
	if refused+failed > 0 {
		t.Fatalf("%d of %d calls refused (503 no_capacity) and %d failed otherwise, with declared capacity free; first errors: %q",
			refused, calls, failed, firstErrs)
	}
	for _, n := range m.NodeIDs {
		if served[n] == 0 {
			t.Errorf("node %s served no call: 8 callers need both nodes' declared capacity", n)
		}
	}

	// Every call billed exactly what the client was told.
	after := waitCalls(t, m.GatewayURL, m.DemoKey, before.Calls+calls)
	if after.Calls-before.Calls != calls {
		t.Fatalf("the account counts %d calls, want %d", after.Calls-before.Calls, calls)
	}
	if moved := before.BalanceUcr - after.BalanceUcr; moved != total {
		t.Fatalf("balance moved by %d µcr, the clients were told %d", moved, total)
	}
	if spent := after.SpentUcr - before.SpentUcr; spent != total {
		t.Fatalf("spent %d µcr, the clients were told %d", spent, total)
	}

	if err := m.Stop(); err != nil {
		t.Fatalf("mesh stopped with errors: %v", err)
	}
	ledgerSumsToZero(t, m)
}
