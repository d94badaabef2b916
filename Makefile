# Token-Router. `make demo` runs the whole mesh locally; `make test` runs every test.
# Go comes with the machine (/usr/local/go); modules download on first build.

GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
BIN := bin/tokenrouter
export GOFLAGS ?= -mod=mod

.PHONY: bench-mesh bench-sim all build test fuzz demo bench vet fmt clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/tokenrouter

# Every test: unit, real libp2p hosts on loopback, real Pebble, real processes.
test:
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) fuzz

# A short run of every fuzz target (longer: make fuzz FUZZTIME=5m). The
# default is a count of inputs, not a time: with a time limit Go's fuzzer
# sometimes fails with "context deadline exceeded" when the time runs out
# while a worker is busy (a busy CI machine), though no input failed.
FUZZTIME ?= 40000x
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseMeta$$' -fuzztime $(FUZZTIME) ./internal/openai/
	$(GO) test -run '^$$' -fuzz '^FuzzSSEReader$$' -fuzztime $(FUZZTIME) ./nodecore/engine/
	$(GO) test -run '^$$' -fuzz '^FuzzStream$$' -fuzztime $(FUZZTIME) ./nodecore/engine/
	$(GO) test -run '^$$' -fuzz '^FuzzWithUsage$$' -fuzztime $(FUZZTIME) ./nodecore/engine/
	$(GO) test -run '^$$' -fuzz '^FuzzWithModel$$' -fuzztime $(FUZZTIME) ./nodecore/engine/
	$(GO) test -run '^$$' -fuzz '^FuzzReceiptBatchDecode$$' -fuzztime $(FUZZTIME) ./p2p/
	$(GO) test -run '^$$' -fuzz '^FuzzRelayRewrites$$' -fuzztime $(FUZZTIME) ./gateway/
	$(GO) test -run '^$$' -fuzz '^FuzzReadChunk$$' -fuzztime $(FUZZTIME) ./nodecore/engine/
	$(GO) test -run '^$$' -fuzz '^FuzzOutputWithinCap$$' -fuzztime $(FUZZTIME) ./nodecore/engine/

# The whole mesh on 127.0.0.1 (bootstrap, settlement, 3 synthetic nodes, a gateway).
demo: build
	./$(BIN) dev

# Go benchmarks, then the request path end to end (internal/pathbench): one
# synthetic engine called directly, through two plain reverse proxies, and
# through gateway -> libp2p -> node, all real processes. Figures and how they
# were taken go in docs/benchmarks.md (the run writes them to bin/bench-path.md).
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./...
	$(GO) run ./internal/pathbench -bin $(BIN) -md bin/bench-path.md
	$(MAKE) bench-sim
	$(MAKE) bench-mesh

# Every simulation scenario at full length (CI runs the short forms), then
# 1,000,000 nodes once; summaries land in bin/sim/, figures go in
# docs/benchmarks.md and docs/simulations.md.
bench-sim: build
	for s in fairness floor breaker herd sybil bounty flapping rampup scale-100k; do \
		./$(BIN) sim --scenario $$s --seed 1 --out bin/sim/$$s || exit 1; done
	./$(BIN) sim --scenario scale-100k --seed 1 --out bin/sim/scale-1m \
		--set nodes.gpu.count=900000 --set nodes.slow.count=50000 --set nodes.flaky.count=50000

# Real libp2p hosts with GossipSub on a simulated network, in virtual time
# (simulations/mesh; CI runs 100 hosts with the membership layer:
# TestMesh100): 1,000 hosts with gossip only, then 300 with the membership
# layer, which needs ~11 GiB and ~17 minutes on 2 cores (the scenario file
# says why 1,000 does not fit). Summaries land in bin/sim/mesh-*/, figures
# go in docs/benchmarks.md.
bench-mesh: build
	./$(BIN) sim --scenario mesh-1000 --seed 1 --out bin/sim/mesh-1000
	./$(BIN) sim --scenario mesh-1000 --seed 1 --out bin/sim/mesh-300-membership \
		--set hosts=300 --set gateways=21 --set membership=true

vet:
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
