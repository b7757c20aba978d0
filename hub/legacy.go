package hub

import (
	"bufio"

	"github.com/caps-hub/caps/protocol"
)

// legacyCodec turns frames into classroom-dialect JSON objects.
type legacyCodec struct{}

func (l *legacyCodec) encodeFrame(f *protocol.Frame) []byte { return nil }

func (l *legacyCodec) sendFrame(s *Session, f *protocol.Frame) bool { return true }

// serveLegacy runs a classroom-dialect connection.
func (h *Hub) serveLegacy(s *Session, br *bufio.Reader) {
	s.conn.Write([]byte(`{"event":"error","payload":{"code":"legacy_disabled","message":"classroom dialect not available"}}`))
	s.conn.Close()
}
