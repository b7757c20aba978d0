package main

import (
	"context"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNotesProgram builds the example and runs it as its own process: CI
// fails if embedding a hub with an App of one's own, as the example shows
// it, stops working.
func TestNotesProgram(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "notes")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("notes: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr.String())
	}
	want := `hub ready
alice stored a note
refused: rejected: alice may write only notes.alice
refused: rejected: a note is 1 to 140 bytes
bob caught up: notes.alice: buy milk
alice has written 1 note(s)
`
	if string(out) != want {
		t.Fatalf("notes printed:\n%s\nwant:\n%s", out, want)
	}
}

// TestNotesUsesOnlyPublicPackages: what the example imports from this
// module, a program outside it could import too.
func TestNotesUsesOnlyPublicPackages(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "main.go", nil, parser.ImportsOnly)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if strings.Contains(path, "/internal/") || strings.HasSuffix(path, "/internal") {
			t.Errorf("the example imports %s, which a program outside this module cannot", path)
		}
	}
}
