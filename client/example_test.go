package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/hub"
	"github.com/caps-hub/caps/protocol"
)

// Example runs a hub in-process, then publishes, subscribes and makes a request.
func Example() {
	// A hub with an embedded engine in a temporary directory. In real use
	// the hub is "caps hub" and the client is given its address.
	dir, err := os.MkdirTemp("", "caps-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := hub.New(hub.Config{Addr: "127.0.0.1:0", HTTPAddr: "off", DataDir: dir, Quiet: true,
		Logger: slog.New(slog.DiscardHandler)})
	if err := h.Start(ctx); err != nil {
		log.Fatal(err)
	}
	defer h.Shutdown(context.Background())
	addr := h.Addr().String()

	c, err := client.Dial(ctx, []string{addr}, client.Options{Name: "example"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	got := make(chan *client.Msg, 1)
	if _, err := c.Subscribe(ctx, "greetings.*", func(m *client.Msg) { got <- m }); err != nil {
		log.Fatal(err)
	}
	if _, err := c.Publish(ctx, "greetings.world", []byte("hello")); err != nil {
		log.Fatal(err)
	}
	m := <-got
	fmt.Printf("%s: %s\n", m.Topic, m.Payload)

	_, err = c.Request(ctx, "no.such.service", nil)
	var perr *protocol.Error
	if errors.As(err, &perr) {
		fmt.Println("request refused:", perr.Code)
	}
	// Output:
	// greetings.world: hello
	// request refused: not_found
}
