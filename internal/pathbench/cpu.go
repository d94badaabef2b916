package main

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is Linux's USER_HZ, the unit of /proc CPU times.
const clockTicks = 100

// cpuSample is the machine's busy CPU time and the part of it this
// benchmark's own processes used, at one instant.
type cpuSample struct {
	at         time.Time
	busy, ours float64 // seconds
}

// sampleCPU reads /proc; on a system without it every figure is zero.
func (s *setup) sampleCPU() cpuSample {
	c := cpuSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
		for i := 1; i < len(f) && i <= 8; i++ {
			if i == 4 || i == 5 {
				continue // idle, iowait
			}
			v, _ := strconv.ParseFloat(f[i], 64)
			c.busy += v / clockTicks
		}
	}
	c.ours = procCPU("self")
	for _, p := range s.ps.list {
		c.ours += procCPU(strconv.Itoa(p.cmd.Process.Pid))
	}
	return c
}

// procCPU is a process's user and system CPU time in seconds.
func procCPU(pid string) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	_, rest, ok := strings.Cut(string(b), ") ") // the command may hold spaces
	if !ok {
		return 0
	}
	f := strings.Fields(rest) // from field 3 (state) on
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	sys, _ := strconv.ParseFloat(f[12], 64)
	return (u + sys) / clockTicks
}

// otherCores is the CPU other processes used between a and b, in cores.
func otherCores(a, b cpuSample) float64 {
	d := b.at.Sub(a.at).Seconds()
	if d <= 0 {
		return 0
	}
	return max(0, (b.busy-a.busy)-(b.ours-a.ours)) / d
}
