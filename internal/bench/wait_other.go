//go:build !linux

package bench

import "time"

// shortWait yields the processor once; the pacer calls it until d has passed.
func shortWait(time.Duration) { spinYield() }
