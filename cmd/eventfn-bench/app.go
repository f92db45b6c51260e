package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// appProcess is eventfn running as a separate process, configured by EVENTFN_*
// variables only, as a deployment would run it.
type appProcess struct {
	cmd     *exec.Cmd
	url     string // http://host:port
	logPath string
	exited  chan struct{}
	waitErr error
}

// buildApp builds eventfn from the module that holds the working directory.
func buildApp(ctx context.Context, dir string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module: run from the eventfn repository or pass -app PATH")
	}
	bin := filepath.Join(dir, "eventfn")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir = filepath.Dir(mod)
	var stderr bytes.Buffer
	build.Stderr = &stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("go build eventfn in %s: %w\n%s", build.Dir, err, stderr.String())
	}
	return bin, nil
}

// freeAddr asks the kernel for a free port on 127.0.0.1. Another process could
// take it before the app binds it; the app then fails to start and says so.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// childEnv is the parent's environment without any EVENTFN_* variable (a
// profile or config file set in the shell must not change what is measured),
// with env laid over it.
func childEnv(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EVENTFN_") {
			out = append(out, kv)
		}
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// startApp starts bin with env, its output in logPath, and waits up to
// timeout for GET /readyz to answer 200.
func startApp(ctx context.Context, bin string, env map[string]string, logPath string, timeout time.Duration) (*appProcess, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = childEnv(env)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A process group of its own: Ctrl-C in the terminal reaches the bench,
	// which stops the app by its PID after reporting, not the app directly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	a := &appProcess{cmd: cmd, url: "http://" + env["EVENTFN_HTTP_ADDR"], logPath: logPath, exited: make(chan struct{})}
	go func() {
		a.waitErr = cmd.Wait()
		logFile.Close()
		close(a.exited)
	}()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, a.url+"/readyz", nil)
		resp, err := client.Do(req)
		if err == nil {
			var body bytes.Buffer
			_, _ = body.ReadFrom(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a, nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(body.String()))
		} else {
			last = err.Error()
		}
		select {
		case <-a.exited:
			return nil, fmt.Errorf("eventfn exited before it was ready (%v); its log:\n%s", a.waitErr, tail(logPath, 30))
		case <-ctx.Done():
			a.stop(10 * time.Second)
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			a.stop(10 * time.Second)
			return nil, fmt.Errorf("eventfn not ready within %s (last /readyz: %s); its log:\n%s", timeout, last, tail(logPath, 30))
		}
	}
}

// stop sends SIGTERM to the app's PID, waits up to grace for a graceful
// shutdown, then sends SIGKILL. It is safe to call more than once.
func (a *appProcess) stop(grace time.Duration) error {
	select {
	case <-a.exited:
		return nil
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.exited:
		return nil
	case <-time.After(grace):
	}
	_ = a.cmd.Process.Kill()
	<-a.exited
	return fmt.Errorf("eventfn (pid %d) did not stop within %s of SIGTERM; killed", a.cmd.Process.Pid, grace)
}

// alive reports an app that exited on its own.
func (a *appProcess) alive() error {
	select {
	case <-a.exited:
		return fmt.Errorf("eventfn (pid %d) exited during the run (%v); its log:\n%s", a.cmd.Process.Pid, a.waitErr, tail(a.logPath, 30))
	default:
		return nil
	}
}

// tail is the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
