package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/tokenrouter/tokenrouter/internal/launch"
	"github.com/tokenrouter/tokenrouter/p2p"
)

func newDevCmd(g *globals) *cobra.Command {
	o := launch.MeshOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole mesh on this machine: bootstrap, settlement, nodes on the synthetic engine, a gateway",
		Long: `Run the whole Token-Router mesh on 127.0.0.1 in one process: a bootstrap peer,
a settlement peer (ledger in <data>/settle), --nodes nodes each with its own
synthetic engine, and a gateway on --gateway-addr. It creates a demo account,
writes its API key to <data>/dev-api-key and prints a curl line to try.
The same data directory keeps its accounts across runs. Ctrl-C stops everything.`,
		Example: "  tokenrouter dev\n  tokenrouter dev --nodes 5 --rate 0 --data /tmp/tr",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("log-level") {
				g.logLevel = "warn" // the banner says what matters; --log-level info shows every role
			}
			log, err := g.logger()
			if err != nil {
				return err
			}
			o.Logger = log
			if err := os.MkdirAll(o.Dir, 0o700); err != nil {
				return err
			}
			keyFile := filepath.Join(o.Dir, "dev-api-key")
			opFile := filepath.Join(o.Dir, "dev-operator-key")
			o.DemoKey, _ = launch.ReadFirstLine(keyFile)
			o.OperatorKey, _ = launch.ReadFirstLine(opFile)
			fmt.Fprintf(os.Stderr, "starting the Token-Router dev mesh in %s ...\n", o.Dir)
			m, err := launch.StartMesh(cmd.Context(), o)
			if err != nil {
				return err
			}
			if err := p2p.WriteFileAtomic(keyFile, []byte(m.DemoKey+"\n"), 0o600); err != nil {
				m.Stop()
				return err
			}
			if err := p2p.WriteFileAtomic(opFile, []byte(m.OperatorKey+"\n"), 0o600); err != nil {
				m.Stop()
				return err
			}
			printBanner(m, o, keyFile)
			<-cmd.Context().Done()
			fmt.Fprintln(os.Stderr, "\nstopping ...")
			if err := m.Stop(); err != nil {
				return err
			}
			fmt.Fprintln(os.Stderr, "stopped cleanly")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Dir, "data", defaultData("dev"), "directory for every role's data")
	f.IntVar(&o.Nodes, "nodes", 3, "nodes to run, each with its own synthetic engine")
	f.Float64Var(&o.Rate, "rate", 40, "synthetic engine speed in tokens per second (0 = as fast as it can)")
	f.StringVar(&o.GatewayAddr, "gateway-addr", "127.0.0.1:8080", "HOST:PORT for the gateway's OpenAI-compatible API")
	f.StringVar(&o.SettleAddr, "settle-addr", "127.0.0.1:8090", "HOST:PORT for the settlement peer's HTTP API")
	f.StringArrayVar(&o.Models, "model", []string{"synthetic-1"}, "model id every synthetic engine serves (repeatable)")
	f.IntVar(&o.Capacity, "capacity", 8, "concurrent calls each node takes")
	f.Float64Var(&o.RampStart, "ramp-start", 1, "fraction of declared capacity a new node starts at (dev: full; the network's default is 0.1)")
	return cmd
}

func printBanner(m *launch.Mesh, o launch.MeshOptions, keyFile string) {
	rate := fmt.Sprintf("%g tok/s", o.Rate)
	if o.Rate == 0 {
		rate = "as fast as it can"
	}
	auth := fmt.Sprintf(`-H "Authorization: Bearer $(cat %s)"`, keyFile)
	var b strings.Builder
	fmt.Fprintf(&b, "\nToken-Router dev mesh is up. The nodes run the SYNTHETIC engine: generated filler text, no GPU.\n\n")
	fmt.Fprintf(&b, "  gateway     %s/v1  (OpenAI-compatible)\n", m.GatewayURL)
	fmt.Fprintf(&b, "  settlement  %s  (accounts; peer %s)\n", m.SettleURL, m.PlatformID)
	fmt.Fprintf(&b, "  dashboard   %s/  (sign up or sign in with the demo key; keys, nodes, the network)\n", m.SettleURL)
	fmt.Fprintf(&b, "  bootstrap   %s\n", m.BootstrapAddr)
	fmt.Fprintf(&b, "  nodes       %d x %s at %s\n", len(m.NodeIDs), strings.Join(o.Models, ", "), rate)
	fmt.Fprintf(&b, "  demo key    %s (account %s)\n\n", keyFile, m.DemoID)
	fmt.Fprintf(&b, "Make a paid call:\n\n  curl -s %s/v1/chat/completions %s -H \"Content-Type: application/json\" -d '{\"model\":\"%s\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'\n\n",
		m.GatewayURL, auth, o.Models[0])
	fmt.Fprintf(&b, "See your balance move by exactly usage.cost_ucr:\n\n  curl -s %s/v1/account %s\n\n", m.GatewayURL, auth)
	fmt.Fprintf(&b, "Ctrl-C stops everything.\n")
	fmt.Print(b.String())
}
