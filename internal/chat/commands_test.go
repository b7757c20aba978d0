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

// TestAtCommandTable: the classroom's @ commands, as text clients type
// them, each found by every name, none twice, all in a text client's help
// beside the slash commands.
func TestAtCommandTable(t *testing.T) {
	seen := map[string]string{}
	help := textHelp()
	for _, cmd := range atCommands() {
		for _, name := range cmd.names {
			if other, dup := seen[name]; dup {
				t.Errorf("@%s names both %s and %s", name, other, cmd.usage)
			}
			seen[name] = cmd.usage
			if got, ok := find(atCommands(), strings.ToUpper(name)); !ok || got.usage != cmd.usage {
				t.Errorf("@%s finds %q, want %q", name, got.usage, cmd.usage)
			}
		}
		if !strings.Contains(help, cmd.usage+" ") {
			t.Errorf("@help does not show %q", cmd.usage)
		}
	}
	for _, want := range []string{"all", "nickname", "dm", "list", "me", "quit"} { // the classroom server's
		if _, ok := seen[want]; !ok {
			t.Errorf("no @%s", want)
		}
	}
	if !strings.Contains(help, Help()) {
		t.Error("@help lacks the slash commands")
	}
}
