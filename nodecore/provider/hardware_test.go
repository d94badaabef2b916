package provider

import (
	"strings"
	"testing"
)

func TestParseNvidiaSMI(t *testing.T) {
	cases := map[string]string{
		"NVIDIA H100 80GB HBM3, 81559 MiB\nNVIDIA H100 80GB HBM3, 81559 MiB\n": "2 x NVIDIA H100 80GB HBM3 (81559 MiB)",
		"NVIDIA GeForce RTX 4090, 24564 MiB":                                   "NVIDIA GeForce RTX 4090 (24564 MiB)",
		"NVIDIA A10G, 23028 MiB\nTesla T4, 15360 MiB":                          "NVIDIA A10G (23028 MiB), Tesla T4 (15360 MiB)",
		"":                    "",
		"garbage without csv": "",
	}
	for in, want := range cases {
		if got := parseNvidiaSMI(in); got != want {
			t.Errorf("%q -> %q, want %q", in, got, want)
		}
	}
}

func TestDetectHardwareDescribesThisMachine(t *testing.T) {
	got := DetectHardware()
	if got == "" || !(strings.HasPrefix(got, "CPU ") || strings.Contains(got, "Apple Silicon") || strings.Contains(got, "MiB")) {
		t.Fatalf("hardware %q", got)
	}
}
