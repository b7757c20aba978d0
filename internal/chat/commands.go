package chat

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// A user is who the commands act for: a caps chat client (Client), or a
// person on a plain-text connection to the hub (textUser). Both run the
// same table.
type user interface {
	Name() string
	Current() string
	Rooms() []string
	Join(ctx context.Context, room string) error
	Leave(room string) error
	Say(ctx context.Context, text string) error
	SayIn(ctx context.Context, room, text string) error
	Me(ctx context.Context, action string) error
	Private(ctx context.Context, to, text string) error
	Nick(ctx context.Context, name string) error
	Who(ctx context.Context, room string) (WhoReply, error)
	ListRooms(ctx context.Context) (RoomsReply, error)
	// help is what /help shows this user.
	help() string
	info(format string, args ...any)
	fail(err error)
}

// A command is one of the commands a chat user types. The tables below
// are what Handle runs and what /help lists.
type command struct {
	names []string // the first is the name /help shows; the others are aliases
	usage string   // as /help shows it
	help  string
	run   func(ctx context.Context, u user, a commandArgs) error
}

// commandArgs are what follows a command: rest, all of it; arg, its first
// word; more, what follows that word.
type commandArgs struct{ rest, arg, more string }

// errQuit is a command's way of saying the user asked to leave.
var errQuit = errors.New("quit")

func cmdQuit(context.Context, user, commandArgs) error { return errQuit }

func cmdHelp(_ context.Context, u user, _ commandArgs) error { u.info("%s", u.help()); return nil }

// commands are the slash commands, for every user.
func commands() []command {
	return []command{
		{[]string{"join", "j"}, "/join ROOM", "join ROOM (or switch to it) and talk there", cmdJoin},
		{[]string{"leave", "part"}, "/leave [ROOM]", "leave ROOM (default: the current room)", cmdLeave},
		{[]string{"rooms", "list"}, "/rooms", "list rooms with how many people are in each", cmdRooms},
		{[]string{"who", "names"}, "/who [ROOM]", "list who is in ROOM (default: the current room)", cmdWho},
		{[]string{"nick"}, "/nick NAME", "change your name", cmdNick},
		{[]string{"msg", "m", "tell"}, "/msg NAME TEXT", "send TEXT to NAME only", cmdMsg},
		{[]string{"me"}, "/me ACTION", "describe what you do: * you ACTION", cmdMe},
		{[]string{"quit", "exit", "q"}, "/quit", "leave the chat (so does end of input)", cmdQuit},
		{[]string{"help", "h", "?"}, "/help", "this list", cmdHelp},
	}
}

// atCommands are the classroom chat server's commands, for people on a
// plain-text connection (nc, telnet), who used them there. They run the
// same functions as the slash commands.
func atCommands() []command {
	return []command{
		{[]string{"all"}, "@all TEXT", "send TEXT to everyone: the " + Lobby + " (classroom clients hear it too)", cmdAll},
		{[]string{"nickname", "nick"}, "@nickname NAME", "change your name (as your first line: before anyone hears of you)", cmdNick},
		{[]string{"dm"}, "@dm NAME TEXT", "send TEXT to NAME only", cmdMsg},
		{[]string{"list"}, "@list", "list who is in the current room", cmdList},
		{[]string{"me"}, "@me [ACTION]", "describe what you do; alone, say who and where you are", cmdAtMe},
		{[]string{"quit"}, "@quit", "leave the chat", cmdQuit},
		{[]string{"help"}, "@help", "this list", cmdHelp},
	}
}

// Help lists the slash commands, one per line, from the table Handle runs.
func Help() string {
	var b strings.Builder
	writeTable(&b, commands())
	fmt.Fprintf(&b, "%-18s%s", "//TEXT", "send TEXT starting with a slash")
	return b.String()
}

// textHelp is the help of a plain-text user: the slash commands, then the
// classroom's @ commands.
func textHelp() string {
	var b strings.Builder
	b.WriteString(Help())
	b.WriteString("\n")
	writeTable(&b, atCommands())
	fmt.Fprintf(&b, "%-18s%s", "@@TEXT", "send TEXT starting with @")
	return b.String()
}

func writeTable(b *strings.Builder, table []command) {
	for _, cmd := range table {
		fmt.Fprintf(b, "%-18s%s\n", cmd.usage, cmd.help)
	}
}

// lookup finds the slash command named name (case-insensitive), by any of
// its names.
func lookup(name string) (command, bool) { return find(commands(), name) }

