package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// nats-server 2.15's atomic batch publish, as measured and checked for
// docs/PERFORMANCE.md ("Group commit: what nats-server 2.15 offers"). CAPS
// does not use it (a batch costs what 10–30 plain publishes cost); these
// tests pin down what the document says of it, so a nats-server upgrade that
// changes it shows up here.

// publishAtomicBatch sends msgs as one atomic batch (headers by hand: nats.go
// has no API for it) to a stream with allow_atomic, and returns the answer
// to the commit.
func publishAtomicBatch(nc *nats.Conn, msgs []*nats.Msg) (*batchAck, error) {
	id := uuid.NewString()
	for i, m := range msgs {
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set("Nats-Batch-Id", id)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			// No reply subject: the stream sends no answer for it.
			if err := nc.PublishMsg(m); err != nil {
				return nil, err
			}
		}
	}
	commit := msgs[len(msgs)-1]
	commit.Header.Set("Nats-Batch-Commit", "1")
	resp, err := nc.RequestMsg(commit, 5*time.Second)
	if err != nil {
		return nil, err
	}
	var ack batchAck
	if err := json.Unmarshal(resp.Data, &ack); err != nil {
		return nil, err
	}
	if ack.Error != nil {
		return nil, ack.Error
	}
	if ack.Batch != id || ack.Count != len(msgs) {
		return nil, fmt.Errorf("answer %s for batch %s of %d", resp.Data, id, len(msgs))
	}
	return &ack, nil
}

// batchAck is the answer to a batch's commit: the last message's PubAck with
// the batch id and count, or an error.
type batchAck struct {
	Error    *jetstream.APIError `json:"error,omitempty"`
	Stream   string              `json:"stream"`
	Sequence uint64              `json:"seq"`
	Batch    string              `json:"batch"`
	Count    int                 `json:"count"`
}

// batchEngine: an embedded engine whose server fsyncs every write itself, and
// a stream "A" on a.> that takes atomic batches.
func batchEngine(tb testing.TB) *Engine {
	tb.Helper()
	ctx := context.Background()
	e, err := Start(ctx, Config{DataDir: tb.TempDir(), Name: "batch", Logger: quiet(), SyncAlways: true})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(e.Close)
	if _, err := e.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "A", Subjects: []string{"a.>"},
		Storage: jetstream.FileStorage, AllowAtomicPublish: true, Duplicates: time.Minute}); err != nil {
		tb.Fatal(err)
	}
	return e
}

func batchMsg(subject, id string) *nats.Msg {
	m := &nats.Msg{Subject: subject, Data: []byte("{}"), Header: nats.Header{}}
	if id != "" {
		m.Header.Set(nats.MsgIdHdr, id)
	}
	return m
}

func streamA(tb testing.TB, e *Engine) uint64 {
	s, err := e.JS.Stream(context.Background(), "A")
	if err != nil {
		tb.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		tb.Fatal(err)
	}
	return info.State.Msgs
}

func TestAtomicBatchFindings(t *testing.T) {
	e := batchEngine(t)

	// Stored contiguously; the answer carries the last sequence.
	ack, err := publishAtomicBatch(e.NC, []*nats.Msg{batchMsg("a.1", "one"), batchMsg("a.2", "two"), batchMsg("a.3", "")})
	if err != nil || ack.Sequence != 3 {
		t.Fatalf("a batch of 3: %+v, %v", ack, err)
	}

	// One message id already stored refuses the whole batch, with 10201,
	// not the duplicate acknowledgement a plain publish gets.
	_, err = publishAtomicBatch(e.NC, []*nats.Msg{batchMsg("a.4", "four"), batchMsg("a.1", "one")})
	if apiErrorCode(err) != 10201 || streamA(t, e) != 3 {
		t.Fatalf("a batch with a stored id: %v, %d messages; want 10201 and nothing stored", err, streamA(t, e))
	}

	// One failed expectation refuses the whole batch, with 10071, and the
	// answer does not say which message failed.
	stale := batchMsg("a.5", "")
	stale.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "99")
	_, err = publishAtomicBatch(e.NC, []*nats.Msg{batchMsg("a.6", ""), stale})
	if !IsWrongLastSequence(err) || streamA(t, e) != 3 {
		t.Fatalf("a batch with a stale expectation: %v; want 10071 and nothing stored", err)
	}

	// The hazard: expectations are checked against what was stored before
	// the batch, so two transitions of one order expecting its last
	// sequence over a wildcard are BOTH stored when they share a batch.
	one, two := batchMsg("a.o1.assigned", ""), batchMsg("a.o1.assigned", "")
	for _, m := range []*nats.Msg{one, two} {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, "0")
		m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, "a.o1.>")
	}
	if _, err := publishAtomicBatch(e.NC, []*nats.Msg{one, two}); err != nil || streamA(t, e) != 5 {
		t.Errorf("racing transitions in one batch: %v, %d messages; nats-server now refuses them: update docs/PERFORMANCE.md", err, streamA(t, e))
	}
}
