package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// engineProcs are the processes of the real engines on this machine, found
// by the TCP ports they listen on. Each is the root of a process tree whose
// CPU is the engine's: PostgreSQL's postmaster with its backends and
// workers, each Kafka node's JVM. Empty when the engines are elsewhere.
type engineProcs struct {
	postgres, kafka []int
}

func (e engineProcs) found() bool { return len(e.postgres) > 0 && len(e.kafka) > 0 }

// findEngines finds the local processes that listen on the ports of
// dbURL and brokers. An engine on another host, or in another network
// namespace, is not found, and the report says so.
func findEngines(dbURL string, brokers []string) (engineProcs, error) {
	pgPort, err := postgresPort(dbURL)
	if err != nil {
		return engineProcs{}, err
	}
	ports := map[int]string{pgPort: "postgres"}
	for _, b := range brokers {
		_, p, err := net.SplitHostPort(strings.TrimSpace(b))
		if err != nil {
			return engineProcs{}, fmt.Errorf("broker %q: %w", b, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			return engineProcs{}, fmt.Errorf("broker %q: port: %w", b, err)
		}
		ports[n] = "kafka"
	}
	inodes := map[uint64]int{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return engineProcs{}, err
		}
		found, err := parseListening(b, ports)
		if err != nil {
			return engineProcs{}, fmt.Errorf("%s: %w", f, err)
		}
		for inode, port := range found {
			inodes[inode] = port
		}
	}
	owners, err := socketOwners(inodes)
	if err != nil {
		return engineProcs{}, err
	}
	var e engineProcs
	for port, pid := range owners {
		if ports[port] == "postgres" {
			e.postgres = append(e.postgres, pid)
		} else {
			e.kafka = append(e.kafka, pid)
		}
	}
	return e, nil
}

// postgresPort is the TCP port of a postgres:// URL (5432 when it names none).
func postgresPort(dbURL string) (int, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return 0, fmt.Errorf("database URL: %w", err)
	}
	if u.Port() == "" {
		return 5432, nil
	}
	return strconv.Atoi(u.Port())
}

// parseListening reads /proc/net/tcp or tcp6 and returns the socket inode of
// every listening socket on one of ports, with its port.
func parseListening(b []byte, ports map[int]string) (map[uint64]int, error) {
	out := map[uint64]int{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	first := true
	for sc.Scan() {
		if first { // the column names
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			return nil, fmt.Errorf("line %q: %d fields, want at least 10", sc.Text(), len(f))
		}
		const listen = "0A"
		if f[3] != listen {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			return nil, fmt.Errorf("local address %q has no port", f[1])
		}
		port, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil {
			return nil, fmt.Errorf("local address %q: %w", f[1], err)
		}
		if _, ok := ports[int(port)]; !ok {
			continue
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("inode %q: %w", f[9], err)
		}
		out[inode] = int(port)
	}
	return out, sc.Err()
}

// socketOwners finds, for each socket inode, the process holding it open
// (the lowest pid, when several do), and returns it by port. Processes that end during the scan, or whose
// descriptors this user may not read, are passed over.
func socketOwners(inodes map[uint64]int) (map[int]int, error) {
	owners := map[int]int{}
	if len(inodes) == 0 {
		return owners, nil
	}
	dirs, err := perProcess("fd")
	if err != nil {
		return nil, err
	}
	for pid, dir := range dirs {
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, fd.Name()))
			if err != nil {
				continue
			}
			s, ok := strings.CutPrefix(link, "socket:[")
			if !ok {
				continue
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64)
			if err != nil {
				continue
			}
			// A socket a child inherited belongs to the parent's tree:
			// the lowest pid holding it is the one to follow.
			if port, ok := inodes[inode]; ok {
				if cur, seen := owners[port]; !seen || pid < cur {
					owners[port] = pid
				}
			}
		}
	}
	return owners, nil
}

// procStat is what treeCPU needs of one /proc/PID/stat.
type procStat struct {
	ppid int
	// own is the process's user and system time; reaped, its children's
	// that it waited for (a postmaster's exited backends, say).
	own, reaped time.Duration
}

func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("/proc/PID/stat: no command name")
	}
	f := strings.Fields(string(b[i+1:]))
	// After the command name: state, ppid, ...; utime, stime, cutime and
	// cstime are the 12th to 15th.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/PID/stat: %d fields after the command name, want at least 15", len(f))
	}
	var n [5]int64
	for j, k := range []int{1, 11, 12, 13, 14} {
		v, err := strconv.ParseInt(f[k], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("/proc/PID/stat: field %d: %w", k+3, err)
		}
		n[j] = v
	}
	return procStat{ppid: int(n[0]), own: time.Duration(n[1]+n[2]) * clockTick, reaped: time.Duration(n[3]+n[4]) * clockTick}, nil
}

// procStats reads /proc/PID/stat of every process.
func procStats() (map[int]procStat, error) {
	paths, err := perProcess("stat")
	if err != nil {
		return nil, err
	}
	stats := make(map[int]procStat, len(paths))
	for pid, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // ended meanwhile
		}
		s, err := parseProcStat(b)
		if err != nil {
			return nil, fmt.Errorf("process %d: %w", pid, err)
		}
		stats[pid] = s
	}
	return stats, nil
}

// sumTrees is the CPU time of the process trees under roots: every live
// process in them, and what each has reaped of its children. A backend
// that ended between two readings is counted once, in its parent's reaped
// time, so the difference of two readings is what the tree spent between
// them.
func sumTrees(stats map[int]procStat, roots []int) time.Duration {
	in := map[int]bool{}
	for _, r := range roots {
		in[r] = true
	}
	var under func(pid int, depth int) bool
	under = func(pid int, depth int) bool {
		if v, ok := in[pid]; ok {
			return v
		}
		s, ok := stats[pid]
		if !ok || pid <= 1 || depth > 64 {
			return false
		}
		v := under(s.ppid, depth+1)
		in[pid] = v
		return v
	}
	var total time.Duration
	for pid, s := range stats {
		if under(pid, 0) {
			total += s.own + s.reaped
		}
	}
	return total
}

// perProcess is /proc/PID/name of every process, by PID.
func perProcess(name string) (map[int]string, error) {
	paths, err := filepath.Glob("/proc/[0-9]*/" + name)
	if err != nil {
		return nil, err
	}
	out := make(map[int]string, len(paths))
	for _, p := range paths {
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			out[pid] = p
		}
	}
	return out, nil
}