func find(table []command, name string) (command, bool) {
	name = strings.ToLower(name)
	for _, cmd := range table {
		if slices.Contains(cmd.names, name) {
			return cmd, true
		}
	}
	return command{}, false
}

// Handle runs one line typed by the user: a command, or text for the
// current room. What it has to say comes out of Events. It reports whether
// the user asked to quit.
func (c *Client) Handle(ctx context.Context, line string) (quit bool) { return handle(ctx, c, line) }

// handle runs one line for u: a slash command, or text for the current room.
func handle(ctx context.Context, u user, line string) (quit bool) {
	line = strings.TrimRight(line, "\r\n")
	if strings.TrimSpace(line) == "" {
		return false
	}
	if !strings.HasPrefix(line, "/") || strings.HasPrefix(line, "//") {
		if strings.HasPrefix(line, "//") {
			line = line[1:]
		}
		if err := u.Say(ctx, line); err != nil {
			u.fail(err)
		}
		return false
	}
	return run(ctx, u, commands(), "/", line[1:])
}

// handleText runs one line of a plain-text user: an @ command of the
// classroom, "@@" text, or what handle runs.
func handleText(ctx context.Context, u user, line string) (quit bool) {
	if !strings.HasPrefix(line, "@") {
		return handle(ctx, u, line)
	}
	if strings.HasPrefix(line, "@@") {
		if err := u.Say(ctx, line[1:]); err != nil {
			u.fail(err)
		}
		return false
	}
	return run(ctx, u, atCommands(), "@", line[1:])
}

// run runs the command of table that line (without its sign) names.
func run(ctx context.Context, u user, table []command, sign, line string) (quit bool) {
	name, rest, _ := strings.Cut(line, " ")
	cmd, ok := find(table, name)
	if !ok {
		err := fmt.Errorf("unknown command %s%s; %shelp lists them", sign, name, sign)
		if sign == "@" { // "@alice hi" is how many people address someone
			err = fmt.Errorf("%w (@@ sends a line starting with @)", err)
		}
		u.fail(err)
		return false
	}
	var a commandArgs
	a.rest = strings.TrimSpace(rest)
	a.arg, a.more, _ = strings.Cut(a.rest, " ")
	a.more = strings.TrimSpace(a.more)
	err := cmd.run(ctx, u, a)
	if errors.Is(err, errQuit) {
		return true
	}
	if err != nil {
		u.fail(err)
	}
	return false
}

func cmdJoin(ctx context.Context, c user, a commandArgs) error {
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

func cmdLeave(_ context.Context, c user, a commandArgs) error {
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

func cmdRooms(ctx context.Context, c user, _ commandArgs) error {
	reply, err := c.ListRooms(ctx)
	if err == nil {
		c.info("%s", formatRooms(reply))
	}
	return err
}

func cmdWho(ctx context.Context, c user, a commandArgs) error {
	reply, err := c.Who(ctx, a.arg)
	if err == nil {
		c.info("%s", formatWho(reply))
	}
	return err
}

func cmdNick(ctx context.Context, c user, a commandArgs) error {
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

func cmdMsg(ctx context.Context, c user, a commandArgs) error {
	if a.arg == "" || a.more == "" {
		return fmt.Errorf("usage: /msg NAME TEXT")
	}
	return c.Private(ctx, a.arg, a.more)
}

func cmdMe(ctx context.Context, c user, a commandArgs) error {
	if a.rest == "" {
		return fmt.Errorf("usage: /me ACTION")
	}
	return c.Me(ctx, a.rest)
}

// cmdAll is the classroom's "@all TEXT": to everyone, which in CAPS is
// the lobby (where everyone starts, and which classroom clients hear).
func cmdAll(ctx context.Context, u user, a commandArgs) error {
	if a.rest == "" {
		return fmt.Errorf("usage: @all TEXT")
	}
	return u.SayIn(ctx, Lobby, a.rest)
}

// cmdList is the classroom's "@list": who is here (the current room).
func cmdList(ctx context.Context, u user, _ commandArgs) error {
	return cmdWho(ctx, u, commandArgs{})
}

// cmdAtMe is "@me ACTION" (as /me), or "@me" alone: who and where you are.
func cmdAtMe(ctx context.Context, u user, a commandArgs) error {
	if a.rest != "" {
		return cmdMe(ctx, u, a)
	}
	where := "in no room (/join ROOM)"
	if cur := u.Current(); cur != "" {
		where = "talking in " + cur
		if rooms := u.Rooms(); len(rooms) > 1 {
			where += " (rooms: " + strings.Join(rooms, ", ") + ")"
		}
	}
	u.info("you are %s, %s", u.Name(), where)
	return nil
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
