// Command notes embeds a CAPS hub with an application of its own and talks
// to it with the client library — what a program outside this module does,
// using only the public packages hub, client and protocol.
//
// The application, notesApp, stores notes on the topics notes.<author>,
// lets each client write only under its own name and only short notes (a
// publish hook), and answers how many notes the caller has written (a
// service that reads the engine through Host.JetStream). Then alice writes,
// is refused twice, and bob joins and catches up on the history.
//
//	go run ./examples/notes
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "notes:", err)
		os.Exit(1)
	}
}

// notesApp is a hub application: a stream, a rule and a service.
type notesApp struct {
	js jetstream.JetStream
}

const (
	notesStream  = "EXAMPLE_NOTES"
	countService = "notes.count"
	maxNote      = 140
)

func (a *notesApp) Setup(ctx context.Context, h *hub.Host) error {
	if err := h.AddStream(ctx, hub.StreamSpec{Name: notesStream, Topics: []string{"notes.>"}, MaxAge: 24 * time.Hour}); err != nil {
		return err
	}
	a.js = h.JetStream()
	h.OnPublish("notes.>", a.check)
	h.Handle(countService, a.count)
	return nil
}

// check lets a client write only notes.<its name>, 1 to maxNote bytes.
func (a *notesApp) check(_ context.Context, s hub.SessionInfo, topic string, payload []byte) error {
	if topic != "notes."+s.Name {
		return hub.Reject(protocol.CodeRejected, fmt.Sprintf("%s may write only notes.%s", s.Name, s.Name))
	}
	if len(payload) == 0 || len(payload) > maxNote {
		return hub.Reject(protocol.CodeRejected, fmt.Sprintf("a note is 1 to %d bytes", maxNote))
	}
	return nil
}

// count answers {"notes": n}, the notes the caller has written.
func (a *notesApp) count(ctx context.Context, s hub.SessionInfo, _ []byte) ([]byte, error) {
	subject := hub.Subject("notes." + s.Name)
	stream, err := a.js.Stream(ctx, notesStream)
	if err != nil {
		return nil, err
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return nil, err
	}
	return json.Marshal(map[string]uint64{"notes": info.State.Subjects[subject]})
}

// run starts a hub with notesApp in a temporary directory, then plays the
// scene, printing what happens to out.
func run(ctx context.Context, out io.Writer) error {
	dir, err := os.MkdirTemp("", "caps-notes-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	h := hub.New(hub.Config{
		Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: dir, Name: "notes",
		Quiet: true, Logger: slog.New(slog.DiscardHandler),
		Apps: []hub.App{&notesApp{}},
	})
	if err := h.Start(ctx); err != nil {
		return err
	}
	defer h.Shutdown(context.WithoutCancel(ctx))
	fmt.Fprintln(out, "hub ready")
	addr := []string{h.Addr().String()}

	alice, err := client.Dial(ctx, addr, client.Options{Name: "alice"})
	if err != nil {
		return err
	}
	defer alice.Close()
	if _, err := alice.Publish(ctx, "notes.alice", []byte("buy milk")); err != nil {
		return err
	}
	fmt.Fprintln(out, "alice stored a note")
	for _, try := range []struct{ topic, note string }{
		{"notes.bob", "bob owes me"},
		{"notes.alice", strings.Repeat("long ", 40)},
	} {
		_, err := alice.Publish(ctx, try.topic, []byte(try.note))
		var perr *protocol.Error
		if !errors.As(err, &perr) {
			return fmt.Errorf("want a refusal, got %v", err)
		}
		fmt.Fprintf(out, "refused: %s: %s\n", perr.Code, perr.Text)
	}

	bob, err := client.Dial(ctx, addr, client.Options{Name: "bob"})
	if err != nil {
		return err
	}
	defer bob.Close()
	got := make(chan *client.Msg, 1)
	if _, err := bob.Subscribe(ctx, "notes.>", func(m *client.Msg) { got <- m }, client.History(10)); err != nil {
		return err
	}
	select {
	case m := <-got:
		fmt.Fprintf(out, "bob caught up: %s: %s\n", m.Topic, m.Payload)
	case <-ctx.Done():
		return ctx.Err()
	}

	reply, err := alice.Request(ctx, countService, nil)
	if err != nil {
		return err
	}
	var n struct{ Notes int }
	if err := json.Unmarshal(reply, &n); err != nil {
		return err
	}
	fmt.Fprintf(out, "alice has written %d note(s)\n", n.Notes)
	return nil
}
