// Package registrygen writes the handler registry of a handlers package: it
// finds every exported function that returns runtime.Handler and every type with
// an EventType method, and generates Registry (a Wire provider of all handlers)
// and Events (the specs of all event types). A new handler file is picked up
// without editing any other file.
package registrygen

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/format"
	"go/parser"
	"go/printer"
	"go/token"
	"go/types"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

// RuntimeImport is the import path of eventfn's runtime package.
const RuntimeImport = "github.com/eventfn/eventfn/runtime"

// OutputFile is the name of the generated file.
const OutputFile = "registry_gen.go"

type param struct {
	typ  string // as written in the handlers package
	name string
}

type constructor struct {
	name   string
	params []string // types, as written
	pos    token.Position
}

// Generate returns the registry source for the handlers package in dir.
func Generate(dir string) ([]byte, error) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return nil, err
	}
	var pkgName string
	var ctors []constructor
	var events []string
	imports := map[string]string{} // local name -> path, for parameter types
	for _, path := range files {
		base := filepath.Base(path)
		if strings.HasSuffix(base, "_test.go") || base == OutputFile {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		if pkgName == "" {
			pkgName = f.Name.Name
		} else if pkgName != f.Name.Name {
			return nil, fmt.Errorf("%s: package %s, but other files are package %s", path, f.Name.Name, pkgName)
		}
		fileImports := map[string]string{}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			name := filepath.Base(p)
			if imp.Name != nil {
				name = imp.Name.Name
			}
			fileImports[name] = p
		}
		runtimeName := ""
		for name, p := range fileImports {
			if p == RuntimeImport {
				runtimeName = name
			}
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok {
				continue
			}
			if fn.Recv != nil {
				if fn.Name.Name == "EventType" && isStringMethod(fn) {
					if t := receiverType(fn); t != "" && ast.IsExported(t) {
						events = append(events, t)
					}
					// Skipped without a word, it failed later, in the
					// AsyncAPI step ("has no Go type in handlers/").
					if t := pointerReceiverType(fn); t != "" && ast.IsExported(t) {
						return nil, fmt.Errorf("%s: EventType of %s has a pointer receiver: declare it on the value, func (%s) EventType() string: events are values (runtime.SpecOf, NewHandler)",
							fset.Position(fn.Pos()), t, t)
					}
				}
				continue
			}
			if !fn.Name.IsExported() || runtimeName == "" || !returnsHandler(fn, runtimeName) {
				continue
			}
			if fn.Type.TypeParams != nil {
				return nil, fmt.Errorf("%s: handler constructor %s must not be generic", fset.Position(fn.Pos()), fn.Name.Name)
			}
			c := constructor{name: fn.Name.Name, pos: fset.Position(fn.Pos())}
			for _, field := range fn.Type.Params.List {
				typ, err := typeString(fset, field.Type, fileImports, imports)
				if err != nil {
					return nil, fmt.Errorf("%s: %s: %w", fset.Position(field.Pos()), fn.Name.Name, err)
				}
				n := len(field.Names)
				if n == 0 {
					n = 1
				}
				for i := 0; i < n; i++ {
					c.params = append(c.params, typ)
				}
			}
			ctors = append(ctors, c)
		}
	}
	if pkgName == "" {
		return nil, fmt.Errorf("no Go files in %s", dir)
	}
	sort.Slice(ctors, func(i, j int) bool { return ctors[i].name < ctors[j].name })
	sort.Strings(events)
	return render(pkgName, ctors, events, imports)
}

func isStringMethod(fn *ast.FuncDecl) bool {
	if len(fn.Type.Params.List) != 0 || fn.Type.Results == nil || len(fn.Type.Results.List) != 1 {
		return false
	}
	id, ok := fn.Type.Results.List[0].Type.(*ast.Ident)
	return ok && id.Name == "string"
}

// receiverType returns T for a value receiver of type T. Pointer receivers are
// skipped: runtime.SpecOf needs the value type to be the Event.
func receiverType(fn *ast.FuncDecl) string {
	if len(fn.Recv.List) != 1 {
		return ""
	}
	if id, ok := fn.Recv.List[0].Type.(*ast.Ident); ok {
		return id.Name
	}
	return ""
}

// pointerReceiverType returns T for a receiver of type *T.
func pointerReceiverType(fn *ast.FuncDecl) string {
	if len(fn.Recv.List) != 1 {
		return ""
	}
	if star, ok := fn.Recv.List[0].Type.(*ast.StarExpr); ok {
		if id, ok := star.X.(*ast.Ident); ok {
			return id.Name
		}
	}
	return ""
}

func returnsHandler(fn *ast.FuncDecl, runtimeName string) bool {
	if fn.Type.Results == nil || len(fn.Type.Results.List) != 1 || len(fn.Type.Results.List[0].Names) > 1 {
		return false
	}
	sel, ok := fn.Type.Results.List[0].Type.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	x, ok := sel.X.(*ast.Ident)
	return ok && x.Name == runtimeName && sel.Sel.Name == "Handler"
}

