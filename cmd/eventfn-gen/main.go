// Command eventfn-gen writes registry_gen.go for a handlers package. It runs from
// `go generate ./...` (see handlers/doc.go).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/eventfn/eventfn/internal/registrygen"
)

func main() {
	dir := flag.String("dir", ".", "the handlers package directory")
	flag.Parse()
	if err := registrygen.Write(*dir); err != nil {
		fmt.Fprintln(os.Stderr, "eventfn-gen:", err)
		os.Exit(1)
	}
}
