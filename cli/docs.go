package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/spf13/cobra"

	"github.com/eventfn/eventfn/handlers"
	"github.com/eventfn/eventfn/ingress"
	"github.com/eventfn/eventfn/internal/asyncapi"
)

func newSchemaCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "schema",
		Short: "Write the JSON Schema of every event type, taken from its Go type",
		Long: `Prints one JSON object, event type -> JSON Schema (draft 2020-12), or with --out
writes DIR/<event type>.schema.json per type. A field is required unless its json
tag says omitempty; a jsonschema struct tag adds rules (format=email, minLength=1).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			schemas, err := asyncapi.Schemas(handlers.Events())
			if err != nil {
				return err
			}
			if dir == "" {
				return writeJSON(stdout, schemas)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			types := make([]string, 0, len(schemas))
			for t := range schemas {
				types = append(types, t)
			}
			sort.Strings(types)
			for _, t := range types {
				raw, err := json.MarshalIndent(schemas[t], "", "  ")
				if err != nil {
					return err
				}
				path := filepath.Join(dir, t+".schema.json")
				if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
					return err
				}
				fmt.Fprintln(stdout, "wrote", path)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "out", "", "directory to write one file per event type into")
	return cmd
}

func newAsyncAPICmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "asyncapi",
		Short: "Write the AsyncAPI 3.0 document: topics, event types and who sends and receives them",
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
			doc, err := asyncapi.Document(cfg, infos, handlers.Events(), []asyncapi.Sender{{Name: "ingress", Sends: ingress.Sends()}})
			if err != nil {
				return err
			}
			if out == "" {
				_, err := stdout.Write(doc)
				return err
			}
			return os.WriteFile(out, doc, 0o644)
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "file to write instead of standard output")
	return cmd
}