// typeString prints a parameter type and records the imports it uses.
func typeString(fset *token.FileSet, expr ast.Expr, fileImports, used map[string]string) (string, error) {
	var err error
	ast.Inspect(expr, func(n ast.Node) bool {
		sel, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		x, ok := sel.X.(*ast.Ident)
		if !ok {
			return true
		}
		p, ok := fileImports[x.Name]
		if !ok {
			err = fmt.Errorf("type %s: package %s is not imported", x.Name+"."+sel.Sel.Name, x.Name)
			return false
		}
		if prev, ok := used[x.Name]; ok && prev != p {
			err = fmt.Errorf("import name %s means %s here and %s elsewhere; rename one", x.Name, p, prev)
			return false
		}
		used[x.Name] = p
		return false
	})
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	if err := printer.Fprint(&buf, fset, expr); err != nil {
		return "", err
	}
	return buf.String(), nil
}

func render(pkg string, ctors []constructor, events []string, imports map[string]string) ([]byte, error) {
	// One Registry parameter per distinct type, named after the type, but
	// never a keyword (*sync.Map gave map), a predeclared name, or a package
	// Registry's body uses (a port type named Runtime gave a parameter
	// runtime, and the body's runtime.Handler no longer compiled).
	var params []param
	byType := map[string]string{}
	taken := map[string]bool{"ctx": true, "runtime": true}
	for n := range imports {
		taken[n] = true
	}
	free := func(name string) bool {
		return !taken[name] && !token.IsKeyword(name) && types.Universe.Lookup(name) == nil
	}
	for _, c := range ctors {
		for _, t := range c.params {
			if _, ok := byType[t]; ok {
				continue
			}
			name := paramName(t)
			for i := 2; !free(name); i++ {
				name = paramName(t) + strconv.Itoa(i)
			}
			taken[name] = true
			byType[t] = name
			typ := t
			if rest, ok := strings.CutPrefix(t, "..."); ok {
				// Registry cannot take a variadic parameter beside others:
				// it takes the slice and spreads it in the call.
				typ = "[]" + rest
			}
			params = append(params, param{typ: typ, name: name})
		}
	}
	var b bytes.Buffer
	b.WriteString("// Code generated by eventfn-gen from the handlers in this package. DO NOT EDIT.\n")
	b.WriteString("// Run `go generate ./...` after adding, removing or changing a handler.\n\n")
	fmt.Fprintf(&b, "package %s\n\nimport (\n", pkg)
	names := make([]string, 0, len(imports))
	for n := range imports {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(&b, "\t%q\n", RuntimeImport)
	for _, n := range names {
		if imports[n] == RuntimeImport {
			continue
		}
		if filepath.Base(imports[n]) == n {
			fmt.Fprintf(&b, "\t%q\n", imports[n])
		} else {
			fmt.Fprintf(&b, "\t%s %q\n", n, imports[n])
		}
	}
	b.WriteString(")\n\n")
	b.WriteString("// Registry builds every handler of this package. It is a Wire provider: its\n")
	b.WriteString("// parameters are the dependencies the handler constructors ask for.\n")
	b.WriteString("func Registry(")
	for i, p := range params {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %s", p.name, p.typ)
	}
	b.WriteString(") []runtime.Handler {\n\treturn []runtime.Handler{\n")
	for _, c := range ctors {
		args := make([]string, len(c.params))
		for i, t := range c.params {
			args[i] = byType[t]
			if strings.HasPrefix(t, "...") {
				args[i] += "..."
			}
		}
		fmt.Fprintf(&b, "\t\t%s(%s),\n", c.name, strings.Join(args, ", "))
	}
	b.WriteString("\t}\n}\n\n")
	b.WriteString("// Events describes every event type of this package, so tools can check a\n")
	b.WriteString("// payload before publishing it.\n")
	b.WriteString("func Events() []runtime.EventSpec {\n\treturn []runtime.EventSpec{\n")
	for _, e := range events {
		fmt.Fprintf(&b, "\t\truntime.SpecOf[%s](),\n", e)
	}
	b.WriteString("\t}\n}\n")
	out, err := format.Source(b.Bytes())
	if err != nil {
		return nil, fmt.Errorf("format generated registry: %w\n%s", err, b.String())
	}
	return out, nil
}

// paramName turns a type such as *slog.Logger or PaymentGateway into logger or paymentGateway.
func paramName(typ string) string {
	t := strings.TrimLeft(typ, "*[]")
	if i := strings.LastIndex(t, "."); i >= 0 {
		t = t[i+1:]
	}
	var clean []rune
	for _, r := range t {
		// Not a digit first: [32]byte would give 32byte.
		if unicode.IsLetter(r) || (len(clean) > 0 && unicode.IsDigit(r)) {
			clean = append(clean, r)
		}
	}
	if len(clean) == 0 {
		return "dep"
	}
	clean[0] = unicode.ToLower(clean[0])
	return string(clean)
}

// Write regenerates the registry file in dir.
func Write(dir string) error {
	src, err := Generate(dir)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, OutputFile), src, 0o644)
}
