package hub

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// parseHub parses the package's non-test files.
func parseHub(t *testing.T) (*token.FileSet, map[string]*ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	files := map[string]*ast.File{}
	names, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		files[name] = f
	}
	return fset, files
}

// TestExportedAPIHasNoInternalTypes: an App outside this module can only
// be written if no exported declaration of package hub names a type from an
// internal package (Host.AddStream took an engine.StreamSpec, Host.Engine
// returned an *engine.Engine).
func TestExportedAPIHasNoInternalTypes(t *testing.T) {
	fset, files := parseHub(t)
	for name, f := range files {
		internal := map[string]string{} // local package name → import path
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if !strings.Contains(path, "/internal/") {
				continue
			}
			local := path[strings.LastIndex(path, "/")+1:]
			if imp.Name != nil {
				local = imp.Name.Name
			}
			internal[local] = path
		}
		if len(internal) == 0 {
			continue
		}
		check := func(what string, n ast.Node) {
			if n == nil {
				return
			}
			ast.Inspect(n, func(n ast.Node) bool {
				if sel, ok := n.(*ast.SelectorExpr); ok {
					if id, ok := sel.X.(*ast.Ident); ok && internal[id.Name] != "" {
						t.Errorf("%s: %s names %s.%s (%s)", fset.Position(sel.Pos()), what, id.Name, sel.Sel.Name, internal[id.Name])
					}
				}
				return true
			})
		}
		for _, d := range f.Decls {
			switch d := d.(type) {
			case *ast.FuncDecl:
				if !d.Name.IsExported() || (d.Recv != nil && !exportedRecv(d.Recv)) {
					continue
				}
				check(name+": func "+d.Name.Name, d.Type)
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch spec := spec.(type) {
					case *ast.TypeSpec:
						if spec.Name.IsExported() {
							checkType(check, name+": type "+spec.Name.Name, spec.Type)
						}
					case *ast.ValueSpec:
						for _, id := range spec.Names {
							if id.IsExported() {
								check(name+": "+id.Name, spec.Type)
								for _, v := range spec.Values {
									check(name+": "+id.Name, v)
								}
							}
						}
					}
				}
			}
		}
	}
}

// checkType checks the exported parts of a type: a struct's exported
// fields, an interface's methods, anything else whole.
func checkType(check func(string, ast.Node), what string, typ ast.Expr) {
	st, ok := typ.(*ast.StructType)
	if !ok {
		check(what, typ)
		return
	}
	for _, field := range st.Fields.List {
		for _, id := range field.Names {
			if id.IsExported() {
				check(what+"."+id.Name, field.Type)
			}
		}
		if len(field.Names) == 0 { // embedded: its methods are promoted
			check(what+" (embedded)", field.Type)
		}
	}
}

func exportedRecv(recv *ast.FieldList) bool {
	typ := recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	if idx, ok := typ.(*ast.IndexExpr); ok {
		typ = idx.X
	}
	id, ok := typ.(*ast.Ident)
	return ok && id.IsExported()
}

// TestDialectsUseTheSessionAPI: the dialects are translators onto the
// session API; they never reach into the router, the durables or a
// session's subscription tables (the classroom dialect used to, and hid a
// bug there).
func TestDialectsUseTheSessionAPI(t *testing.T) {
	forbidden := map[string]bool{
		// the router and the durables, and their state
		"router": true, "durables": true, "groups": true, "members": true, "inflight": true, "cond": true,
		// a session's subscription tables
		"live": true, "dur": true, "subMu": true, "nsubs": true,
		// the steps the session API takes, which a dialect must not take around it
		"runSubHooks": true, "runUnsubHooks": true, "runPubHooks": true, "publishChecked": true, "streamFor": true,
	}
	fset, files := parseHub(t)
	n := 0
	for name, f := range files {
		if name != "caps_dialect.go" && !strings.HasPrefix(name, "classroom") && !strings.HasPrefix(name, "text") {
			continue
		}
		n++
		ast.Inspect(f, func(node ast.Node) bool {
			sel, ok := node.(*ast.SelectorExpr)
			if !ok || !forbidden[sel.Sel.Name] {
				return true
			}
			t.Errorf("%s: a dialect uses %s: go through the session API (session_api.go)", fset.Position(sel.Pos()), sel.Sel.Name)
			return true
		})
	}
	if n < 3 {
		t.Fatalf("found %d dialect files", n)
	}
}
