//go:build unix

package hub

import "syscall"

// checkFileLimit warns when the connection limits add up to more than the
// process may open: the accept would then fail on the file-descriptor limit
// before a limit refuses anyone with a clear error, and /healthz and /readyz
// would be out of reach. The Go runtime has already raised the soft limit
// to the hard one.
func (h *Hub) checkFileLimit() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	need := uint64(h.cfg.MaxConns) + fdReserve
	if h.cfg.HTTPAddr != "off" {
		need += uint64(h.cfg.HTTPMaxConns) + healthHeadroom
	}
	if rl.Cur < need {
		h.log.Warn("the open-file limit is below what the connection limits allow: lower --max-conns and --http-max-conns, or raise the limit (LimitNOFILE, ulimit -n)",
			"nofile", rl.Cur, "max_conns", h.cfg.MaxConns, "http_max_conns", h.cfg.HTTPMaxConns, "needed", need)
	}
}
