package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// A command is one of the slash commands a chat user types. The table
// below is what Handle runs and what /help lists.
type command struct {
	names []string // the first is the name /help shows; the others are aliases
	usage string   // as /help shows it
	help  string
	run   func(ctx context.Context, c *Client, a commandArgs) error
}

// commandArgs are what follows a command: rest, all of it; arg, its first
// word; more, what follows that word.
type commandArgs struct{ rest, arg, more string }

// errQuit is a command's way of saying the user asked to leave.
var errQuit = errors.New("quit")

func commands() []command {
	return []command{
		{[]string{"join", "j"}, "/join ROOM", "join ROOM (or switch to it) and talk there", cmdJoin},
		{[]string{"leave", "part"}, "/leave [ROOM]", "leave ROOM (default: the current room)", cmdLeave},
		{[]string{"rooms", "list"}, "/rooms", "list rooms with how many people are in each", cmdRooms},
		{[]string{"who", "names"}, "/who [ROOM]", "list who is in ROOM (default: the current room)", cmdWho},
		{[]string{"nick"}, "/nick NAME", "change your name", cmdNick},
		{[]string{"msg", "m", "tell"}, "/msg NAME TEXT", "send TEXT to NAME only", cmdMsg},
		{[]string{"me"}, "/me ACTION", "describe what you do: * you ACTION", cmdMe},
		{[]string{"quit", "exit", "q"}, "/quit", "leave the chat (so does end of input)", func(context.Context, *Client, commandArgs) error { return errQuit }},
		{[]string{"help", "h", "?"}, "/help", "this list", func(_ context.Context, c *Client, _ commandArgs) error { c.info("%s", Help()); return nil }},
	}
}

// Help lists the commands, one per line, from the table Handle runs.
func Help() string {
	var b strings.Builder
	for _, cmd := range commands() {
		fmt.Fprintf(&b, "%-18s%s\n", cmd.usage, cmd.help)
	}
	fmt.Fprintf(&b, "%-18s%s", "//TEXT", "send TEXT starting with a slash")
	return b.String()
}

// lookup finds the command named name (case-insensitive), by any of its names.
func lookup(name string) (command, bool) {
	name = strings.ToLower(name)
	for _, cmd := range commands() {
		if slices.Contains(cmd.names, name) {
			return cmd, true
		}
	}
	return command{}, false
}

// Handle runs one line typed by the user: a command, or text for the
// current room. What it has to say comes out of Events. It reports whether
// the user asked to quit.
func (c *Client) Handle(ctx context.Context, line string) (quit bool) {
	line = strings.TrimRight(line, "\r\n")
	if strings.TrimSpace(line) == "" {
		return false
	}
	if !strings.HasPrefix(line, "/") || strings.HasPrefix(line, "//") {
		if strings.HasPrefix(line, "//") {
			line = line[1:]
		}
		if err := c.Say(ctx, line); err != nil {
			c.fail(err)
		}
		return false
	}
	name, rest, _ := strings.Cut(line[1:], " ")
	cmd, ok := lookup(name)
	if !ok {
		c.fail(fmt.Errorf("unknown command /%s; /help lists them", name))
		return false
	}
	var a commandArgs
	a.rest = strings.TrimSpace(rest)
	a.arg, a.more, _ = strings.Cut(a.rest, " ")
	a.more = strings.TrimSpace(a.more)
	err := cmd.run(ctx, c, a)
	if errors.Is(err, errQuit) {
		return true
	}
	if err != nil {
		c.fail(err)
	}
	return false
}

func cmdJoin(ctx context.Context, c *Client, a commandArgs) error {
	if a.arg == "" {
		return fmt.Errorf("usage: /join ROOM")
	}
	already := slices.Contains(c.Rooms(), a.arg)
	if err := c.Join(ctx, a.arg); err != nil {
		return err
	}
	if already {
		c.info("now talking in %s", a.arg)
	}
	return nil
}

func cmdLeave(_ context.Context, c *Client, a commandArgs) error {
	room := a.arg
	if room == "" {
		room = c.Current()
	}
	if room == "" {
		return fmt.Errorf("you are in no room")
	}
	if err := c.Leave(room); err != nil {
		return err
	}
	if cur := c.Current(); cur != "" {
		c.info("left %s; now talking in %s", room, cur)
	} else {
		c.info("left %s; /join ROOM to talk again", room)
	}
	return nil
}

func cmdRooms(ctx context.Context, c *Client, _ commandArgs) error {
	reply, err := c.ListRooms(ctx)
	if err == nil {
		c.info("%s", formatRooms(reply))
	}
	return err
}

func cmdWho(ctx context.Context, c *Client, a commandArgs) error {
	reply, err := c.Who(ctx, a.arg)
	if err == nil {
		c.info("%s", formatWho(reply))
	}
	return err
}

func cmdNick(ctx context.Context, c *Client, a commandArgs) error {
	if a.arg == "" || a.more != "" {
		return fmt.Errorf("usage: /nick NAME")
	}
	old := c.Name()
	if err := c.Nick(ctx, a.arg); err != nil {
		return err
	}
	if old != a.arg {
		c.info("you are now %s", a.arg)
	}
	return nil
}

func cmdMsg(ctx context.Context, c *Client, a commandArgs) error {
	if a.arg == "" || a.more == "" {
		return fmt.Errorf("usage: /msg NAME TEXT")
	}
	return c.Private(ctx, a.arg, a.more)
}

func cmdMe(ctx context.Context, c *Client, a commandArgs) error {
	if a.rest == "" {
		return fmt.Errorf("usage: /me ACTION")
	}
	return c.Me(ctx, a.rest)
}

func formatRooms(r RoomsReply) string {
	if len(r.Rooms) == 0 {
		return "no room has anyone in it"
	}
	parts := make([]string, len(r.Rooms))
	for i, ri := range r.Rooms {
		parts[i] = fmt.Sprintf("%s (%d)", ri.Room, ri.Members)
	}
	return "rooms: " + strings.Join(parts, ", ")
}

func formatWho(r WhoReply) string {
	names := make([]string, len(r.Members))
	for i, m := range r.Members {
		names[i] = m.Name
	}
	switch len(names) {
	case 0:
		return fmt.Sprintf("nobody is in %s", r.Room)
	case 1:
		return fmt.Sprintf("in %s (1): %s", r.Room, names[0])
	}
	return fmt.Sprintf("in %s (%d): %s", r.Room, len(names), strings.Join(names, ", "))
}
