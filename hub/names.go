package hub

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/caps-hub/caps/internal/engine"
	"github.com/caps-hub/caps/protocol"
)

// Names and resuming (issue 12, item 9). On an open hub anyone may claim
// any name, so two things keep one client from becoming another:
//
//   - Resuming takes a secret only the original client received: the
//     WELCOME carries a resume token (the session id, signed by the
//     cluster's key and bound to the role and name), and a HELLO resumes
//     a session only with that token. Session ids alone are visible to
//     loggers and admins (connection events) and prove nothing.
//   - For the roles an app declares exclusive (Host.ExclusiveName: the
//     parcel app's drivers, whose name is who holds a parcel), a name a
//     live session holds anywhere in the cluster is refused to another
//     connection (name_taken), unless that connection resumes the session.
//     Claims live in the CAPS_NAMES bucket, rewritten every
//     nameClaimTTL/3 while the session lives; one not rewritten for
//     nameClaimTTL (its hub died) may be taken.
//
// Chat keeps its own claims (internal/chat), over the same resume tokens.

// Buckets of the hub's own.
const (
	// NamesBucket holds who holds an exclusive name.
	NamesBucket = "CAPS_NAMES"
	// hubBucket holds the cluster's resume-token key.
	hubBucket = "CAPS_HUB"
)

// nameClaimTTL is how long a claim lasts without being rewritten: the time
// a name stays held after its hub died without releasing it.
const nameClaimTTL = 30 * time.Second

// nameClaim is the value of a CAPS_NAMES key.
type nameClaim struct {
	Session string    `json:"session"`
	Hub     string    `json:"hub"`
	Since   time.Time `json:"since"`
}

// names keeps this hub's claims and the resume-token key.
type names struct {
	h   *Hub
	kv  jetstream.KeyValue
	key []byte // HMAC key of resume tokens, the same on every hub

	exclusive map[string]bool // roles whose names are exclusive (set before Start returns)

	mu   sync.Mutex
	held map[*Session]uint64 // session → revision of its claim
	// mine are the ids of this hub's sessions that hold or are claiming
	// a name: a claim of this hub's by a session not among them is a
	// leftover (its release failed) that may be taken.
	mine map[string]bool
}

// ExclusiveName makes the names of role exclusive: while a session of role
// holds a name (anywhere in the cluster), another connection asking for it
// is refused with name_taken, unless it resumes that session with its
// resume token. For roles whose name is who the client is to the app (the
// parcel app's drivers: an order is held by a driver's name). Call it from
// Setup.
func (x *Host) ExclusiveName(role string) { x.h.names.exclusive[role] = true }

// setupNames creates the buckets and loads (or makes) the resume-token key.
func (h *Hub) setupNames(ctx context.Context) error {
	kv, err := h.eng.EnsureKV(ctx, engine.KVSpec{
		Bucket: NamesBucket,
		// Stale claims are judged by age (nameClaimTTL); the bucket drops
		// leftovers well after.
		TTL:          10 * nameClaimTTL,
		MaxBytes:     namesBucketBytes,
		MaxValueSize: 512,
	})
	if err != nil {
		return fmt.Errorf("names bucket: %w", err)
	}
	h.names.kv = kv
	secrets, err := h.eng.EnsureKV(ctx, engine.KVSpec{Bucket: hubBucket, MaxBytes: 64 << 10, MaxValueSize: 1 << 10})
	if err != nil {
		return fmt.Errorf("hub bucket: %w", err)
	}
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	// Retried while a cluster elects the new bucket's leader.
	err = engine.Retry(ctx, func(ctx context.Context) error {
		if _, err := secrets.Create(ctx, "resume-key", key); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return err
		}
		e, err := secrets.Get(ctx, "resume-key") // ours, or the one another hub made first
		if err != nil {
			return err
		}
		h.names.key = e.Value()
		return nil
	})
	if err != nil {
		return fmt.Errorf("resume key: %w", err)
	}
	return nil
}

// namesBucketBytes bounds CAPS_NAMES: a claim is about 150 bytes.
const namesBucketBytes = 16 << 20

// resumeToken is what the WELCOME of session id (role, name) carries: the
// id and a MAC over it, the role and the name.
func (n *names) resumeToken(id, role, name string) string {
	return id + "." + n.mac(id, role, name)
}

func (n *names) mac(id, role, name string) string {
	m := hmac.New(sha256.New, n.key)
	m.Write([]byte("caps resume\x00" + id + "\x00" + role + "\x00" + name))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:18])
}

// resumes returns the session id a HELLO's resume token names, if the
// token was given to that session, for this role and name; "" otherwise
// (a bare session id, a forged or another identity's token).
func (n *names) resumes(token, role, name string) string {
	i := strings.LastIndexByte(token, '.')
	if i <= 0 || len(token) > 256 {
		return ""
	}
	id, sig := token[:i], token[i+1:]
	if !hmac.Equal([]byte(sig), []byte(n.mac(id, role, name))) {
		return ""
	}
	return id
}

func claimKey(role, name string) string { return role + "." + name }

// claim makes s the holder of its name, if its role's names are exclusive.
func (n *names) claim(ctx context.Context, s *Session) error {
	if !n.exclusive[s.info.Role] {
		return nil
	}
	key := claimKey(s.info.Role, s.info.Name)
	val, _ := json.Marshal(nameClaim{Session: s.info.ID, Hub: n.h.cfg.Name, Since: s.info.Since})
	n.mu.Lock()
	n.mine[s.info.ID] = true
	n.mu.Unlock()
	err := n.tryClaim(ctx, s, key, val)
	if err != nil {
		n.mu.Lock()
		delete(n.mine, s.info.ID)
		n.mu.Unlock()
	}
	return err
}

