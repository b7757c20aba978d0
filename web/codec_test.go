package web_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCapsJSCodecAgainstSpec runs web/testdata/codec.mjs with node: caps.js
// decodes and re-encodes every hex example of docs/PROTOCOL.md byte for byte.
func TestCapsJSCodecAgainstSpec(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: skipping the caps.js codec test (.ci/run installs it)")
	}
	out, err := exec.Command(node, filepath.Join("testdata", "codec.mjs"), filepath.Join("..", "docs", "PROTOCOL.md")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"ok":true`) {
		t.Fatalf("codec.mjs: %v\n%s", err, out)
	}
	t.Logf("%s", strings.TrimSpace(string(out)))
}
