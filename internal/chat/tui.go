package chat

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"strings"
	"time"

	"charm.land/bubbles/v2/textinput"
	"charm.land/bubbles/v2/viewport"
	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/caps-hub/caps/client"
)

// RunTUI runs the full-screen chat on a terminal: a scrolling message pane
// (times, coloured names), a status line (who, where, connection state) and
// an input line with history (up/down). in and out are the terminal. It
// returns nil when the user quits (/quit, ctrl+c, ctrl+d on an empty line)
// and an error when it cannot start.
func RunTUI(ctx context.Context, cfg ClientConfig, in io.Reader, out io.Writer) error {
	c, err := NewClient(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()

	lines := make(chan string, 64)
	m := newTUIModel(c, lines)
	p := tea.NewProgram(m, tea.WithContext(ctx), tea.WithInput(in), tea.WithOutput(out))

	// One goroutine runs what the user typed, in order (a publish waits for
	// the hub; the screen must not).
	worker := make(chan struct{})
	go func() {
		defer close(worker)
		for line := range lines {
			if c.Handle(ctx, line) {
				p.Send(quitMsg{})
			}
		}
	}()
	// Another hands the client's events to the program.
	forward := make(chan struct{})
	go func() {
		defer close(forward)
		for {
			select {
			case e := <-c.Events():
				p.Send(eventMsg(e))
			case <-c.Done():
				return
			}
		}
	}()

	_, err = p.Run()
	c.Close()
	close(lines)
	<-worker
	<-forward
	if err != nil && !(errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil) && !errors.Is(err, tea.ErrInterrupted) {
		return fmt.Errorf("terminal: %w", err)
	}
	return nil
}

type (
	eventMsg Event
	quitMsg  struct{}
)

// Colours: names get one of these by a hash of the name, so a person keeps
// their colour on every screen.
var namePalette = []string{"#5fafff", "#ff875f", "#87d75f", "#d787ff", "#ffd75f", "#5fd7d7", "#ff5f87", "#afaf5f"}

var (
	styleTime    = lipgloss.NewStyle().Foreground(lipgloss.Color("#6c6c6c"))
	styleRoom    = lipgloss.NewStyle().Foreground(lipgloss.Color("#808080"))
	stylePresent = lipgloss.NewStyle().Foreground(lipgloss.Color("#808080")).Italic(true)
	styleAction  = lipgloss.NewStyle().Italic(true)
	styleDM      = lipgloss.NewStyle().Foreground(lipgloss.Color("#ff87ff"))
	styleInfo    = lipgloss.NewStyle().Foreground(lipgloss.Color("#5fafaf"))
	styleError   = lipgloss.NewStyle().Foreground(lipgloss.Color("#ff5f5f")).Bold(true)
	styleHistory = lipgloss.NewStyle().Faint(true)
	styleStatus  = lipgloss.NewStyle().Background(lipgloss.Color("#303030")).Foreground(lipgloss.Color("#d0d0d0"))
	styleOK      = lipgloss.NewStyle().Background(lipgloss.Color("#303030")).Foreground(lipgloss.Color("#87d75f")).Bold(true)
	styleWarn    = lipgloss.NewStyle().Background(lipgloss.Color("#303030")).Foreground(lipgloss.Color("#ffd75f")).Bold(true)
)

func nameStyle(name string) lipgloss.Style {
	h := fnv.New32a()
	h.Write([]byte(name))
	return lipgloss.NewStyle().Foreground(lipgloss.Color(namePalette[h.Sum32()%uint32(len(namePalette))])).Bold(true)
}

// tuiModel is the bubbletea model of the full-screen chat.
type tuiModel struct {
	c     *Client
	lines chan<- string

	pane   viewport.Model
	input  textinput.Model
	width  int
	height int

	log      []string        // rendered lines of the pane
	histSeen map[string]bool // rooms whose "earlier messages" rule was drawn
	state    client.State
	hub      string

	sent    []string // input history
	hpos    int      // position in sent while browsing; len(sent) when not
	draft   string   // what was typed before browsing
	quitted bool
}

func newTUIModel(c *Client, lines chan<- string) *tuiModel {
	in := textinput.New()
	in.Placeholder = "type a message, or /help"
	in.SetVirtualCursor(false)
	in.Focus()
	pane := viewport.New()
	pane.SoftWrap = true
	pane.MouseWheelEnabled = false
	return &tuiModel{
		c: c, lines: lines, pane: pane, input: in,
		histSeen: map[string]bool{}, state: client.StateConnected, hub: c.Hub(),
	}
}

func (m *tuiModel) Init() tea.Cmd { return nil }

func (m *tuiModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width, m.height = msg.Width, msg.Height
		m.layout()
		return m, nil
	case quitMsg:
		m.quitted = true
		return m, tea.Quit
	case eventMsg:
		m.add(Event(msg))
		return m, nil
	case tea.KeyPressMsg:
		return m.key(msg)
	}
	return m, nil
}

