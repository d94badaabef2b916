package main

import (
	"time"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/nodecore/engine"
)

func newEngineCmd(g *globals) *cobra.Command {
	cfg := engine.DefaultSyntheticConfig()
	var listen, data string
	var ttftMs int
	cmd := &cobra.Command{
		Use:   "engine",
		Short: "Run the synthetic engine: an OpenAI-compatible server generating deterministic text",
		Long: `Run the synthetic engine, a standalone OpenAI-compatible server (chat,
completions, embeddings, models; streamed or not; with usage) that generates
deterministic text at --rate tokens per second. It is for demos, tests,
benchmarks and simulations, and is labelled synthetic wherever it shows.
--fail-rate and --ttft make it misbehave on purpose.`,
		Example: "  tokenrouter engine --listen 127.0.0.1:9000 --model synthetic-1 --rate 40",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			cfg.TTFT = time.Duration(ttftMs) * time.Millisecond
			return launch.Engine(cmd.Context(), launch.EngineOptions{Listen: listen, Data: data, Config: cfg, Logger: log}, nil)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:9000", "HOST:PORT to serve the OpenAI-compatible API on")
	f.StringVar(&data, "data", "", "optional directory for the http-addr and ready files")
	f.StringArrayVar(&cfg.Models, "model", cfg.Models, "model id to serve (repeatable)")
	f.Float64Var(&cfg.Rate, "rate", cfg.Rate, "tokens per second per stream (0 = as fast as it can)")
	f.Float64Var(&cfg.FailRate, "fail-rate", 0, "probability in [0,1] that a request fails with a 500")
	f.IntVar(&ttftMs, "ttft", 0, "milliseconds before the first token")
	f.IntVar(&cfg.DefaultMaxTokens, "max-tokens", cfg.DefaultMaxTokens, "completion length when a request sets no max_tokens")
	return cmd
}
