package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/cobra"

	"github.com/eventfn/eventfn/router"
)

// devDebounce gathers the events of one save (editors write, rename and
// chmod) into one rebuild.
const devDebounce = 300 * time.Millisecond

func newDevCmd(g *globalFlags, stdout, stderr io.Writer, environ []string) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run eventfn and rebuild it whenever a file in handlers/ changes",
		Long: `dev runs eventfn as go run . does, and watches handlers/. When a Go file there
changes, it runs go generate (the handler registry and Wire), builds, and restarts
eventfn on the same data directory, so the embedded broker's log and the database
are kept. It prints which handlers were added, removed or changed, and how long
the save took to reach a ready eventfn. A build that fails is shown, and the last
good build keeps running. Run it from the repository's root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(environ)
			if err != nil {
				return err
			}
			host, port, err := net.SplitHostPort(cfg.HTTP.Addr)
			if err != nil || port == "0" {
				return ExitError{Code: 2, Err: fmt.Errorf("http.addr %q: dev needs a fixed port to know when eventfn is ready", cfg.HTTP.Addr)}
			}
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			bins, err := os.MkdirTemp("", "eventfn-dev-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(bins)
			d := &devLoop{dir: dir, bins: bins, environ: environ, args: g.childArgs(), out: stdout, childOut: stderr,
				readyURL: "http://" + net.JoinHostPort(host, port) + "/readyz"}
			return d.run(ctx)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "handlers", "the directory to watch")
	return cmd
}

// childArgs are the global flags given to dev, for the eventfn it runs.
func (g *globalFlags) childArgs() []string {
	args := []string{"run"}
	for _, f := range []struct{ name, v string }{{"--profile", g.profile}, {"--config", g.file}, {"--data-dir", g.dataDir}, {"--http-addr", g.http}} {
		if f.v != "" {
			args = append(args, f.name, f.v)
		}
	}
	if len(g.handlers) > 0 {
		args = append(args, "--handlers", strings.Join(g.handlers, ","))
	}
	return args
}

type devLoop struct {
	dir, bins string
	environ   []string
	args      []string
	out       io.Writer // dev's own lines
	childOut  io.Writer // eventfn's log
	readyURL  string

	builds   int
	tools    string // where the generators were built
	child    *exec.Cmd
	exited   chan error
	handlers map[string]string // name -> description, of the running build
}

func (d *devLoop) say(format string, args ...any) {
	fmt.Fprintf(d.out, "dev: "+format+"\n", args...)
}

func (d *devLoop) run(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", d.dir, err)
	}
	defer w.Close()
	if err := w.Add(d.dir); err != nil {
		return fmt.Errorf("watch %s: %w", d.dir, err)
	}
	start := time.Now()
	bin, out, err := d.build(ctx)
	if err != nil {
		return fmt.Errorf("the first build failed:\n%s", out)
	}
	if d.handlers, err = d.describe(ctx, bin); err != nil {
		return err
	}
	defer d.stop() // also when start fails half-way: the child may be running
	if err := d.start(ctx, bin); err != nil {
		return err
	}
	names := slices.Sorted(maps.Keys(d.handlers))
	d.say("eventfn ready in %s with %d handler(s): %s; watching %s/", time.Since(start).Round(10*time.Millisecond), len(names), strings.Join(names, ", "), d.dir)

	var (
		pending <-chan time.Time
		since   time.Time
	)
	for {
		select {
		case <-ctx.Done():
			d.say("stopping")
			return nil
		case err := <-w.Errors:
			d.say("watching %s: %v", d.dir, err)
		case ev := <-w.Events:
			if !relevant(ev) {
				continue
			}
			if pending == nil {
				since = time.Now()
			}
			pending = time.After(devDebounce)
		case <-pending:
			pending = nil
			d.reload(ctx, since)
		case err := <-d.exited:
			d.exited = nil
			d.say("eventfn exited (%v); fix and save a file in %s/ to start it again", err, d.dir)
		}
	}
}

// relevant is a change to a Go source file of the handlers: not a test (it
// does not change what runs), not the registry go generate writes.
func relevant(ev fsnotify.Event) bool {
	name := filepath.Base(ev.Name)
	return strings.HasSuffix(name, ".go") && !strings.HasSuffix(name, "_test.go") &&
		name != "registry_gen.go" && !strings.HasPrefix(name, ".") && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Remove|fsnotify.Rename) != 0
}

func (d *devLoop) reload(ctx context.Context, since time.Time) {
	bin, out, err := d.build(ctx)
	if err != nil {
		d.say("build failed; the last good build keeps running:\n%s", strings.TrimRight(out, "\n"))
		return
	}
	next, err := d.describe(ctx, bin)
	if err != nil {
		d.say("the new build cannot describe its handlers; the last good build keeps running: %v", err)
		return
	}
	added, removed, changed := diffHandlers(d.handlers, next)
	d.stop()
	if err := d.start(ctx, bin); err != nil {
		d.say("the new build did not become ready: %v", err)
		return
	}
	d.handlers = next
	d.say("reloaded in %s (saved to ready): added [%s], removed [%s], changed [%s]", time.Since(since).Round(10*time.Millisecond),
		strings.Join(added, ", "), strings.Join(removed, ", "), strings.Join(changed, ", "))
}

// build regenerates the handler registry and the Wire code, and builds a
// binary. The generators are built once, at start (tools), rather than by
// go generate's go run each time: the link of each would cost seconds per
// save. Other go:generate directives (the AsyncAPI document) are go
// generate ./...'s, for commits.
func (d *devLoop) build(ctx context.Context) (string, string, error) {
	if d.tools == "" {
		for _, tool := range []struct{ name, pkg string }{{"eventfn-gen", "./cmd/eventfn-gen"}, {"wire", "github.com/google/wire/cmd/wire"}} {
			if out, err := d.goCmd(ctx, "build", "-o", filepath.Join(d.bins, tool.name), tool.pkg); err != nil {
				return "", out, err
			}
		}
		d.tools = d.bins
	}
	d.builds++
	bin := filepath.Join(d.bins, fmt.Sprintf("eventfn-%d", d.builds))
	registry := filepath.Join(d.dir, "registry_gen.go")
	before := registrySignature(registry)
	if out, err := d.run1(ctx, filepath.Join(d.tools, "eventfn-gen"), "-dir", d.dir); err != nil {
		return "", out, err
	}
	// Wire type-checks the whole program (seconds); its output changes only
	// when the handlers' dependencies do, that is, Registry's parameters.
	steps := [][]string{{"go", "build", "-ldflags=-w", "-o", bin, "."}} // no DWARF: a much quicker link
	if after := registrySignature(registry); after != before || d.builds == 1 {
		steps = append([][]string{{filepath.Join(d.tools, "wire"), "gen", "./wiring"}}, steps...)
	}
	for _, args := range steps {
		if out, err := d.run1(ctx, args[0], args[1:]...); err != nil {
			return "", out, err
		}
	}
	return bin, "", nil
}

// registrySignature is the line that declares Registry, with its parameters.
func registrySignature(path string) string {
	raw, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if strings.HasPrefix(line, "func Registry(") {
			return line
		}
	}
	return ""
}

func (d *devLoop) run1(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = os.Environ()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out), err
	}
	return "", nil
}

func (d *devLoop) goCmd(ctx context.Context, args ...string) (string, error) {
	return d.run1(ctx, "go", args...)
}

func (d *devLoop) describe(ctx context.Context, bin string) (map[string]string, error) {
	cmd := exec.CommandContext(ctx, bin, append([]string{"handlers", "--json"}, d.args[1:]...)...)
	cmd.Env = d.environ
	raw, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s handlers --json: %w", bin, err)
	}
	var infos []router.HandlerInfo
	if err := json.Unmarshal(raw, &infos); err != nil {
		return nil, fmt.Errorf("%s handlers --json: %w", bin, err)
	}
	out := make(map[string]string, len(infos))
	for _, i := range infos {
		desc, _ := json.Marshal(i)
		out[i.Name] = string(desc)
	}
	return out, nil
}

func diffHandlers(before, after map[string]string) (added, removed, changed []string) {
	for name, desc := range after {
		prev, ok := before[name]
		switch {
		case !ok:
			added = append(added, name)
		case prev != desc:
			changed = append(changed, name)
		}
	}
	for name := range before {
		if _, ok := after[name]; !ok {
			removed = append(removed, name)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	slices.Sort(changed)
	return added, removed, changed
}

// start runs bin and waits until it answers /readyz.
func (d *devLoop) start(ctx context.Context, bin string) error {
	cmd := exec.Command(bin, d.args...)
	cmd.Env = d.environ
	cmd.Stdout, cmd.Stderr = d.childOut, d.childOut
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	d.child, d.exited = cmd, exited
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			d.child, d.exited = nil, nil
			return fmt.Errorf("eventfn exited while starting: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if ready(ctx, d.readyURL) {
			return nil
		}
	}
	return errors.New("not ready within 2m")
}

func ready(ctx context.Context, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stop ends the running eventfn gracefully (it drains, as on Ctrl-C), or
// kills it after a minute.
func (d *devLoop) stop() {
	if d.child == nil {
		return
	}
	_ = d.child.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(time.Minute):
		_ = d.child.Process.Kill()
		<-d.exited
	}
	d.child, d.exited = nil, nil
}
