// Package cli is the eventfn command line: run the runtime (all handlers or
// some), publish test events and follow what they cause, list the handlers,
// and show the state of the topics, consumer groups and outbox.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/wiring"
)

// ExitError carries a process exit code with its message.
type ExitError struct {
	Code int
	Err  error
}

func (e ExitError) Error() string { return e.Err.Error() }
func (e ExitError) Unwrap() error { return e.Err }

// usageError is bad input from the user: exit code 2.
func usageError(format string, args ...any) error {
	return ExitError{Code: 2, Err: fmt.Errorf(format, args...)}
}

type globalFlags struct {
	profile string
	file    string
	dataDir string
	http    string
	// handlers is run --handlers: nil when the flag is not given, so that
	// run.handlers from a file or the environment stands.
	handlers []string
}

// Main runs the command line with args and returns the process exit code.
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, environ []string) int {
	cmd := NewRoot(stdin, stdout, stderr, environ)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "eventfn:", err)
	var exit ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	return 1
}

// NewRoot builds the eventfn command tree.
func NewRoot(stdin io.Reader, stdout, stderr io.Writer, environ []string) *cobra.Command {
	g := &globalFlags{}
	root := &cobra.Command{
		Use:   "eventfn",
		Short: "Typed event handlers on Kafka with a transactional outbox and inbox",
		Long: `eventfn runs the handlers in handlers/ on Kafka. Each call runs in one SQL
transaction that also writes the events it emits (the outbox) and records the
event it handled (the inbox); a relay forwards the outbox to Kafka.

Without a subcommand it runs the runtime. With the default "local" profile it
needs no infrastructure: it starts an in-process Kafka-protocol broker and uses
SQLite, both under the data directory.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return run(cmd.Context(), g, stderr, environ)
		},
	}
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	pf := root.PersistentFlags()
	pf.StringVar(&g.profile, "profile", "", "configuration profile: "+fmt.Sprint(configs.Profiles())+" (env EVENTFN_PROFILE; default local)")
	pf.StringVar(&g.file, "config", "", "YAML file laid over the profile (env EVENTFN_CONFIG)")
	pf.StringVar(&g.dataDir, "data-dir", "", "directory for the embedded broker and SQLite (env EVENTFN_DATA_DIR)")
	pf.StringVar(&g.http, "http-addr", "", "HTTP listen address (env EVENTFN_HTTP_ADDR)")
	runCmd := &cobra.Command{
		Use:   "run",
		Short: "Run the runtime (the default command)",
		Long: `Run the runtime: the relay, and the handlers, every one or those --handlers
names. Each handler is its own consumer group, so replicas that run different
handlers share the work; every replica runs the relay.`,
		Example: `  eventfn run --handlers charge-payment,send-confirmation`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("handlers") && len(g.handlers) == 0 {
				return usageError("--handlers: name at least one handler (see `eventfn handlers`)")
			}
			return run(cmd.Context(), g, stderr, environ)
		},
	}
	runCmd.Flags().StringSliceVar(&g.handlers, "handlers", nil, "run only these handlers, comma-separated (env EVENTFN_RUN_HANDLERS; default all)")
	root.AddCommand(
		runCmd,
		newPublishCmd(g, stdin, stdout, stderr, environ),
		newHandlersCmd(g, stdout, stderr, environ),
		newReadyCmd(g, stdout, environ),
		newDLQCmd(g, stdout, environ),
		newNewCmd(stdout),
		newDevCmd(g, stdout, stderr, environ),
		newSchemaCmd(g, stdout, environ),
		newAsyncAPICmd(g, stdout, environ),
		newTopicsCmd(g, stdout, environ),
		newGroupsCmd(g, stdout, environ),
		newOutboxCmd(g, stdout, environ),
	)
	badInputExits2(root)
	return root
}

// badInputExits2 makes every error of the command line itself (a mistyped
// flag, a wrong number of arguments, a duration that is not positive) a
// usageError, exit code 2, as other bad input is; cobra returns them plain,
// and they exited 1, as a failure of the work would.
func badInputExits2(root *cobra.Command) {
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return ExitError{Code: 2, Err: err}
	})
	// cobra adds these while it executes, after the walk below: now, so
	// that the walk reaches them. Its help command prints the root's help
	// for a topic that does not exist, and exits 0.
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(_ *cobra.Command, args []string) error {
			cmd, rest, err := root.Find(args)
			if err != nil || len(rest) > 0 {
				return usageError("no help topic %q; the commands are listed by `eventfn help`", strings.Join(args, " "))
			}
			return cmd.Help()
		},
	})
	root.InitDefaultCompletionCmd()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error {
				if err := args(cmd, a); err != nil {
					return ExitError{Code: 2, Err: err}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	// Every duration flag is a timeout or a wait: zero or less would give up
	// at once and blame whatever it was waiting for.
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		var err error
		cmd.Flags().VisitAll(func(f *pflag.Flag) {
			if d, ok := f.Value.(interface{ Type() string }); ok && d.Type() == "duration" && err == nil {
				if v, perr := time.ParseDuration(f.Value.String()); perr == nil && v <= 0 {
					err = usageError("--%s %s: must be a positive duration such as %s", f.Name, f.Value, f.DefValue)
				}
			}
		})
		return err
	}
}

// load reads the configuration, with flags laid over everything else.
func (g *globalFlags) load(environ []string) (configs.Config, error) {
	overrides := map[string]any{}
	if g.dataDir != "" {
		overrides["data_dir"] = g.dataDir
	}
	if g.http != "" {
		overrides["http.addr"] = g.http
	}
	if len(g.handlers) > 0 {
		overrides["run.handlers"] = g.handlers
	}
	cfg, err := configs.Load(configs.Options{Profile: g.profile, File: g.file, Environ: environ, Overrides: overrides})
	if err != nil {
		return cfg, ExitError{Code: 2, Err: err}
	}
	return cfg, nil
}

// NewLogger builds the process logger the configuration asks for.
func NewLogger(cfg configs.Config, w io.Writer) *slog.Logger {
	level, _ := cfg.Log.SlogLevel()
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func run(ctx context.Context, g *globalFlags, stderr io.Writer, environ []string) error {
	cfg, err := g.load(environ)
	if err != nil {
		return err
	}
	logger := NewLogger(cfg, stderr)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	app, cleanup, err := wiring.BuildApp(ctx, wiring.BaseConfig(cfg), logger)
	if err != nil {
		return err
	}
	defer cleanup()
	go func() {
		// A second Ctrl-C while shutting down gives up at once.
		<-ctx.Done()
		stop()
	}()
	return app.Run(ctx)
}
