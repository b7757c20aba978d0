package chat

import (
	"context"
	"fmt"
	"strings"
)

// HelpText lists the commands, one per line.
const HelpText = `/join ROOM        join ROOM (or switch to it) and talk there
/leave [ROOM]     leave ROOM (default: the current room)
/rooms            list rooms with how many people are in each
/who [ROOM]       list who is in ROOM (default: the current room)
/nick NAME        change your name
/msg NAME TEXT    send TEXT to NAME only
/me ACTION        describe what you do: * you ACTION
/quit             leave the chat (so does end of input)
/help             this list
//TEXT            send TEXT starting with a slash`

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
	cmd, rest, _ := strings.Cut(line[1:], " ")
	rest = strings.TrimSpace(rest)
	arg, more, _ := strings.Cut(rest, " ")
	more = strings.TrimSpace(more)
	var err error
	switch strings.ToLower(cmd) {
	case "quit", "exit", "q":
		return true
	case "help", "h", "?":
		c.info("%s", HelpText)
	case "join", "j":
		if arg == "" {
			err = fmt.Errorf("usage: /join ROOM")
			break
		}
		already := false
		for _, r := range c.Rooms() {
			already = already || r == arg
		}
		if err = c.Join(ctx, arg); err == nil && already {
			c.info("now talking in %s", arg)
		}
	case "leave", "part":
		room := arg
		if room == "" {
			room = c.Current()
		}
		if room == "" {
			err = fmt.Errorf("you are in no room")
			break
		}
		if err = c.Leave(room); err == nil {
			if cur := c.Current(); cur != "" {
				c.info("left %s; now talking in %s", room, cur)
			} else {
				c.info("left %s; /join ROOM to talk again", room)
			}
		}
	case "rooms", "list":
		var reply RoomsReply
		if reply, err = c.ListRooms(ctx); err == nil {
			c.info("%s", formatRooms(reply))
		}
	case "who", "names":
		var reply WhoReply
		if reply, err = c.Who(ctx, arg); err == nil {
			c.info("%s", formatWho(reply))
		}
	case "nick":
		if arg == "" || more != "" {
			err = fmt.Errorf("usage: /nick NAME")
			break
		}
		old := c.Name()
		if err = c.Nick(ctx, arg); err == nil && old != arg {
			c.info("you are now %s", arg)
		}
	case "msg", "m", "tell":
		if arg == "" || more == "" {
			err = fmt.Errorf("usage: /msg NAME TEXT")
			break
		}
		err = c.Private(ctx, arg, more)
	case "me":
		if rest == "" {
			err = fmt.Errorf("usage: /me ACTION")
			break
		}
		err = c.Me(ctx, rest)
	default:
		err = fmt.Errorf("unknown command /%s; /help lists them", cmd)
	}
	if err != nil {
		c.fail(err)
	}
	return false
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
