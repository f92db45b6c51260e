package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/router"
	"github.com/eventfn/eventfn/store"
)

// dlqFlags are the selection every dlq command takes.
type dlqFlags struct {
	handler, eventType, reason string
	since, until               string
	ids                        []string
	asJSON                     bool
	timeout                    time.Duration
}

func (f *dlqFlags) register(cmd *cobra.Command, withIDs bool) {
	fs := cmd.Flags()
	fs.StringVar(&f.handler, "handler", "", "only dead letters of this handler")
	fs.StringVar(&f.eventType, "type", "", "only events of this type")
	fs.StringVar(&f.reason, "reason", "", "only dead letters whose reason contains this text")
	fs.StringVar(&f.since, "since", "", "only dead letters from this time on: RFC 3339 (2026-11-25T10:00:00Z) or a duration ago (2h)")
	fs.StringVar(&f.until, "until", "", "only dead letters before this time: RFC 3339 or a duration ago")
	fs.BoolVar(&f.asJSON, "json", false, "print JSON")
	fs.DurationVar(&f.timeout, "timeout", time.Minute, "give up after this long (reading the dead-letter topic, or waiting for another process's migration of the database)")
	if withIDs {
		fs.StringSliceVar(&f.ids, "id", nil, "only these dead letters (ids from dlq list; repeat or comma-separate)")
	}
}

func (f *dlqFlags) filter(now time.Time) (router.DeadLetterFilter, error) {
	out := router.DeadLetterFilter{Handler: f.handler, Type: f.eventType, Reason: f.reason, IDs: f.ids}
	var err error
	if out.Since, err = parseWhen("--since", f.since, now); err != nil {
		return out, err
	}
	if out.Until, err = parseWhen("--until", f.until, now); err != nil {
		return out, err
	}
	return out, nil
}

// parseWhen reads a time as RFC 3339 or as a duration before now.
func parseWhen(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, ExitError{Code: 2, Err: fmt.Errorf("%s %q: want an RFC 3339 time (2026-11-25T10:00:00Z) or a duration ago (90m, 2h)", flag, v)}
}

// openForDLQ loads the configuration and opens the database the dead-letter
// bookkeeping lives in. It starts no broker: the dead letters are read from
// the Kafka of kafka.brokers (the embedded one of a running `eventfn`).
func openForDLQ(ctx context.Context, g *globalFlags, environ []string, stderr io.Writer) (configs.Config, *store.DB, error) {
	cfg, err := g.load(environ)
	if err != nil {
		return cfg, nil, err
	}
	driver, err := cfg.Database.Driver()
	if err != nil {
		return cfg, nil, ExitError{Code: 2, Err: fmt.Errorf("database.url: %w", err)}
	}
	db, err := store.Open(ctx, store.Config{
		Driver: store.Driver(driver), SQLitePath: cfg.Database.SQLitePath(cfg.DataDir),
		URL: cfg.Database.URL, MaxOpenConns: 2,
		// Says so on stderr when another process is migrating the
		// database, instead of a silent wait up to --timeout.
		Logger: NewLogger(cfg, stderr).With("component", "store"),
	})
	if err != nil {
		return cfg, nil, err
	}
	return cfg, db, nil
}

func newDLQCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	dlq := &cobra.Command{
		Use:   "dlq",
		Short: "List, show and replay dead letters",
		Long: `Dead letters are the events a handler gave up on. They are selected by handler,
event type, reason and time, never by Kafka offsets; each has an id for show and
replay --id.`,
	}
	dlq.AddCommand(newDLQListCmd(g, stdout, environ), newDLQShowCmd(g, stdout, environ), newDLQReplayCmd(g, stdout, environ))
	return dlq
}

func newDLQListCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	f := &dlqFlags{}
	cmd := &cobra.Command{
		Use:   "list",
		Short: "One line per dead letter: when, handler, event type, key, attempts, reason, origin, replay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dls, err := selectDeadLetters(cmd.Context(), g, f, environ, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if f.asJSON {
				return writeJSON(stdout, withoutBodies(dls))
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tDEAD-LETTERED\tHANDLER\tEVENT TYPE\tKEY\tATTEMPTS\tORIGIN\tREPLAY\tREASON")
			for _, d := range dls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%q\t%d\t%s/%d/%d\t%s\t%s\n", d.ID, d.Time.Format(time.RFC3339), cell(d.Handler), cell(d.Type),
					d.Key, d.Attempts, cell(d.OriginTopic), d.OriginPartition, d.OriginOffset, replayText(d), oneLine(d.Reason, 120))
			}
			return tw.Flush()
		},
	}
	f.register(cmd, true)
	return cmd
}

func newDLQShowCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	f := &dlqFlags{}
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Print a dead letter's headers and payload",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f.ids = []string{args[0]}
			dls, err := selectDeadLetters(cmd.Context(), g, f, environ, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if len(dls) == 0 {
				return ExitError{Code: 1, Err: fmt.Errorf("no dead letter %s (ids come from `eventfn dlq list`)", args[0])}
			}
			d := dls[0]
			if f.asJSON {
				return writeJSON(stdout, struct {
					router.DeadLetter
					Payload string `json:"payload"`
				}{d, string(d.Payload)})
			}
			showDeadLetter(stdout, d)
			return nil
		},
	}
	f.register(cmd, false)
	return cmd
}

func newDLQReplayCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	f := &dlqFlags{}
	var again, dryRun bool
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Send the selected dead letters back to the handler that failed them",
		Long: `Replay sends each selected dead letter back to the topic it came from, with its
key, payload and CloudEvents id, through the outbox: a running eventfn forwards
it. Handlers that had processed the event find it in their inbox and do nothing;
the handler that failed runs it from attempt 1. Each dead letter is marked
replayed, so a second replay of the same selection sends nothing unless --again
is given. A selection is required: --handler, --type, --reason, --since,
--until or --id. A dead letter that is not the event as it was read (payload
truncated, headers cut or dropped to fit, a header that is not UTF-8) or is
older than retention.inbox is skipped, with the reason.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.handler == "" && f.eventType == "" && f.reason == "" && f.since == "" && f.until == "" && len(f.ids) == 0 {
				return ExitError{Code: 2, Err: errors.New("say what to replay: --handler, --type, --reason, --since, --until or --id")}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
			defer cancel()
			cfg, db, err := openForDLQ(ctx, g, environ, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			defer db.Close()
			filter, err := f.filter(time.Now())
			if err != nil {
				return err
			}
			dls, err := router.DeadLetters(ctx, cfg, db, filter)
			if err != nil {
				return err
			}
			// A mistyped id replays nothing rather than the rest quietly.
			for _, id := range f.ids {
				if !slices.ContainsFunc(dls, func(d router.DeadLetter) bool { return d.ID == id }) {
					return ExitError{Code: 1, Err: fmt.Errorf("no dead letter %s matches the selection (ids come from `eventfn dlq list`); nothing was replayed", id)}
				}
			}
			res, err := router.ReplayDeadLetters(ctx, cfg, db, dls, again, dryRun)
			verb := "replayed"
			if dryRun {
				verb = "would replay"
			}
			if f.asJSON {
				if jerr := writeJSON(stdout, map[string]any{"sent": withoutBodies(res.Sent), "skipped": res.Skipped, "dry_run": dryRun}); jerr != nil {
					return errors.Join(err, jerr)
				}
				return err
			}
			for _, d := range res.Sent {
				fmt.Fprintf(stdout, "%s %s: %s %s key=%q to %s\n", verb, d.ID, cell(d.Handler), cell(d.Type), d.Key, cell(d.OriginTopic))
			}
			for _, s := range res.Skipped {
				fmt.Fprintf(stdout, "skipped %s: %s\n", s.ID, cell(s.Why))
			}
			fmt.Fprintf(stdout, "%s %d, skipped %d of %d selected\n", verb, len(res.Sent), len(res.Skipped), len(dls))
			return err
		},
	}
	f.register(cmd, true)
	cmd.Flags().BoolVar(&again, "again", false, "also send dead letters replayed before")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be sent and send nothing")
	return cmd
}

func selectDeadLetters(ctx context.Context, g *globalFlags, f *dlqFlags, environ []string, stderr io.Writer) ([]router.DeadLetter, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	filter, err := f.filter(time.Now())
	if err != nil {
		return nil, err
	}
	cfg, db, err := openForDLQ(ctx, g, environ, stderr)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return router.DeadLetters(ctx, cfg, db, filter)
}

// showDeadLetter prints one dead letter for a person. Everything in it
// came from a producer: what is not printable text is quoted, header names
// too, so that no byte of a record reaches the terminal as a control
// sequence.
func showDeadLetter(w io.Writer, d router.DeadLetter) {
	fmt.Fprintf(w, "id: %s\ndead-lettered: %s\nhandler: %s\nreplay: %s\nheaders:\n", d.ID, d.Time.Format(time.RFC3339Nano), cell(d.Handler), replayText(d))
	keys := make([]string, 0, len(d.Headers))
	for k := range d.Headers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %s: %q\n", cell(k), d.Headers[k])
	}
	fmt.Fprintf(w, "key: %q\npayload (%d bytes):\n%s\n", d.Key, len(d.Payload), text(d.Payload))
}

func replayText(d router.DeadLetter) string {
	if d.Replay == nil {
		return "-"
	}
	return fmt.Sprintf("%s (%s, %dx)", d.Replay.Outcome, d.Replay.At.Format(time.RFC3339), d.Replay.Times)
}

// withoutBodies drops headers and payloads from a listing: show has them.
func withoutBodies(dls []router.DeadLetter) []router.DeadLetter {
	out := make([]router.DeadLetter, len(dls))
	for i, d := range dls {
		d.Headers = nil
		out[i] = d
	}
	return out
}

// oneLine folds s onto one line of at most limit bytes, cut at a rune.
// cell is s for a table cell: as it is when it is printable text, quoted
// otherwise, so a tab, a newline or a terminal escape in a header that came
// from any producer cannot break the table or the terminal.
func cell(s string) string {
	if printable(s, false) {
		return s
	}
	return strconv.Quote(s)
}

// text is a payload as it is when it is printable text (lines and tabs
// allowed), quoted otherwise.
func text(b []byte) string {
	if printable(string(b), true) {
		return string(b)
	}
	return strconv.Quote(string(b))
}

func printable(s string, lines bool) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i, r := range s {
		// A carriage return only ends a line (CRLF): alone, it would send
		// the terminal back over what was printed.
		crlf := r == '\r' && strings.HasPrefix(s[i+1:], "\n")
		if !unicode.IsPrint(r) && !(lines && (r == '\n' || r == '\t' || crlf)) {
			return false
		}
	}
	return true
}

// oneLine is s on one line of at most limit bytes, with every run of white
// space one space and anything else unprintable replaced.
func oneLine(s string, limit int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) || unicode.IsSpace(r) {
			return r
		}
		return utf8.RuneError
	}, strings.ToValidUTF8(s, string(utf8.RuneError)))
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
