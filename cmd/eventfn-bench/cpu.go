package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuTime is CPU time spent so far: by eventfn's process, by this bench's
// (its HTTP clients and Kafka readers), and by the whole machine (every
// process and the kernel, steal and idle excluded). The
// difference of two readings says what a phase cost in CPU, a figure that a
// slower or busier machine moves much less than it moves throughput and
// latency: on a shared two-core machine the same build's capacity varies
// by a third from one hour to the next, its CPU per order by a few per cent.
type cpuTime struct {
	app, bench, machine time.Duration
	// postgres and kafka are the real engines' process trees, when they
	// run on this machine (engineProcs); the rest of engines() is the
	// kernel's work outside any process, and other processes'.
	postgres, kafka time.Duration
}

// clockTick is Linux's USER_HZ, the unit of /proc's CPU times: 100 on
// every architecture Go supports.
const clockTick = 10 * time.Millisecond

// readCPU reads eventfn's, the bench's, the machine's and, when eng found
// them, the engines' CPU time from /proc.
func readCPU(pid int, eng engineProcs) (cpuTime, error) {
	machine, err := machineCPU()
	if err != nil {
		return cpuTime{}, err
	}
	app, err := processCPU(pid)
	if err != nil {
		return cpuTime{}, err
	}
	bench, err := processCPU(os.Getpid())
	if err != nil {
		return cpuTime{}, err
	}
	c := cpuTime{app: app, bench: bench, machine: machine}
	if eng.found() {
		stats, err := procStats()
		if err != nil {
			return cpuTime{}, err
		}
		c.postgres, c.kafka = sumTrees(stats, eng.postgres), sumTrees(stats, eng.kafka)
	}
	return c, nil
}

func (c cpuTime) sub(before cpuTime) cpuTime {
	return cpuTime{app: c.app - before.app, bench: c.bench - before.bench, machine: c.machine - before.machine,
		postgres: c.postgres - before.postgres, kafka: c.kafka - before.kafka}
}

// per is c divided among n orders.
func (c cpuTime) per(n int64) cpuTime {
	d := time.Duration(n)
	return cpuTime{app: c.app / d, bench: c.bench / d, machine: c.machine / d, postgres: c.postgres / d, kafka: c.kafka / d}
}

// engines is the machine's CPU time less eventfn's and the bench's: the
// database's, the broker's and the kernel's work for them.
func (c cpuTime) engines() time.Duration { return c.machine - c.app - c.bench }

// machineCPU is the busy time of every CPU since boot: user, nice, system,
// irq and softirq from the first line of /proc/stat (guest time is already
// in user; steal is another machine's).
func machineCPU() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineCPU(b)
}

func parseMachineCPU(b []byte) (time.Duration, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} { // user nice system irq softirq
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: field %d of %q: %w", i, line, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// processCPU is the user and system time of every thread of process pid.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s, err := parseProcStat(b)
	return s.own, err
}

// peakMemory is the largest resident set process pid has had (VmHWM in
// /proc/PID/status): a leak shows as a peak that grows with the run.
func peakMemory(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parsePeakMemory(b)
}

func parsePeakMemory(b []byte) (int64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("/proc/PID/status: unexpected VmHWM line %q", line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/PID/status: VmHWM: %w", err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("/proc/PID/status: no VmHWM line")
}
