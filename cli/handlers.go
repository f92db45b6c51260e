package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/eventfn/eventfn/handlers"
)

func newHandlersCmd(g *globalFlags, stdout, stderr io.Writer, environ []string) *cobra.Command {
	asJSON := false
	cmd := &cobra.Command{
		Use:   "handlers",
		Short: "List the handlers: name, input event type and topic, consumer group, events emitted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(environ)
			if err != nil {
				return err
			}
			infos, err := describeHandlers(cfg)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(stdout, infos)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "HANDLER\tEVENT TYPE\tTOPIC\tCONSUMER GROUP\tEMITS\tRETRIES\tTIMEOUT\tCONCURRENCY")
			for _, i := range infos {
				emits := strings.Join(i.Emits, ", ")
				if emits == "" {
					emits = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%d\n", i.Name, i.Trigger, i.Topic, i.Group, emits,
					i.Policy.MaxRetries, i.Policy.Timeout, i.Policy.Concurrency)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			var types []string
			for _, e := range handlers.Events() {
				types = append(types, e.Type)
			}
			_, err = fmt.Fprintf(stdout, "\nevent types: %s\ndead-letter topic: %s\n", strings.Join(types, ", "), cfg.Kafka.Topic(cfg.Kafka.DeadLetterTopic))
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
