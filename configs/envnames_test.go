package configs_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/eventfn/eventfn/configs"
)

// envRead matches an EVENTFN_* variable being read by a shell script
// (${EVENTFN_…}, $EVENTFN_…, export EVENTFN_…=) or by Go code
// (os.Getenv/LookupEnv("EVENTFN_…")), not merely mentioned.
var envRead = regexp.MustCompile(`\$\{?(EVENTFN_[A-Z0-9_]+)|export (EVENTFN_[A-Z0-9_]+)=|(?:Getenv|LookupEnv)\("(EVENTFN_[A-Z0-9_]+)"\)`)

// TestNoVariableOfTheRepositoryIsRefused: eventfn refuses an EVENTFN_* variable
// that configures nothing, so every variable the repository's own scripts and
// tests read must be let through, or eventfn started in the same shell (or by
// a test that passes os.Environ on) stops. ci/flakes.sh's EVENTFN_FLAKES_DIR
// was once missing from the allow-list.
func TestNoVariableOfTheRepositoryIsRefused(t *testing.T) {
	names := map[string][]string{}
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// State directories of ci/services.sh hold engines' files, not ours.
			if strings.HasPrefix(d.Name(), ".") && path != ".." {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, ".sh") && !strings.HasPrefix(path, filepath.Join("..", "ci")) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range envRead.FindAllStringSubmatch(string(b), -1) {
			for _, name := range m[1:] {
				if name != "" && !slices.Contains(names[name], path) {
					names[name] = append(names[name], path)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, must := range []string{"EVENTFN_SERVICES_DIR", "EVENTFN_TEST_KAFKA_BROKERS"} {
		if names[must] == nil {
			t.Fatalf("the scan found no reader of %s; it no longer sees the repository (found %v)", must, names)
		}
	}
	for name, where := range names {
		t.Run(name, func(t *testing.T) {
			_, err := configs.Load(configs.Options{Environ: []string{name + "=1"}})
			if err != nil && strings.Contains(err.Error(), name+" is not a configuration variable") {
				t.Fatalf("%s, read by %v, is refused: %v", name, where, err)
			}
		})
	}
}
