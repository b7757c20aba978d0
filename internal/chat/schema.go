package chat

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// messageFields are the keys a client's Message may carry, spelled exactly.
var messageFields = map[string]bool{"id": true, "from": true, "room": true, "to": true, "text": true, "kind": true, "time": true}

// MaxPayload is the largest chat payload the hub accepts for messages of at
// most maxText characters: every character of the text written as a JSON
// escape pair (12 bytes), and a kilobyte for the other fields. Anything
// larger carries something a Message does not have.
func MaxPayload(maxText int) int { return 12*maxText + 1024 }

// errTooLarge: a payload over MaxPayload.
var errTooLarge = errors.New("too large")

// decodeStrict parses a client's Message as a whole: at most maxSize
// bytes, one JSON object and nothing after it, only Message's keys, each
// spelled exactly as documented and given once. The hub stores and replays
// what it accepts to every newcomer, so nothing may ride along; and readers
// in other languages take keys case-sensitively and the last of duplicates,
// while Go's encoding/json matches them case-insensitively — so {"from":
// "alice","FROM":"me"} would pass as from "me" here and show as from
// "alice" in a browser.
func decodeStrict(payload []byte, maxSize int) (Message, error) {
	var m Message
	if len(payload) > maxSize {
		return m, fmt.Errorf("%w: a chat message is at most %d bytes; this one is %d", errTooLarge, maxSize, len(payload))
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return m, errors.New("chat payload is not a JSON object")
	}
	seen := make(map[string]bool, len(messageFields))
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return m, fmt.Errorf("chat payload is not valid JSON: %w", err)
		}
		key, _ := t.(string)
		switch {
		case !messageFields[key]:
			return m, fmt.Errorf("unknown field %q in a chat message (fields: id, from, room, to, text, kind, time)", key)
		case seen[key]:
			return m, fmt.Errorf("field %q given twice in a chat message", key)
		}
		seen[key] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return m, fmt.Errorf("chat payload is not valid JSON: %w", err)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return m, fmt.Errorf("chat payload is not valid JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return m, errors.New("chat payload has something after its JSON object")
	}
	// The keys are known, exact and unique: decoding them is unambiguous.
	if err := json.Unmarshal(payload, &m); err != nil {
		return m, fmt.Errorf("chat payload is not a JSON message: %w", err)
	}
	return m, nil
}
