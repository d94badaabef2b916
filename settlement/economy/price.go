package economy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrBadPriceTable is returned by LoadPriceTable when the file cannot be used:
// unknown extension, malformed content, an empty model name or a negative price.
var ErrBadPriceTable = errors.New("economy: bad price table")

// Price is a model's price in µcr per 1,000,000 tokens.
type Price struct {
	// InputPer1M is the price of 1M prompt (input) tokens, in µcr.
	InputPer1M int64 `json:"input" yaml:"input"`
	// OutputPer1M is the price of 1M completion (output) tokens, in µcr.
	OutputPer1M int64 `json:"output" yaml:"output"`
}

// PriceTable maps model names to prices. Default applies to every model not
// listed in Models. The zero value prices everything at zero.
type PriceTable struct {
	// Default is the price of any model missing from Models.
	Default Price
	// Models holds per-model prices keyed by the model name as clients send it.
	Models map[string]Price
}

// DefaultPriceTable returns the table used when no price file is given.
func DefaultPriceTable() PriceTable {
	return PriceTable{
		// $1 in / $2 out per 1M tokens: the middle of what hosted open-weight
		// 7–70B models cost on OpenRouter-style markets, with output dearer
		// than input because decoding costs more compute than prefill.
		Default: Price{InputPer1M: 1_000_000, OutputPer1M: 2_000_000},
		Models:  map[string]Price{},
	}
}

// For returns the price of model: its own entry, or Default. The network
// names a model without Ollama's ":latest" tag, so an entry written with
// the tag ("llama3.2:latest") prices "llama3.2" too.
func (t PriceTable) For(model string) Price {
	if p, ok := t.Models[model]; ok {
		return p
	}
	if p, ok := t.Models[model+":latest"]; ok {
		return p
	}
	return t.Default
}

// Validate reports whether every price in the table is non-negative and every
// model name non-empty.
func (t PriceTable) Validate() error {
	if err := t.Default.validate("default"); err != nil {
		return err
	}
	for name, p := range t.Models {
		if strings.TrimSpace(name) == "" {
			return fmt.Errorf("%w: empty model name", ErrBadPriceTable)
		}
		if err := p.validate(name); err != nil {
			return err
		}
	}
	return nil
}

func (p Price) validate(name string) error {
	if p.InputPer1M < 0 || p.OutputPer1M < 0 {
		return fmt.Errorf("%w: %q has a negative price (input %d, output %d)",
			ErrBadPriceTable, name, p.InputPer1M, p.OutputPer1M)
	}
	return nil
}

// priceFile is the on-disk shape of a price table. Default is a pointer so a
// file that omits it keeps DefaultPriceTable's default instead of pricing
// unlisted models at zero.
type priceFile struct {
	Default *Price           `json:"default" yaml:"default"`
	Models  map[string]Price `json:"models" yaml:"models"`
}

// LoadPriceTable reads a price table from a JSON (.json) or YAML (.yaml, .yml)
// file shaped like
//
//	{"default": {"input": 1000000, "output": 2000000},
//	 "models": {"llama-3.1-8b": {"input": 200000, "output": 400000}}}
//
// A missing "default" keeps DefaultPriceTable's default. Unknown fields,
// negative prices and empty model names are errors wrapping ErrBadPriceTable.
func LoadPriceTable(path string) (PriceTable, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return PriceTable{}, fmt.Errorf("economy: read price table: %w", err)
	}
	var f priceFile
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".json":
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			return PriceTable{}, fmt.Errorf("%w: %s: %v", ErrBadPriceTable, path, err)
		}
		if dec.More() {
			return PriceTable{}, fmt.Errorf("%w: %s: trailing data", ErrBadPriceTable, path)
		}
	case ".yaml", ".yml":
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil {
			return PriceTable{}, fmt.Errorf("%w: %s: %v", ErrBadPriceTable, path, err)
		}
	default:
		return PriceTable{}, fmt.Errorf("%w: %s: unknown extension %q (want .json, .yaml or .yml)",
			ErrBadPriceTable, path, ext)
	}
	t := DefaultPriceTable()
	if f.Default != nil {
		t.Default = *f.Default
	}
	for name, p := range f.Models {
		t.Models[name] = p
	}
	if err := t.Validate(); err != nil {
		return PriceTable{}, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}
