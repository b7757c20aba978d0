//go:build !unix

package hub

func (h *Hub) checkFileLimit() {}
