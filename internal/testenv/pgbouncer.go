package testenv

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// PgBouncer starts a PgBouncer in front of the PostgreSQL server at baseURL,
// pooling in mode (session, transaction or statement) with poolSize server
// sessions, each of which uses schema (set when it connects, and again
// after the reset between two clients).
// It returns a URL that reaches the database through it, and stops it when
// the test ends. extra are lines added to its [pgbouncer] section, which
// override the ones before. Without the pgbouncer program the test skips, or fails
// under CI=true (ci/services.sh installs it).
func PgBouncer(t testing.TB, baseURL, mode string, poolSize int, schema string, extra ...string) string {
	t.Helper()
	bin := pgbouncerProgram()
	if bin == "" {
		missing(t, "pgbouncer", "the pgbouncer program (apt-get install pgbouncer; ci/services.sh installs it)")
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		t.Fatalf("parse %s: %v", baseURL, err)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5432"
	}
	db := filepath.Base(u.Path)
	pgUser := u.User.Username()
	// PgBouncer refuses to run as root; it switches to the user -u names,
	// who must read its configuration.
	dir, err := os.MkdirTemp("", "eventfn-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	listen := freeLoopbackPort(t)
	ini := fmt.Sprintf(`[databases]
%[1]s = host=%[2]s port=%[3]s dbname=%[1]s user=%[4]s pool_size=%[5]d connect_query='SET search_path TO %[6]s'

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[7]d
unix_socket_dir =
auth_type = any
pool_mode = %[8]s
max_client_conn = 200
server_login_retry = 1
server_reset_query = DISCARD ALL; SET search_path TO %[6]s
%[9]s
`, db, host, port, pgUser, poolSize, schema, listen, mode, strings.Join(extra, "\n"))
	conf := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(conf, []byte(ini), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{conf}
	if os.Geteuid() == 0 {
		runAs := "nobody"
		if _, err := user.Lookup("postgres"); err == nil {
			runAs = "postgres"
		}
		args = append([]string{"-u", runAs}, args...)
	}
	out := &LogBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("pgbouncer's log:\n%s", out.String())
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(listen))
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("pgbouncer exited (%v):\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer does not listen on %s after 30 s:\n%s", addr, out.String())
		}
	}
	through := url.URL{Scheme: "postgres", User: url.User(pgUser), Host: addr, Path: "/" + db, RawQuery: "sslmode=disable"}
	return through.String()
}

func pgbouncerProgram() string {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
