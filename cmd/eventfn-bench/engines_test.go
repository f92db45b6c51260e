package main

import (
	"net"
	"os"
	"testing"
	"time"
)

func TestParseListening(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	ports := map[int]string{5432: "postgres", 9092: "kafka"}
	for _, tc := range []struct {
		name, table string
		want        map[uint64]int
		wantErr     string
	}{
		{"listeners on both ports, on any address",
			header +
				"   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 4711 1 0 100 0 0 10 0\n" +
				"   1: 00000000:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4712 1 0 100 0 0 10 0\n",
			map[uint64]int{4711: 5432, 4712: 9092}, ""},
		{"a connection to the port, another port's listener",
			header +
				"   0: 0100007F:1538 0100007F:D431 01 00000000:00000000 00:00000000 00000000   106        0 4713 1 0 20 4 30 10 -1\n" +
				"   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4714 1 0 100 0 0 10 0\n",
			map[uint64]int{}, ""},
		{"IPv6", header +
			"   0: 00000000000000000000000001000000:2384 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4715 1 0 100 0 0 10 0\n",
			map[uint64]int{4715: 9092}, ""},
		{"short line", header + "   0: 0100007F:1538 00000000:0000 0A\n", nil, "fields"},
		{"bad port", header + "   0: 0100007F:XYZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 4716 1\n", nil, "local address"},
		{"bad inode", header + "   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 x 1\n", nil, "inode"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseListening([]byte(tc.table), ports)
			if tc.wantErr != "" {
				checkParsed(t, 0, err, 0, tc.wantErr)
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
			for inode, port := range tc.want {
				if got[inode] != port {
					t.Fatalf("got %v; want %v", got, tc.want)
				}
			}
		})
	}
}

func TestSumTrees(t *testing.T) {
	s := func(ppid int, own, reaped time.Duration) procStat {
		return procStat{ppid: ppid, own: own, reaped: reaped}
	}
	stats := map[int]procStat{
		1:   s(0, time.Hour, time.Hour),                // init: never part of a tree
		100: s(1, time.Second, 2*time.Second),          // postmaster, with backends it reaped
		101: s(100, 500*time.Millisecond, 0),           // a backend
		102: s(101, 250*time.Millisecond, 0),           // a child of a backend
		200: s(1, 9*time.Second, 0),                    // another process
		300: s(1, 3*time.Second, 0),                    // a broker
		400: s(401, time.Second, 0), 401: s(400, 0, 0), // a parent loop: must not hang
		500: s(999, time.Second, 0), // a parent that is gone
	}
	for _, tc := range []struct {
		name  string
		roots []int
		want  time.Duration
	}{
		{"postmaster tree", []int{100}, 3750 * time.Millisecond},
		{"two roots", []int{100, 300}, 6750 * time.Millisecond},
		{"a root that is gone", []int{600}, 0},
		{"no roots", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := sumTrees(stats, tc.roots); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestFindEnginesFindsTheListeners: two sockets this test listens on, named
// as the database's and a broker's address, are found as this process.
func TestFindEnginesFindsTheListeners(t *testing.T) {
	if _, err := os.Stat("/proc/net/tcp"); err != nil {
		t.Skip("no /proc/net/tcp: not Linux")
	}
	listen := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		return l.Addr().String()
	}
	pg, broker := listen(), listen()
	_, pgPort, _ := net.SplitHostPort(pg)
	e, err := findEngines("postgres://u@127.0.0.1:"+pgPort+"/db?sslmode=disable", []string{broker})
	if err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	if !e.found() || len(e.postgres) != 1 || e.postgres[0] != me || len(e.kafka) != 1 || e.kafka[0] != me {
		t.Fatalf("found %+v, want this process (%d) for both", e, me)
	}
	// No broker listening: the engines are not told apart.
	e, err = findEngines("postgres://u@127.0.0.1:"+pgPort+"/db", []string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if e.found() || len(e.postgres) != 1 {
		t.Fatalf("found %+v with no broker listening; want PostgreSQL alone, and not found()", e)
	}
}
