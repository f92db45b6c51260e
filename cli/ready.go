package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// newReadyCmd asks a running eventfn whether it is ready: an exec probe for
// images without a shell or curl (the compose healthcheck uses it).
func newReadyCmd(g *globalFlags, stdout io.Writer, environ []string) *cobra.Command {
	return &cobra.Command{
		Use:   "ready",
		Short: "Exit 0 if the eventfn at http.addr answers /readyz with 200",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load(environ)
			if err != nil {
				return err
			}
			host, port, err := net.SplitHostPort(cfg.HTTP.Addr)
			if err != nil {
				return err
			}
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 4*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/readyz", nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return ExitError{Code: 1, Err: fmt.Errorf("not ready: %w", err)}
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if resp.StatusCode != http.StatusOK {
				return ExitError{Code: 1, Err: fmt.Errorf("not ready: %s", body)}
			}
			_, err = fmt.Fprintf(stdout, "%s", body)
			return err
		},
	}
}
