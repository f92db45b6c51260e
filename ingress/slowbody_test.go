package ingress_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/eventfn/eventfn/configs"
)

// TestABodyThatDoesNotArriveInTimeIs408: a client that stops sending its body
// is cut off by the server's read timeout. It once got 400 "body is not a
// JSON order: read tcp 127.0.0.1:8080->…: i/o timeout": the wrong status,
// and the server's own address in the answer.
func TestABodyThatDoesNotArriveInTimeIs408(t *testing.T) {
	srv, _, _ := newUnstartedServer(t, 1<<20, func(*configs.Config) {})
	srv.Config.ReadTimeout = 300 * time.Millisecond
	srv.Start()

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	// The headers promise 100 bytes; 10 come, then nothing.
	if _, err := io.WriteString(conn, "POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"custome"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d %s, want 408", resp.StatusCode, body)
	}
	if strings.Contains(string(body), srv.Listener.Addr().String()) {
		t.Errorf("the answer shows the server's address: %s", body)
	}
}
