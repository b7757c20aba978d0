package client

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caps-hub/caps/protocol"
)

// BenchmarkDeliver is the client's own cost of one live delivery, without
// the network: a MSG frame handed to the connection as its read loop would
// (Conn.handle), through the subscription's queue to its handler.
func BenchmarkDeliver(b *testing.B) {
	h := newFakeHub(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, []string{h.addr()}, Options{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var got atomic.Int64
	if _, err := c.Subscribe(ctx, "bench.deliver", func(*Msg) { got.Add(1) }, Buffer(1<<16)); err != nil {
		b.Fatal(err)
	}
	c.mu.Lock()
	var sid uint64
	for k := range c.subs.bySid {
		sid = k
	}
	c.mu.Unlock()
	t := c.cur.Load()
	f := protocol.Frame{Op: protocol.OpMsg, ID: sid, Topic: []byte("bench.deliver"), Payload: make([]byte, 128)}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if i%4096 == 4095 {
			for int64(i)-got.Load() > 4096 { // leave room in the queue
				time.Sleep(10 * time.Microsecond)
			}
		}
		c.handle(t, &f)
	}
}
