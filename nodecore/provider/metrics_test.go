package provider

import (
	"net/http"
	"testing"

	"github.com/tokenrouter/tokenrouter/p2p"
)

// Every way a call ends lands in one result, the same class Stats counts it in.
func TestCallResult(t *testing.T) {
	cases := []struct {
		name string
		done bool
		o    callOutcome
		want string
	}{
		{"answered with its claim", true, callOutcome{status: 200}, "served"},
		{"the engine broke off mid-stream", true, callOutcome{status: 200, claim: p2p.NodeClaim{Incomplete: true}}, "failed"},
		{"at capacity", false, callOutcome{status: http.StatusTooManyRequests}, "full"},
		{"engine unreachable", false, callOutcome{status: http.StatusBadGateway, nodeFault: true}, "failed"},
		{"a model it does not serve", false, callOutcome{status: http.StatusNotFound, nodeFault: true}, "failed"},
		{"the consumer's bad request", false, callOutcome{status: http.StatusBadRequest}, "rejected"},
		{"the gateway left before the header", false, callOutcome{}, "dropped"},
		{"the stream broke after the header", false, callOutcome{status: 200}, "dropped"},
	}
	for _, tc := range cases {
		if got := callResult(tc.done, tc.o); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
