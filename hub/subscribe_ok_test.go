package hub_test

import (
	"fmt"
	"testing"

	"github.com/caps-hub/caps/protocol"
)

// A live subscription's OK means the session is a member: a message
// published the moment the client has the OK reaches it. The hub used to
// answer before joining, and a live message, delivered straight from the
// publisher's hub, could find the subscriber not yet a member (caught by
// TestLocalMatchesFollowSubscriptions about once in 240 runs; here each
// of the rounds is that race).
func TestSubscribeOKMeansMember(t *testing.T) {
	h := startHub(t, nil)
	first, late, pub := dialRaw(t, h), dialRaw(t, h), dialRaw(t, h)
	first.hello("client", "first")
	late.hello("client", "late")
	pub.hello("client", "pub")
	const rounds = 300
	for i := 1; i <= rounds; i++ {
		topic := fmt.Appendf(nil, "join.t%d", i)
		// first makes the subscription; late joins it, and the publisher
		// publishes as soon as late has its OK.
		for _, c := range []*rawConn{first, late} {
			c.send(&protocol.Frame{Op: protocol.OpSub, ID: uint64(i), Topic: topic})
			if f := c.nextOp(); f.Op != protocol.OpOK || f.ID != uint64(i) {
				t.Fatalf("round %d: SUB: %s", i, f)
			}
		}
		// A live message is handed to this hub's subscribers before the
		// publisher's OK; late's PONG then comes after it.
		pub.send(&protocol.Frame{Op: protocol.OpPub, ID: uint64(i), Topic: topic, Payload: []byte("now")})
		if f := pub.nextOp(); f.Op != protocol.OpOK {
			t.Fatalf("round %d: PUB: %s", i, f)
		}
		late.send(&protocol.Frame{Op: protocol.OpPing})
		if f := late.nextOp(); f.Op != protocol.OpMsg {
			t.Fatalf("round %d: the subscriber that had its OK got %s, not the message", i, f)
		}
		if f := late.nextOp(); f.Op != protocol.OpPong {
			t.Fatalf("round %d: want PONG, got %s", i, f)
		}
		if f := first.nextOp(); f.Op != protocol.OpMsg {
			t.Fatalf("round %d: first: want MSG, got %s", i, f)
		}
	}
}
