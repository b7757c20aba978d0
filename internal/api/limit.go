package api

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// keyedLimiter is a token bucket per key (a remote address, a token's
// digest). Its memory is bounded: past maxKeys it forgets the keys whose
// bucket is full again (idle callers), and if all are busy it starts over,
// which lets a burst through rather than refusing everyone.
type keyedLimiter struct {
	every   rate.Limit
	burst   int
	maxKeys int

	mu sync.Mutex
	m  map[string]*rate.Limiter
}

func newKeyedLimiter(perSecond float64, burst, maxKeys int) *keyedLimiter {
	return &keyedLimiter{every: rate.Limit(perSecond), burst: burst, maxKeys: maxKeys, m: map[string]*rate.Limiter{}}
}

// allow takes a token from key's bucket; when there is none it returns
// false and how long until there is.
func (l *keyedLimiter) allow(key string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim := l.m[key]
	if lim == nil {
		if len(l.m) >= l.maxKeys {
			l.forgetIdle(now)
		}
		lim = rate.NewLimiter(l.every, l.burst)
		l.m[key] = lim
	}
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *keyedLimiter) forgetIdle(now time.Time) {
	for k, lim := range l.m {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.m, k)
		}
	}
	if len(l.m) >= l.maxKeys {
		clear(l.m)
	}
}
