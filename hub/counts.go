package hub

import "sync"

// counts are per-key counters with a limit: subscriptions per identity,
// connections per address. The zero value is ready.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

// take adds one to key's count unless it is at max already.
func (c *counts) take(key string, max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] >= max {
		return false
	}
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[key]++
	return true
}

// give takes n off key's count.
func (c *counts) give(key string, n int) {
	if n == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[key] -= n; c.n[key] <= 0 {
		delete(c.n, key)
	}
}

// get returns key's count.
func (c *counts) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}
