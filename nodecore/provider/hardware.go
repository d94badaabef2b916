package provider

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// DetectHardware describes this machine for announcements (display only):
// NVIDIA GPUs through nvidia-smi, Apple Silicon, else the CPU.
func DetectHardware() string {
	if gpus := nvidiaGPUs(); gpus != "" {
		return gpus
	}
	if runtime.GOOS == "darwin" && runtime.GOARCH == "arm64" {
		return fmt.Sprintf("Apple Silicon, %d cores", runtime.NumCPU())
	}
	return cpuDescription()
}

// nvidiaGPUs asks nvidia-smi for the GPUs' names and memory; "" when there
// is no nvidia-smi or it fails.
func nvidiaGPUs() string {
	path, err := exec.LookPath("nvidia-smi")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "--query-gpu=name,memory.total", "--format=csv,noheader").Output()
	if err != nil {
		return ""
	}
	return parseNvidiaSMI(string(out))
}

// parseNvidiaSMI turns nvidia-smi's CSV ("NVIDIA H100 80GB HBM3, 81559 MiB"
// a line) into "2 x NVIDIA H100 80GB HBM3 (81559 MiB)".
func parseNvidiaSMI(out string) string {
	counts := map[string]int{}
	var order []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		name, mem, ok := strings.Cut(line, ",")
		name, mem = strings.TrimSpace(name), strings.TrimSpace(mem)
		if !ok || name == "" {
			continue
		}
		label := name
		if mem != "" {
			label += " (" + mem + ")"
		}
		if counts[label] == 0 {
			order = append(order, label)
		}
		counts[label]++
	}
	parts := make([]string, 0, len(order))
	for _, l := range order {
		if counts[l] > 1 {
			parts = append(parts, fmt.Sprintf("%d x %s", counts[l], l))
		} else {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, ", ")
}

// cpuDescription names the CPU from /proc/cpuinfo where there is one.
func cpuDescription() string {
	model := ""
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	if model == "" {
		model = runtime.GOOS + "/" + runtime.GOARCH
	}
	return fmt.Sprintf("CPU %s, %d cores", model, runtime.NumCPU())
}