func (n *names) tryClaim(ctx context.Context, s *Session, key string, val []byte) error {
	for range 4 {
		rev, err := n.kv.Create(ctx, key, val)
		if err == nil {
			n.hold(s, rev)
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return n.claimError(s, err)
		}
		e, err := n.kv.Get(ctx, key)
		if engine.IsNotFound(err) {
			continue // released meanwhile
		}
		if err != nil {
			return n.claimError(s, err)
		}
		var old nameClaim
		_ = json.Unmarshal(e.Value(), &old)
		resumed := s.info.Resume != "" && old.Session == s.info.Resume
		n.mu.Lock()
		gone := old.Hub == n.h.cfg.Name && !n.mine[old.Session] // ours, and its session ended
		n.mu.Unlock()
		stale := gone || time.Since(e.Created()) > nameClaimTTL
		if !resumed && !stale {
			return Reject(protocol.CodeNameTaken, fmt.Sprintf("%s %s is connected already (on hub %s); a second connection under the name is refused, unless it resumes that session",
				s.info.Role, s.info.Name, old.Hub))
		}
		rev, err = n.kv.Update(ctx, key, val, e.Revision())
		if err == nil {
			n.hold(s, rev)
			if resumed && old.Hub == n.h.cfg.Name {
				// Its client is this connection now (the old one is dead, or
				// soon will be): a resumed session elsewhere is closed by its
				// hub's next refresh.
				if prev := n.h.sessionByID(old.Session); prev != nil {
					prev.fail(protocol.CodeNameTaken, "this session was resumed by another connection")
				}
			}
			return nil
		}
		// Changed between Get and Update: look again.
	}
	return Reject(protocol.CodeUnavailable, fmt.Sprintf("claim the name %s: it keeps changing; retry", s.info.Name))
}

func (n *names) claimError(s *Session, err error) error {
	if engine.IsFull(err) {
		n.h.log.Warn("names bucket full: new names refused", "role", s.info.Role, "name", s.info.Name)
		return Reject(protocol.CodeStoreFull, "the hub holds as many names as it may; retry later")
	}
	return Reject(protocol.CodeUnavailable, fmt.Sprintf("cannot check that the name %s is free (engine: %v); retry", s.info.Name, err))
}

func (n *names) hold(s *Session, rev uint64) {
	n.mu.Lock()
	n.held[s] = rev
	n.mu.Unlock()
}

// release gives s's name back, unless another session has taken it over.
func (n *names) release(s *Session) {
	n.mu.Lock()
	rev, ok := n.held[s]
	delete(n.held, s)
	delete(n.mine, s.info.ID)
	n.mu.Unlock()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), engineCallTimeout)
	defer cancel()
	err := n.kv.Delete(ctx, claimKey(s.info.Role, s.info.Name), jetstream.LastRevision(rev))
	if err != nil && !isWrongRevision(err) {
		n.h.log.Debug("release name", "name", s.info.Name, "err", err)
	}
}

// refreshLoop rewrites this hub's claims every nameClaimTTL/3, so that they
// do not go stale. A session whose claim another took over (it resumed the
// session elsewhere) is closed: its client is now the other connection.
func (n *names) refreshLoop(ctx context.Context) {
	t := time.NewTicker(nameClaimTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n.mu.Lock()
		held := make(map[*Session]uint64, len(n.held))
		for s, rev := range n.held {
			held[s] = rev
		}
		n.mu.Unlock()
		rctx, cancel := context.WithTimeout(ctx, nameClaimTTL/3)
		for s, rev := range held {
			n.refresh(rctx, s, rev)
		}
		cancel()
	}
}

// refresh rewrites s's claim (written at revision rev). A claim another
// session has taken (the client resumed elsewhere) closes s; one that
// vanished (dropped as stale while the engine was away) is made again.
func (n *names) refresh(ctx context.Context, s *Session, rev uint64) {
	key := claimKey(s.info.Role, s.info.Name)
	val, _ := json.Marshal(nameClaim{Session: s.info.ID, Hub: n.h.cfg.Name, Since: s.info.Since})
	nrev, err := n.kv.Update(ctx, key, val, rev)
	if isWrongRevision(err) {
		var old nameClaim
		e, gerr := n.kv.Get(ctx, key)
		switch {
		case engine.IsNotFound(gerr):
			nrev, err = n.kv.Create(ctx, key, val)
		case gerr == nil && json.Unmarshal(e.Value(), &old) == nil && old.Session != s.info.ID:
			n.mu.Lock()
			delete(n.held, s)
			delete(n.mine, s.info.ID)
			n.mu.Unlock()
			s.fail(protocol.CodeNameTaken, "this session was resumed by another connection")
			return
		case gerr == nil:
			nrev, err = n.kv.Update(ctx, key, val, e.Revision())
		default:
			err = gerr
		}
	}
	if err != nil {
		n.h.log.Debug("refresh name", "name", s.info.Name, "err", err)
		return
	}
	n.mu.Lock()
	if _, still := n.held[s]; still {
		n.held[s] = nrev
	}
	n.mu.Unlock()
}

// isWrongRevision reports whether err is the engine refusing a write
// guarded by a revision that is no longer the key's last.
func isWrongRevision(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}
