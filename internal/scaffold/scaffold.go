// Package scaffold writes a new handler and its test into handlers/, following
// the README's pattern: `eventfn new handler`.
package scaffold

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"text/template"
	"unicode"
)

// Spec is what to write.
type Spec struct {
	// Name is the handler's name (its consumer group): refund-payment.
	Name string
	// On is the event type it consumes; Emits the types it may emit.
	On    string
	Emits []string
}

// Event is an event type of the handlers package.
type Event struct {
	Type, Go string
	Keyed    bool
	New      bool    // written by this scaffold
	Fields   []field // of an existing type, for an example value
}

type field struct {
	Go, JSON, Kind string // Kind: string, int, float, bool, other
}

// Package is what the handlers directory declares.
type Package struct {
	Events   map[string]*Event // by event type
	Handlers map[string]bool   // by handler name
	goNames  map[string]bool
}

// Scan reads the event types and handler names declared in dir.
func Scan(dir string) (*Package, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	p := &Package{Events: map[string]*Event{}, Handlers: map[string]bool{}, goNames: map[string]bool{}}
	fset := token.NewFileSet()
	structs := map[string]*ast.StructType{}
	keyed := map[string]bool{}
	types := map[string]string{} // Go name -> event type
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.TypeSpec:
				p.goNames[n.Name.Name] = true
				if st, ok := n.Type.(*ast.StructType); ok {
					structs[n.Name.Name] = st
				}
			case *ast.FuncDecl:
				p.goNames[n.Name.Name] = n.Recv == nil || p.goNames[n.Name.Name]
				if n.Recv == nil || len(n.Recv.List) != 1 {
					return true
				}
				recv, ok := n.Recv.List[0].Type.(*ast.Ident)
				if !ok {
					return true
				}
				switch n.Name.Name {
				case "EventType":
					if lit := returnedString(n); lit != "" {
						types[recv.Name] = lit
					}
				case "EventKey":
					keyed[recv.Name] = true
				}
			case *ast.CallExpr:
				if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewHandler" && len(n.Args) > 0 {
					if lit, ok := n.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						if name, err := strconv.Unquote(lit.Value); err == nil {
							p.Handlers[name] = true
						}
					}
				}
			}
			return true
		})
	}
	for goName, typ := range types {
		ev := &Event{Type: typ, Go: goName, Keyed: keyed[goName]}
		if st := structs[goName]; st != nil {
			ev.Fields = fieldsOf(st)
		}
		p.Events[typ] = ev
	}
	return p, nil
}

func returnedString(fn *ast.FuncDecl) string {
	if fn.Body == nil || len(fn.Body.List) != 1 {
		return ""
	}
	ret, ok := fn.Body.List[0].(*ast.ReturnStmt)
	if !ok || len(ret.Results) != 1 {
		return ""
	}
	lit, ok := ret.Results[0].(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return ""
	}
	s, err := strconv.Unquote(lit.Value)
	if err != nil {
		return ""
	}
	return s
}

func fieldsOf(st *ast.StructType) []field {
	var out []field
	for _, f := range st.Fields.List {
		if len(f.Names) != 1 || !f.Names[0].IsExported() {
			continue
		}
		tag := ""
		if f.Tag != nil {
			raw, _ := strconv.Unquote(f.Tag.Value)
			tag, _, _ = strings.Cut(reflect.StructTag(raw).Get("json"), ",")
		}
		if tag == "-" {
			continue
		}
		if tag == "" {
			tag = f.Names[0].Name
		}
		kind := "other"
		if id, ok := f.Type.(*ast.Ident); ok {
			switch {
			case id.Name == "string":
				kind = "string"
			case id.Name == "bool":
				kind = "bool"
			case strings.HasPrefix(id.Name, "int") || strings.HasPrefix(id.Name, "uint"):
				kind = "int"
			case strings.HasPrefix(id.Name, "float"):
				kind = "float"
			}
		}
		out = append(out, field{Go: f.Names[0].Name, JSON: tag, Kind: kind})
	}
	return out
}

