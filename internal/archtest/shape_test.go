package archtest

import (
	"cmp"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// root is the module's root, from this package's directory.
const root = "../.."

// Limits of a production function's parameter list (issue 13 §2): past
// them, values of the same type line up by position and a call site can
// swap them silently; an options struct names each one.
const (
	maxParams = 5
	maxBools  = 2
)

// production lists the trees holding the shipped binary's code.
var production = []string{"cmd", "internal", "pkg"}

// notProduction are support trees under internal/ that the reencrypt
// binary does not link (the depguard rule forbids importing them from
// non-test code): the test bed, the KMS fault proxy, the seeder and the
// fixtures of tests, bench and demo, and the build tools (mkimage,
// testsum). Their functions are helpers of tests and dev scripts.
var notProduction = []string{
	"internal/testbed",
	"internal/kmsfault",
	"internal/seed",
	"internal/fixture",
	"internal/tools",
}

// TestParameterLists fails naming each production function or method with
// more than maxParams parameters or more than maxBools bool parameters.
// Each name counts; receivers do not. Function literals, interface methods
// and function types are held to the same limits.
func TestParameterLists(t *testing.T) {
	fset := token.NewFileSet()
	for _, file := range productionFiles(t) {
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		names := map[*ast.FuncType]string{}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.FuncDecl:
				names[n.Type] = funcName(n)
			case *ast.FuncLit:
				names[n.Type] = "func literal"
			case *ast.TypeSpec:
				if ft, ok := n.Type.(*ast.FuncType); ok {
					names[ft] = "func type " + n.Name.Name
				}
			case *ast.InterfaceType:
				for _, m := range n.Methods.List {
					if ft, ok := m.Type.(*ast.FuncType); ok && len(m.Names) > 0 {
						names[ft] = "interface method " + m.Names[0].Name
					}
				}
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			typ, ok := n.(*ast.FuncType)
			if !ok {
				return true
			}
			params, bools := countParams(typ)
			if params > maxParams || bools > maxBools {
				t.Errorf("%s: %s takes %d parameters, %d of them bool (at most %d, and %d bools): use an options struct",
					fset.Position(typ.Pos()), cmp.Or(names[typ], "func type"), params, bools, maxParams, maxBools)
			}
			return true
		})
	}
}

// TestBatchDurationLiterals fails on a duration written inline in a
// function of package batch (5 * time.Second, time.Millisecond*200,
// time.Minute): the engine's timeouts and waits are named constants at
// package level, each with a comment saying why it is that long (issue 13
// §2), so that they can be found and tuned in one place.
func TestBatchDurationLiterals(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(root, "pkg", "batch", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			// A package-level const block is the allowed place; a var
			// or a function is not.
			if g, ok := decl.(*ast.GenDecl); ok && g.Tok == token.CONST {
				continue
			}
			ast.Inspect(decl, func(n ast.Node) bool {
				if unit, ok := timeUnit(n); ok {
					t.Errorf("%s: duration literal (time.%s) outside a package-level constant", fset.Position(n.Pos()), unit)
				}
				return true
			})
		}
	}
}

// productionFiles lists the non-test .go files of the production trees.
func productionFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, dir := range production {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			rel = filepath.ToSlash(rel)
			if d.IsDir() {
				if slices.Contains(notProduction, rel) || d.Name() == "testdata" {
					return filepath.SkipDir
				}
				return nil
			}
			if strings.HasSuffix(rel, ".go") && !strings.HasSuffix(rel, "_test.go") {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(files) == 0 {
		t.Fatal("no production files found: is root right?")
	}
	return files
}

func funcName(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	recv := fn.Recv.List[0].Type
	if s, ok := recv.(*ast.StarExpr); ok {
		recv = s.X
	}
	switch r := recv.(type) {
	case *ast.IndexExpr: // generic receiver T[P]
		recv = r.X
	case *ast.IndexListExpr:
		recv = r.X
	}
	if id, ok := recv.(*ast.Ident); ok {
		return fmt.Sprintf("(%s).%s", id.Name, fn.Name.Name)
	}
	return fn.Name.Name
}

// countParams counts the parameters of a function type, each name once
// (a, b int is two), and those of type bool.
func countParams(typ *ast.FuncType) (params, bools int) {
	if typ.Params == nil {
		return 0, 0
	}
	for _, field := range typ.Params.List {
		n := max(len(field.Names), 1)
		params += n
		if id, ok := field.Type.(*ast.Ident); ok && id.Name == "bool" {
			bools += n
		}
	}
	return params, bools
}

var timeUnits = []string{"Nanosecond", "Microsecond", "Millisecond", "Second", "Minute", "Hour"}

// timeUnit reports a reference to one of package time's unit constants,
// or a conversion of a number to a duration (time.Duration(500)).
func timeUnit(n ast.Node) (string, bool) {
	if call, ok := n.(*ast.CallExpr); ok && len(call.Args) == 1 {
		if _, lit := call.Args[0].(*ast.BasicLit); lit && isTimeSel(call.Fun, "Duration") {
			return "Duration", true
		}
	}
	sel, ok := n.(*ast.SelectorExpr)
	if !ok {
		return "", false
	}
	pkg, ok := sel.X.(*ast.Ident)
	if !ok || pkg.Name != "time" || !slices.Contains(timeUnits, sel.Sel.Name) {
		return "", false
	}
	return sel.Sel.Name, true
}

func isTimeSel(e ast.Expr, name string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	return ok && pkg.Name == "time" && sel.Sel.Name == name
}