func (m *tuiModel) key(k tea.KeyPressMsg) (tea.Model, tea.Cmd) {
	switch k.String() {
	case "ctrl+c":
		m.quitted = true
		return m, tea.Quit
	case "ctrl+d":
		if m.input.Value() == "" {
			m.quitted = true
			return m, tea.Quit
		}
	case "enter":
		line := m.input.Value()
		m.input.Reset()
		m.draft = ""
		if strings.TrimSpace(line) == "" {
			return m, nil
		}
		if n := len(m.sent); n == 0 || m.sent[n-1] != line {
			m.sent = append(m.sent, line)
		}
		m.hpos = len(m.sent)
		select {
		case m.lines <- line:
		default:
			m.add(Event{Kind: EventError, Text: "still busy with what you typed before; try again"})
		}
		m.pane.GotoBottom()
		return m, nil
	case "up":
		if m.hpos > 0 {
			if m.hpos == len(m.sent) {
				m.draft = m.input.Value()
			}
			m.hpos--
			m.input.SetValue(m.sent[m.hpos])
			m.input.CursorEnd()
		}
		return m, nil
	case "down":
		if m.hpos < len(m.sent) {
			m.hpos++
			if m.hpos == len(m.sent) {
				m.input.SetValue(m.draft)
			} else {
				m.input.SetValue(m.sent[m.hpos])
			}
			m.input.CursorEnd()
		}
		return m, nil
	case "pgup":
		m.pane.PageUp()
		return m, nil
	case "pgdown":
		m.pane.PageDown()
		return m, nil
	case "ctrl+home":
		m.pane.GotoTop()
		return m, nil
	case "ctrl+end":
		m.pane.GotoBottom()
		return m, nil
	}
	var cmd tea.Cmd
	m.input, cmd = m.input.Update(k)
	return m, cmd
}

// layout sizes the pane and the input to the terminal: the pane takes all
// but the status and input lines.
func (m *tuiModel) layout() {
	atBottom := m.pane.AtBottom()
	m.pane.SetWidth(m.width)
	m.pane.SetHeight(max(m.height-2, 1))
	m.pane.SetContentLines(m.log)
	if atBottom {
		m.pane.GotoBottom()
	}
}

// add renders an event into the pane, following the conversation when the
// pane was at its end (and staying put when the user scrolled back).
func (m *tuiModel) add(e Event) {
	if e.Kind == EventState {
		m.state = e.State
		if e.Hub != "" {
			m.hub = e.Hub
		}
	}
	lines := m.render(e)
	if len(lines) == 0 {
		return
	}
	follow := m.pane.AtBottom() || m.pane.TotalLineCount() <= m.pane.Height()
	m.log = append(m.log, lines...)
	if over := len(m.log) - 5000; over > 0 {
		m.log = m.log[over:] // bounded scrollback
	}
	m.pane.SetContentLines(m.log)
	if follow {
		m.pane.GotoBottom()
	}
}

