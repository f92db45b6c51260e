package cli

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/eventfn/eventfn/handlers"
	"github.com/eventfn/eventfn/internal/scaffold"
)

func newNewCmd(stdout io.Writer) *cobra.Command {
	n := &cobra.Command{Use: "new", Short: "Write new code from a pattern"}
	var (
		on, dir string
		emits   []string
	)
	h := &cobra.Command{
		Use:   "handler NAME --on EVENT.TYPE [--emits EVENT.TYPE]...",
		Short: "Write handlers/NAME.go and its test, following the README's pattern",
		Long: `Writes a handler that consumes --on and may emit each --emits, and a test of it
with eventfntest. An event type that does not exist yet is declared in the
handler's file, with an id field that is also its key. The code compiles and the
test passes as written; run go generate ./... to register the handler.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if on == "" {
				return ExitError{Code: 2, Err: fmt.Errorf("--on names the event type the handler consumes")}
			}
			check := func(eventType string, payload []byte) error {
				for _, spec := range handlers.Events() {
					if spec.Type == eventType {
						return spec.Check(payload)
					}
				}
				return nil
			}
			files, err := scaffold.Write(dir, scaffold.Spec{Name: args[0], On: on, Emits: emits}, check)
			if err != nil {
				return ExitError{Code: 2, Err: err}
			}
			for _, f := range files {
				fmt.Fprintln(stdout, "wrote", f)
			}
			fmt.Fprintln(stdout, "next: go generate ./... && go test ./handlers/")
			return nil
		},
	}
	h.Flags().StringVar(&on, "on", "", "the event type the handler consumes")
	h.Flags().StringSliceVar(&emits, "emits", nil, "an event type the handler may emit (repeat or comma-separate)")
	h.Flags().StringVar(&dir, "dir", "handlers", "the handlers directory")
	n.AddCommand(h)
	return n
}
