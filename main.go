// Command eventfn runs typed event handlers on Kafka with a transactional outbox
// and inbox. `go run .` starts it with no infrastructure; see README.md.
package main

import (
	"context"
	"os"

	"github.com/eventfn/eventfn/cli"
)

func main() {
	restrictFileModes()
	os.Exit(cli.Main(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Environ()))
}
