package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
)

// globals are the flags every subcommand has.
type globals struct {
	config    string
	logLevel  string
	logFormat string
	pprof     string // hidden: HOST:PORT serving net/http/pprof (benchmarks)
}

func newRootCmd() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "tokenrouter",
		Short: "Token-Router: a peer-to-peer inference network in one binary",
		Long: `Token-Router is a peer-to-peer inference network. Operators run a node and earn
credits on every token it serves; consumers call an OpenAI-compatible gateway
and spend the same credits; a platform settlement peer keeps the books.

Every flag also reads from the environment variable TOKENROUTER_<FLAG>
(upper case, dashes as underscores, lists comma-separated) and from an
optional --config file (TOML or YAML, keys named like the flags).
A flag given on the command line wins over the environment, which wins over the file.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnvAndConfig(cmd, g.config); err != nil {
				return err
			}
			return servePprof(g.pprof)
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.config, "config", "", "read flag values from this TOML or YAML file")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	pf.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	pf.StringVar(&g.pprof, "pprof", "", "serve Go's net/http/pprof on this HOST:PORT (for profiling)")
	pf.MarkHidden("pprof")
	root.AddCommand(
		newEngineCmd(g),
		newBootstrapCmd(g),
		newSettleCmd(g),
		newNodeCmd(g),
		newGatewayCmd(g),
		newDevCmd(g),
		newLedgerCmd(g),
		newSimCmd(g),
		newStatusCmd(g),
	)
	return root
}

// logger builds the process logger from --log-level and --log-format.
func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", g.logFormat)
}

// defaultData is ~/.tokenrouter/<role>.
func defaultData(role string) string {
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(".tokenrouter", role)
	}
	return filepath.Join(home, ".tokenrouter", role)
}

// envName is the environment variable a flag reads: TOKENROUTER_<FLAG>.
func envName(flag string) string {
	return "TOKENROUTER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnvAndConfig fills every flag not given on the command line from its
// environment variable, else from the config file.
func applyEnvAndConfig(cmd *cobra.Command, configPath string) error {
	if configPath == "" {
		configPath = os.Getenv(envName("config"))
	}
	file := map[string]any{}
	if configPath != "" {
		var err error
		if file, err = readConfig(configPath); err != nil {
			return err
		}
	}
	var firstErr error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Changed || firstErr != nil || f.Name == "config" || f.Name == "help" {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			firstErr = setFlag(f, splitList(f, v), "environment variable "+envName(f.Name))
			return
		}
		if v, ok := file[f.Name]; ok {
			firstErr = setFlag(f, configValues(v), "config key "+f.Name)
		}
	})
	return firstErr
}

func readConfig(path string) (map[string]any, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: %w", err)
	}
	out := map[string]any{}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".toml":
		err = toml.Unmarshal(raw, &out)
	case ".yaml", ".yml":
		err = yaml.Unmarshal(raw, &out)
	default:
		return nil, fmt.Errorf("--config %s: use a .toml, .yaml or .yml file", path)
	}
	if err != nil {
		return nil, fmt.Errorf("--config %s: %w", path, err)
	}
	return out, nil
}

func isList(f *pflag.Flag) bool {
	return strings.HasSuffix(f.Value.Type(), "Slice") || strings.HasSuffix(f.Value.Type(), "Array")
}

func splitList(f *pflag.Flag, v string) []string {
	if isList(f) {
		return strings.Split(v, ",")
	}
	return []string{v}
}

func configValues(v any) []string {
	if list, ok := v.([]any); ok {
		out := make([]string, len(list))
		for i, x := range list {
			out[i] = fmt.Sprint(x)
		}
		return out
	}
	return []string{fmt.Sprint(v)}
}

func setFlag(f *pflag.Flag, values []string, source string) error {
	if isList(f) {
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if err := sv.Replace(values); err != nil {
				return fmt.Errorf("%s: %w", source, err)
			}
			f.Changed = true
			return nil
		}
	}
	for _, v := range values {
		if err := f.Value.Set(strings.TrimSpace(v)); err != nil {
			return fmt.Errorf("%s: invalid value %q for --%s: %w", source, v, f.Name, err)
		}
	}
	f.Changed = true
	return nil
}
