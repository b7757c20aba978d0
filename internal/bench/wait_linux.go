package bench

import (
	"syscall"
	"time"
)

// shortWait blocks the thread for d with nanosleep, which the kernel times
// to tens of microseconds; the Go scheduler runs other goroutines meanwhile.
func shortWait(d time.Duration) {
	ts := syscall.NsecToTimespec(int64(d))
	_ = syscall.Nanosleep(&ts, nil)
}
