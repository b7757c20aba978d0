package hub

// Internals the external tests (package hub_test) look at.

// CompiledPermissions is the compiled permission set a session of id gets.
func CompiledPermissions(h *Hub, id Identity) any { return h.permissionsOf(id) }

// SharedPermissionSets is how many compiled permission sets h keeps for
// sessions to share.
func SharedPermissionSets(h *Hub) int {
	h.perms.mu.Lock()
	defer h.perms.mu.Unlock()
	return len(h.perms.m)
}
