package gateway

import (
	"testing"
	"time"
)

func TestKeyLimitsBurstRefillAndKeysApart(t *testing.T) {
	if newKeyLimits(0) != nil {
		t.Fatal("rpm 0 must mean no limit")
	}
	k := newKeyLimits(60) // one a second, bursts of 10
	now := time.Unix(1000, 0)
	for i := range 10 {
		if ok, _, _ := k.allow("a", now); !ok {
			t.Fatalf("call %d of the burst refused", i+1)
		}
	}
	ok, _, wait := k.allow("a", now)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("11th call in the same instant: ok %v wait %s", ok, wait)
	}
	if ok, _, _ := k.allow("b", now); !ok {
		t.Fatal("another key shares a's bucket")
	}
	if ok, _, _ := k.allow("a", now.Add(time.Second)); !ok {
		t.Fatal("a second later one call must pass")
	}
	// A refused call takes nothing: after a refusal the next second still passes.
	k.allow("a", now.Add(time.Second))
	if ok, _, _ := k.allow("a", now.Add(2*time.Second)); !ok {
		t.Fatal("refused calls used up the bucket")
	}
	// Idle buckets are dropped.
	k.allow("c", now.Add(10*time.Minute))
	if len(k.buckets) != 1 {
		t.Fatalf("%d buckets kept after everyone went idle", len(k.buckets))
	}
}
