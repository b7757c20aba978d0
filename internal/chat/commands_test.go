package chat

import (
	"strings"
	"testing"
)

// TestCommandTable: every name of every command finds that command, none
// is claimed twice, and /help, made from the same table, shows each usage.
func TestCommandTable(t *testing.T) {
	seen := map[string]string{}
	help := Help()
	for _, cmd := range commands() {
		for _, name := range cmd.names {
			if other, dup := seen[name]; dup {
				t.Errorf("/%s names both %s and %s", name, other, cmd.usage)
			}
			seen[name] = cmd.usage
			if got, ok := lookup(strings.ToUpper(name)); !ok || got.usage != cmd.usage {
				t.Errorf("/%s finds %q, want %q", name, got.usage, cmd.usage)
			}
		}
		if !strings.Contains(help, cmd.usage+" ") {
			t.Errorf("/help does not show %q", cmd.usage)
		}
	}
	if _, ok := lookup("frobnicate"); ok {
		t.Error("an unknown command was found")
	}
}
