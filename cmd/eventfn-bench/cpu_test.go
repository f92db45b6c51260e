package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

// checkParsed fails t unless a parser gave want, or, when wantErr is set,
// an error containing it.
func checkParsed[T comparable](t *testing.T, got T, err error, want T, wantErr string) {
	t.Helper()
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("got %v, %v; want an error containing %q", got, err, wantErr)
		}
		return
	}
	if err != nil || got != want {
		t.Fatalf("got %v, %v; want %v", got, err, want)
	}
}

func TestParseProcStat(t *testing.T) {
	// Fields after the command name: state, ppid, pgrp, session, tty_nr,
	// tpgid, flags, minflt, cminflt, majflt, cmajflt, utime, stime, cutime,
	// cstime, ...
	rest := " S 77 1 1 0 -1 4194560 100 0 0 0 250 75 30 10 20 0 12 0"
	want := procStat{ppid: 77, own: 3250 * time.Millisecond, reaped: 400 * time.Millisecond}
	for _, tc := range []struct {
		name, stat string
		want       procStat
		wantErr    string
	}{
		{"plain name", "4242 (eventfn)" + rest, want, ""},
		{"name with spaces and parentheses", "4242 (a (b) c) )" + rest, want, ""},
		{"no command name", "4242 eventfn S 1", procStat{}, "no command name"},
		{"truncated", "4242 (eventfn) S 1 1", procStat{}, "fields after the command name"},
		{"not a number", "4242 (eventfn) S 1 1 1 0 -1 4194560 100 0 0 0 x 75 0 0", procStat{}, "field 14"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseProcStat([]byte(tc.stat))
			checkParsed(t, got, err, tc.want, tc.wantErr)
		})
	}
}

func TestParseMachineCPU(t *testing.T) {
	for _, tc := range []struct {
		name, stat string
		want       time.Duration
		wantErr    string
	}{
		// user nice system idle iowait irq softirq steal: idle, iowait and
		// steal are not busy time.
		{"busy fields only", "cpu  100 2 30 9999 50 4 6 700 0 0\ncpu0 1 2 3\n", 1420 * time.Millisecond, ""},
		{"not the total line", "cpu0 100 2 30 9999 50 4 6 700\n", 0, "unexpected first line"},
		{"short", "cpu 1 2 3\n", 0, "unexpected first line"},
		{"not a number", "cpu 1 2 x 4 5 6 7 8\n", 0, "field 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMachineCPU([]byte(tc.stat))
			checkParsed(t, got, err, tc.want, tc.wantErr)
		})
	}
}

// TestReadCPUCountsWork burns CPU in this process until /proc shows it, in
// the process's time (read as eventfn's and as the bench's) and the machine's.
func TestReadCPUCountsWork(t *testing.T) {
	if _, err := os.Stat("/proc/stat"); err != nil {
		t.Skip("no /proc on this system: the bench prints CPU as not measured")
	}
	before, err := readCPU(os.Getpid(), engineProcs{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	x := uint64(1)
	for {
		for i := 0; i < 1_000_000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
		now, err := readCPU(os.Getpid(), engineProcs{})
		if err != nil {
			t.Fatal(err)
		}
		d := now.sub(before)
		// This process is both "eventfn" (pid) and the bench here.
		if d.app >= 50*time.Millisecond && d.bench >= 50*time.Millisecond && d.machine >= 50*time.Millisecond {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s of spinning (%d), /proc shows %v and %v of this process's CPU and %v of the machine's", x, d.app, d.bench, d.machine)
		}
	}
}

func TestParsePeakMemory(t *testing.T) {
	for _, tc := range []struct {
		name, status string
		want         int64
		wantErr      string
	}{
		{"present", "Name:\teventfn\nVmPeak:\t 900000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 100 kB\n", 123456 << 10, ""},
		{"missing", "Name:\teventfn\nVmRSS:\t 100 kB\n", 0, "no VmHWM"},
		{"odd unit", "VmHWM:\t 12 MB\n", 0, "unexpected VmHWM"},
		{"not a number", "VmHWM:\t x kB\n", 0, "VmHWM"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parsePeakMemory([]byte(tc.status))
			checkParsed(t, got, err, tc.want, tc.wantErr)
		})
	}
}
