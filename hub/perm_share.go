package hub

import (
	"runtime"
	"strconv"
	"strings"
	"sync"
	"weak"
)

// sharedPerms hands out one compiled permission set for every session whose
// permissions come out the same (all clients of a role without
// placeholders, every connection of one token): 10,000 connections share
// one set instead of holding 10,000 copies, and the router's delivery check
// is made once per set and message instead of once per session. Entries go
// with the last session using them (weak pointers), so names a client
// makes up cannot grow it.
type sharedPerms struct {
	mu sync.Mutex
	m  map[string]weak.Pointer[perms]
}

// share returns the set equal to p that is in use, or p, which then is.
func (sp *sharedPerms) share(p *perms) *perms {
	key := p.key()
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if q := sp.m[key].Value(); q != nil {
		return q
	}
	if sp.m == nil {
		sp.m = map[string]weak.Pointer[perms]{}
	}
	sp.m[key] = weak.Make(p)
	runtime.AddCleanup(p, sp.forget, key)
	return p
}

// forget drops key once its set is gone, unless another has taken its place.
func (sp *sharedPerms) forget(key string) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if w, ok := sp.m[key]; ok && w.Value() == nil {
		delete(sp.m, key)
	}
}

// key says what p allows: two sets with the same key are the same.
func (p *perms) key() string {
	var b strings.Builder
	for _, list := range [][][]byte{p.pub, p.sub, p.denyPub, p.denySub} {
		b.WriteString(strconv.Itoa(len(list)))
		b.WriteByte(';')
		for _, pat := range list {
			b.WriteString(strconv.Itoa(len(pat)))
			b.WriteByte(':')
			b.Write(pat)
		}
	}
	b.WriteString(strconv.Itoa(len(p.durable)))
	b.WriteByte(';')
	for _, name := range p.durable {
		b.WriteString(strconv.Itoa(len(name)))
		b.WriteByte(':')
		b.WriteString(name)
	}
	return b.String()
}