// example is a value of each simple field, as Go source and as JSON: a
// string that looks like what its name says (an email address, an id), 1, true.
func (e *Event) example() (goSrc string, jsonVal []byte) {
	var lits []string
	obj := map[string]any{}
	for _, f := range e.Fields {
		var v any
		switch f.Kind {
		case "string":
			s := "example-" + strings.ReplaceAll(f.JSON, "_", "-")
			if strings.Contains(strings.ToLower(f.Go), "email") {
				s = "someone@example.com"
			}
			v = s
		case "int":
			v = 1
		case "float":
			v = 1.5
		case "bool":
			v = true
		default:
			continue
		}
		obj[f.JSON] = v
		lits = append(lits, fmt.Sprintf("%s: %#v", f.Go, v))
	}
	raw, _ := json.Marshal(obj)
	return strings.Join(lits, ", "), raw
}

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
var typePattern = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9._-]{0,200}$`)

// GoName turns refund-payment or refund.requested into RefundPayment,
// RefundRequested.
func GoName(s string) string {
	var b strings.Builder
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' || r == '_' }) {
		r := []rune(part)
		r[0] = unicode.ToUpper(r[0])
		b.WriteString(string(r))
	}
	return b.String()
}

// Checker validates a JSON payload as an event of an existing type.
type Checker func(eventType string, payload []byte) error

// Write writes the handler and its test into dir and returns their paths.
// check validates the example event the test delivers, when the handler
// consumes an existing type.
func Write(dir string, s Spec, check Checker) ([]string, error) {
	if !namePattern.MatchString(s.Name) {
		return nil, fmt.Errorf("handler name %q: use lower-case letters, digits and '-', starting with a letter", s.Name)
	}
	p, err := Scan(dir)
	if err != nil {
		return nil, err
	}
	if p.Handlers[s.Name] {
		return nil, fmt.Errorf("a handler named %s exists already in %s", s.Name, dir)
	}
	fn := GoName(s.Name)
	if p.goNames[fn] {
		return nil, fmt.Errorf("%s declares %s already; choose another handler name", dir, fn)
	}
	base := strings.ReplaceAll(s.Name, "-", "_")
	files := []string{filepath.Join(dir, base+".go"), filepath.Join(dir, base+"_test.go")}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			return nil, fmt.Errorf("%s exists already", f)
		}
	}
	event := func(typ string) (*Event, error) {
		if !typePattern.MatchString(typ) {
			return nil, fmt.Errorf("event type %q: use letters, digits, '.', '_' and '-', starting with a letter (it is also a Kafka topic)", typ)
		}
		if ev, ok := p.Events[typ]; ok {
			return ev, nil
		}
		g := GoName(typ)
		if p.goNames[g] {
			return nil, fmt.Errorf("event type %s would be the Go type %s, which %s declares for something else", typ, g, dir)
		}
		ev := &Event{Type: typ, Go: g, Keyed: true, New: true}
		p.Events[typ] = ev
		p.goNames[g] = true
		return ev, nil
	}
	on, err := event(s.On)
	if err != nil {
		return nil, fmt.Errorf("--on: %w", err)
	}
	data := struct {
		Name, Func string
		On         *Event
		Emits      []*Event
		NewTypes   []*Event
		KeyExpr    string
		Example    string
		NewEmits   []string
	}{Name: s.Name, Func: fn, On: on, KeyExpr: `""`}
	if on.New {
		data.NewTypes = append(data.NewTypes, on)
	}
	seen := map[string]bool{}
	for _, typ := range s.Emits {
		if seen[typ] {
			continue
		}
		seen[typ] = true
		ev, err := event(typ)
		if err != nil {
			return nil, fmt.Errorf("--emits: %w", err)
		}
		if ev == on {
			return nil, fmt.Errorf("--emits %s: a handler that emits the type it consumes runs forever", typ)
		}
		data.Emits = append(data.Emits, ev)
		if ev.New {
			data.NewTypes = append(data.NewTypes, ev)
			data.NewEmits = append(data.NewEmits, ev.Type)
		}
	}
	if on.Keyed {
		data.KeyExpr = "ev.EventKey()"
	}
	if on.New {
		data.Example = `ID: "1"`
	} else {
		src, raw := on.example()
		if check != nil {
			if err := check(on.Type, raw); err != nil {
				return nil, fmt.Errorf("--on %s: the example the test would deliver, %s, is not a valid %s (%v); write the test's event by hand, or consume a new type", on.Type, raw, on.Type, err)
			}
		}
		data.Example = src
	}
	for i, tmpl := range []*template.Template{handlerTmpl, testTmpl} {
		var b bytes.Buffer
		if err := tmpl.Execute(&b, data); err != nil {
			return nil, err
		}
		src, err := format.Source(b.Bytes())
		if err != nil {
			return nil, fmt.Errorf("format %s: %w\n%s", files[i], err, b.String())
		}
		if err := os.WriteFile(files[i], src, 0o644); err != nil {
			return nil, errors.Join(err, os.Remove(files[0]))
		}
	}
	return files, nil
}

var handlerTmpl = template.Must(template.New("handler").Parse(`package handlers

