// Package archtest checks eventfn's package boundaries: handler code sees only
// the runtime contract, and the contract knows nothing of the engine room.
package archtest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/eventfn/eventfn"

type pkg struct {
	ImportPath string
	Imports    []string
}

func listPackages(t *testing.T) map[string]pkg {
	t.Helper()
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p
	}
	return pkgs
}

func isStd(path string) bool { return !strings.Contains(strings.SplitN(path, "/", 2)[0], ".") }

func TestBoundaries(t *testing.T) {
	pkgs := listPackages(t)
	rules := []struct {
		pkg     string
		allowed func(imp string) bool
		why     string
	}{
		{"handlers", func(imp string) bool { return isStd(imp) || imp == module+"/runtime" },
			"handlers import only runtime/ (never Watermill, Sarama, router/ or wiring/)"},
		{"runtime", isStd, "runtime/ is the contract: standard library only"},
		{"eventfntest", func(imp string) bool {
			return !strings.HasPrefix(imp, module+"/wiring") && !strings.HasPrefix(imp, module+"/handlers") && !strings.HasPrefix(imp, module+"/cli")
		}, "eventfntest is imported by handler tests: it knows no handler, wiring or CLI"},
		{"router", func(imp string) bool {
			return !strings.HasPrefix(imp, module+"/wiring") && !strings.HasPrefix(imp, module+"/handlers") && !strings.HasPrefix(imp, module+"/cli")
		}, "router/ assembles Watermill and knows no handler or wiring"},
	}
	for _, r := range rules {
		p, ok := pkgs[module+"/"+r.pkg]
		if !ok {
			t.Fatalf("package %s not found", r.pkg)
		}
		for _, imp := range p.Imports {
			if !r.allowed(imp) {
				t.Errorf("%s imports %s: %s", r.pkg, imp, r.why)
			}
		}
	}
}
