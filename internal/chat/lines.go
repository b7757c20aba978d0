package chat

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/caps-hub/caps/client"
)

// RunLines runs the chat in line mode, for pipes and scripts: each line of
// in is a command or a message for the current room; each event is one
// line on out (errors on errOut), in these forms:
//
//	[lobby] alice: hello
//	[lobby] * alice waves
//	[lobby] * alice joined
//	[lobby] * alice left
//	[lobby] -- history --          (before the messages sent before you joined)
//	[dm] alice: psst               (a private message to you)
//	[dm -> bob] alice: psst        (one you sent)
//	* in lobby (2): alice, bob     (answers to commands, connection state)
//	! rate_limited: slow down …    (on errOut)
//
// It returns nil after /quit, the end of in, or the end of ctx, and an
// error when it cannot start (hub unreachable, name taken). The goroutine
// reading in ends when in does.
func RunLines(ctx context.Context, cfg ClientConfig, in io.Reader, out, errOut io.Writer) error {
	c, err := NewClient(ctx, cfg)
	if err != nil {
		return err
	}
	printed := make(chan struct{})
	go func() {
		defer close(printed)
		printEvents(c, out, errOut)
	}()

	lines := make(chan string)
	readErr := make(chan error, 1)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-c.Done():
				return
			}
		}
		readErr <- sc.Err()
	}()

	for quit := false; !quit; {
		select {
		case line, ok := <-lines:
			if !ok {
				if err := <-readErr; err != nil {
					c.fail(fmt.Errorf("reading input: %w", err))
				}
				quit = true
				break
			}
			quit = c.Handle(ctx, line)
		case <-ctx.Done():
			quit = true
		}
	}
	c.Close()
	<-printed
	return nil
}

// printEvents writes events until the client closes, then what is left.
func printEvents(c *Client, out, errOut io.Writer) {
	lp := &linePrinter{history: map[string]bool{}}
	write := func(e Event) {
		w := out
		if e.Kind == EventError {
			w = errOut
		}
		for _, l := range lp.lines(e, c.Name()) {
			fmt.Fprintln(w, l)
		}
	}
	for {
		select {
		case e := <-c.Events():
			write(e)
		case <-c.Done():
			for {
				select {
				case e := <-c.Events():
					write(e)
				default:
					return
				}
			}
		}
	}
}

// linePrinter turns events into line-mode text.
type linePrinter struct {
	history map[string]bool // rooms whose history header was printed
}

func (lp *linePrinter) lines(e Event, me string) []string {
	m := e.Msg
	switch e.Kind {
	case EventMessage:
		var out []string
		if e.History && !lp.history[m.Room] {
			lp.history[m.Room] = true
			out = append(out, fmt.Sprintf("[%s] -- history --", m.Room))
		}
		if m.Kind == KindMe {
			return append(out, fmt.Sprintf("[%s] * %s %s", m.Room, m.From, m.Text))
		}
		return append(out, fmt.Sprintf("[%s] %s: %s", m.Room, m.From, m.Text))
	case EventPresence:
		verb := "joined"
		if m.Kind == KindLeave {
			verb = "left"
		}
		return []string{fmt.Sprintf("[%s] * %s %s", m.Room, m.From, verb)}
	case EventPrivate:
		tag := "[dm]"
		if e.Outgoing {
			tag = "[dm -> " + m.To + "]"
		}
		if m.Kind == KindMe {
			return []string{fmt.Sprintf("%s * %s %s", tag, m.From, m.Text)}
		}
		return []string{fmt.Sprintf("%s %s: %s", tag, m.From, m.Text)}
	case EventInfo:
		out := strings.Split(e.Text, "\n")
		for i := range out {
			out[i] = "* " + out[i]
		}
		return out
	case EventError:
		return []string{"! " + e.Text}
	case EventState:
		switch e.State {
		case client.StateConnected:
			return []string{fmt.Sprintf("* connected to %s as %s", e.Hub, me)}
		case client.StateReconnecting:
			return []string{"* connection lost; reconnecting…"}
		}
	}
	return nil
}