import (
	"context"

	"github.com/eventfn/eventfn/runtime"
)
{{range .NewTypes}}
// {{.Go}} is the {{.Type}} event. Add the fields it carries; the json tags
// name them on the wire.
type {{.Go}} struct {
	ID string ` + "`json:\"id\"`" + `
}

func ({{.Go}}) EventType() string  { return "{{.Type}}" } // also its Kafka topic
func (e {{.Go}}) EventKey() string { return e.ID }          // Kafka key: one key's events stay in order
{{end}}
// {{.Func}} handles {{.On.Type}}.
func {{.Func}}() runtime.Handler {
	return runtime.NewHandler("{{.Name}}",
		func(ctx context.Context, tx runtime.Tx, ev {{.On.Go}}) error {
			// Write the effect with tx.ExecContext, or with tx.Queue when you do
			// not need its result (it then travels with the commit, one round
			// trip fewer): it commits together with the events emitted here,
			// and the inbox keeps a redelivery of ev from repeating it.
{{- range .Emits}}
{{- if .New}}
			if err := tx.Emit(ctx, {{.Go}}{ID: {{$.KeyExpr}}}); err != nil {
				return err
			}
{{- else}}
			// Emit {{.Type}} with tx.Emit(ctx, {{.Go}}{...}) once you know its fields.
{{- end}}
{{- end}}
			return nil
		},
{{- if .Emits}}
		runtime.Emits({{range $i, $e := .Emits}}{{if $i}}, {{end}}{{$e.Go}}{}{{end}}),
{{- end}}
	)
}
`))

var testTmpl = template.Must(template.New("test").Parse(`package handlers_test

import (
	"slices"
	"testing"

	"github.com/eventfn/eventfn/eventfntest"
	"github.com/eventfn/eventfn/handlers"
)

func Test{{.Func}}(t *testing.T) {
	env := eventfntest.New(t)
	ev := eventfntest.EventOf(t, handlers.{{.On.Go}}{ {{- .Example -}} })
	res := env.Deliver(t, handlers.{{.Func}}(), ev)
	if res.Err != nil {
		t.Fatalf("{{.Name}} failed: %v", res.Err)
	}
	var emitted []string
	for _, e := range res.Emitted {
		emitted = append(emitted, e.Type)
	}
	if want := []string{ {{- range $i, $t := .NewEmits}}{{if $i}}, {{end}}"{{$t}}"{{end -}} }; !slices.Equal(emitted, want) {
		t.Errorf("emitted %v, want %v", emitted, want)
	}
	// Kafka may deliver the event again: the inbox has it, and the handler
	// does not run twice.
	if again := env.Deliver(t, handlers.{{.Func}}(), ev); !again.Duplicate {
		t.Error("a redelivery ran the handler again")
	}
}
`))
