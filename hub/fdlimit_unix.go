//go:build unix

package hub

import "syscall"

// checkFileLimit fits the connection limits to the open-file limit (the Go
// runtime has already raised the soft limit to the hard one).
func (h *Hub) checkFileLimit() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	h.fitFileLimit(rl.Cur)
}