func (m *tuiModel) render(e Event) []string {
	msg := e.Msg
	when := msg.Time
	if when.IsZero() {
		when = time.Now()
	}
	stamp := styleTime.Render(when.Local().Format("15:04"))
	room := styleRoom.Render("[" + msg.Room + "]")
	switch e.Kind {
	case EventMessage:
		var out []string
		if e.History && !m.histSeen[msg.Room] {
			m.histSeen[msg.Room] = true
			out = append(out, styleHistory.Render(fmt.Sprintf("── earlier in %s ──", msg.Room)))
		}
		var body string
		if msg.Kind == KindMe {
			body = styleAction.Render("* ") + nameStyle(msg.From).Render(msg.From) + styleAction.Render(" "+msg.Text)
		} else {
			body = nameStyle(msg.From).Render(msg.From) + ": " + msg.Text
		}
		line := stamp + " " + room + " " + body
		if e.History || e.CaughtUp {
			tag := "history"
			if e.CaughtUp {
				tag = "missed"
			}
			line += " " + styleHistory.Render("("+tag+")")
		}
		return append(out, line)
	case EventPresence:
		verb := "joined"
		if msg.Kind == KindLeave {
			verb = "left"
		}
		return []string{stamp + " " + room + " " + stylePresent.Render("* "+msg.From+" "+verb)}
	case EventPrivate:
		tag := "[dm]"
		if e.Outgoing {
			tag = "[dm → " + msg.To + "]"
		}
		body := nameStyle(msg.From).Render(msg.From) + ": " + msg.Text
		if msg.Kind == KindMe {
			body = "* " + nameStyle(msg.From).Render(msg.From) + " " + msg.Text
		}
		return []string{stamp + " " + styleDM.Render(tag) + " " + body}
	case EventInfo:
		out := strings.Split(e.Text, "\n")
		for i, l := range out {
			out[i] = styleInfo.Render("* " + l)
		}
		return out
	case EventError:
		return []string{styleError.Render("! " + e.Text)}
	case EventState:
		switch e.State {
		case client.StateReconnecting:
			return []string{styleError.Render("! connection lost; reconnecting…")}
		case client.StateConnected:
			return []string{styleInfo.Render(fmt.Sprintf("* connected to %s as %s", e.Hub, m.c.Name()))}
		}
	}
	return nil
}

func (m *tuiModel) status() string {
	var st string
	switch m.state {
	case client.StateConnected:
		st = styleOK.Render("connected")
	case client.StateReconnecting, client.StateConnecting:
		st = styleWarn.Render("reconnecting…")
	default:
		st = styleWarn.Render(m.state.String())
	}
	room := m.c.Current()
	if room == "" {
		room = "(no room)"
	}
	rooms := m.c.Rooms()
	others := ""
	if len(rooms) > 1 {
		others = " (in " + strings.Join(rooms, ", ") + ")"
	}
	scroll := ""
	if !m.pane.AtBottom() && m.pane.TotalLineCount() > m.pane.Height() {
		scroll = " · scrolled back (pgdown)"
	}
	left := styleStatus.Render(fmt.Sprintf(" %s @ %s · %s%s%s · ", m.c.Name(), m.hub, room, others, scroll))
	line := left + st
	if pad := m.width - lipgloss.Width(line); pad > 0 {
		line += styleStatus.Render(strings.Repeat(" ", pad))
	}
	return line
}

func (m *tuiModel) View() tea.View {
	if m.quitted {
		return tea.NewView("")
	}
	if m.width == 0 {
		return tea.NewView("caps chat: starting…")
	}
	m.input.Prompt = "[" + m.c.Current() + "] > "
	m.input.SetWidth(max(m.width-lipgloss.Width(m.input.Prompt)-1, 1))
	body := lipgloss.JoinVertical(lipgloss.Left, m.pane.View(), m.status(), m.input.View())
	v := tea.NewView(body)
	v.AltScreen = true
	v.WindowTitle = "caps chat · " + m.c.Name()
	if cur := m.input.Cursor(); cur != nil {
		cur.Position.Y += m.height - 1
		v.Cursor = cur
	}
	return v
}
