package router

import (
	"strings"
	"testing"

	"github.com/eventfn/eventfn/configs"
	"github.com/eventfn/eventfn/runtime"
)

// TestRunHandlersSelectsByName: run.handlers keeps the named handlers in
// their declared order, keeps all when empty, and refuses an unknown name
// naming the key, its variable and the known handlers.
func TestRunHandlersSelectsByName(t *testing.T) {
	hs := []runtime.Handler{handler("a", runtime.Policy{}), handler("b", runtime.Policy{}), handler("c", runtime.Policy{})}
	infos, err := Describe(configs.Config{}, hs)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		names   []string
		want    string
		wantErr string
	}{
		{nil, "a,b,c", ""},
		{[]string{"c", "a"}, "a,c", ""},
		{[]string{"b"}, "b", ""},
		{[]string{"a", "nope", "zz"}, "", `run.handlers (EVENTFN_RUN_HANDLERS): no handler "nope", "zz"; handlers are: a, b, c`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.names, ","), func(t *testing.T) {
			gotH, gotI, err := selectHandlers(c.names, hs, infos)
			if c.wantErr != "" {
				if err == nil || err.Error() != c.wantErr {
					t.Fatalf("err = %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for i, info := range gotI {
				if gotH[i].Name() != info.Name {
					t.Errorf("handler %d is %s, its info %s", i, gotH[i].Name(), info.Name)
				}
				names = append(names, info.Name)
			}
			if strings.Join(names, ",") != c.want {
				t.Errorf("selected %v, want %s", names, c.want)
			}
		})
	}
}
