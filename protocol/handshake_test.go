package protocol_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/caps-hub/caps/protocol"
)

func TestParseHello(t *testing.T) {
	ok := []struct {
		in   string
		want protocol.Hello
	}{
		{`{"version":1,"role":"driver","name":"ada"}`, protocol.Hello{Version: 1, Role: "driver", Name: "ada"}},
		{`{"version":1,"name":"ada"}`, protocol.Hello{Version: 1, Role: "client", Name: "ada"}},
		{`{"version":1,"role":"","name":"ada"}`, protocol.Hello{Version: 1, Role: "client", Name: "ada"}},
		{`{"version":1,"role":"vendor","name":"acme-flowers","token":"t0k","resume":"s-1"}`,
			protocol.Hello{Version: 1, Role: "vendor", Name: "acme-flowers", Token: "t0k", Resume: "s-1"}},
		{`{"version":1,"role":"chat","name":"a","extra":[1,2]}`, protocol.Hello{Version: 1, Role: "chat", Name: "a"}},
		{` {"name":"logger-1","role":"logger","version":1} `, protocol.Hello{Version: 1, Role: "logger", Name: "logger-1"}},
		{`{"version":1,"role":"admin","name":"` + strings.Repeat("z", 32) + `"}`, protocol.Hello{Version: 1, Role: "admin", Name: strings.Repeat("z", 32)}},
		{`{"version":1,"role":"client","name":"9_x-y-z"}`, protocol.Hello{Version: 1, Role: "client", Name: "9_x-y-z"}},
	}
	for _, c := range ok {
		h, err := protocol.ParseHello([]byte(c.in))
		if err != nil {
			t.Errorf("ParseHello(%s): %v", c.in, err)
			continue
		}
		if h != c.want {
			t.Errorf("ParseHello(%s) = %+v, want %+v", c.in, h, c.want)
		}
	}

	bad := []struct {
		in, errHas string
	}{
		// Not JSON.
		{``, "not JSON"},
		{`hello`, "not JSON"},
		{`{"version":1,`, "not JSON"},
		{`[1,2]`, "not JSON"},
		{`"str"`, "not JSON"},
		{`{"version":"1","name":"ada"}`, "not JSON"},
		{`{"version":1,"name":7}`, "not JSON"},
		// Version.
		{`{}`, "version"},
		{`null`, "version"},
		{`{"role":"driver","name":"ada"}`, "version"},
		{`{"version":0,"name":"ada"}`, "version"},
		{`{"version":2,"name":"ada"}`, "version"},
		{`{"version":-1,"name":"ada"}`, "version"},
		// Role.
		{`{"version":1,"role":"pilot","name":"ada"}`, "role"},
		{`{"version":1,"role":"Driver","name":"ada"}`, "role"},
		{`{"version":1,"role":" driver","name":"ada"}`, "role"},
		// Name.
		{`{"version":1,"role":"driver"}`, "name"},
		{`{"version":1,"role":"driver","name":""}`, "name"},
		{`{"version":1,"role":"driver","name":"a b"}`, "name"},
		{`{"version":1,"role":"driver","name":" ada"}`, "name"},
		{`{"version":1,"role":"driver","name":"-ada"}`, "name"},
		{`{"version":1,"role":"driver","name":"_ada"}`, "name"},
		{`{"version":1,"role":"driver","name":".ada"}`, "name"},
		{`{"version":1,"role":"driver","name":"ada*"}`, "name"},
		{`{"version":1,"role":"driver","name":"ada>"}`, "name"},
		{`{"version":1,"role":"driver","name":"$ada"}`, "name"},
		{`{"version":1,"role":"driver","name":"adé"}`, "name"},
		{`{"version":1,"role":"driver","name":"ada\n"}`, "name"},
		{`{"version":1,"role":"driver","name":"` + strings.Repeat("z", 33) + `"}`, "name"},
	}
	for _, c := range bad {
		_, err := protocol.ParseHello([]byte(c.in))
		if err == nil {
			t.Errorf("ParseHello(%s): no error", c.in)
			continue
		}
		if !strings.Contains(err.Error(), c.errHas) {
			t.Errorf("ParseHello(%s): error %q does not mention %q", c.in, err, c.errHas)
		}
	}
}

func TestValidRoleAndName(t *testing.T) {
	for _, r := range []string{"vendor", "driver", "chat", "logger", "admin", "client"} {
		if !protocol.ValidRole(r) {
			t.Errorf("ValidRole(%q) = false", r)
		}
	}
	for _, r := range []string{"", "VENDOR", "hub", "driver "} {
		if protocol.ValidRole(r) {
			t.Errorf("ValidRole(%q) = true", r)
		}
	}
	for n, want := range map[string]bool{
		"a": true, "A": true, "0": true, "ada": true, "acme-flowers": true, "a_b-c-d": true, "a.b": false,
		strings.Repeat("x", 32): true, strings.Repeat("x", 33): false,
		"": false, "-a": false, "_a": false, ".a": false, "a b": false, "a*": false, "a>": false,
		"a$": false, "a/b": false, "ä": false, "a\x00": false,
	} {
		if got := protocol.ValidName(n); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", n, got, want)
		}
	}
}

// The JSON field names are part of the wire format.
func TestHandshakeJSON(t *testing.T) {
	h := protocol.Hello{Version: 1, Role: "driver", Name: "ada"}
	b, _ := json.Marshal(h)
	if string(b) != `{"version":1,"role":"driver","name":"ada"}` {
		t.Errorf("Hello JSON = %s", b)
	}
	w := protocol.Welcome{Session: "s", Hub: "h", HeartbeatMS: 1, MaxFrame: 2, MaxSubs: 3, MaxPubRate: 4, Role: "r", Name: "n", Resumed: true}
	b, _ = json.Marshal(w)
	want := `{"session":"s","hub":"h","heartbeat_ms":1,"max_frame":2,"max_subs":3,"max_pub_rate":4,"role":"r","name":"n","resumed":true}`
	if string(b) != want {
		t.Errorf("Welcome JSON = %s, want %s", b, want)
	}
	var so protocol.SubOptions
	if err := json.Unmarshal([]byte(`{"max_inflight":2,"ack_wait_ms":30000,"history":10}`), &so); err != nil ||
		so != (protocol.SubOptions{MaxInFlight: 2, AckWaitMS: 30000, History: 10}) {
		t.Errorf("SubOptions = %+v, %v", so, err)
	}
	if b, _ := json.Marshal(protocol.SubOptions{}); string(b) != `{}` {
		t.Errorf("empty SubOptions JSON = %s", b)
	}
}
