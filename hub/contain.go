package hub

import (
	"fmt"
	"runtime/debug"

	"github.com/caps-hub/caps/protocol"
)

// Isolation: a bug in the handling of one client must cost that client,
// not the process and everyone on it. Where a panic may be contained:
//
//   - the apps' code the hub calls — hooks (identify, connect, publish,
//     store, subscribe, unsubscribe, deliver, disconnect), services, the
//     classroom router and the small functions an app hands over (event
//     names, a classroom delivery's ack key, a durable member's load). The
//     hub holds none of its locks while it runs them (but for the load
//     hook, a lookup run under its durable group's lock, which the hub
//     keeps whole), so a panic leaves the hub's state whole:
//     the operation it was for fails with an "internal" error (a deliver
//     hook's: the message goes to another member), and the session goes on;
//   - a session's read loop as a whole (a dialect turning bytes into calls
//     of the session API): the session is closed with a fatal "internal"
//     error and cleaned up as after any disconnect. The read loop holds
//     hub locks only around map and slice updates that do not call out.
//
// Not contained: the hub's shared machinery — the router's fan-out and a
// durable's hand-over, which run under the locks of state every session
// shares. A panic there is a bug that must not be papered over: the process
// ends with its stack, and its supervisor restarts it (durable messages
// not acknowledged are delivered again).
//
// A contained panic is logged at error level with its stack and counted
// in caps_panics_total{where}.

// Where a contained panic happened (caps_panics_total's label).
const (
	inPublishHook     = "publish_hook"
	inStoreHook       = "store_hook"
	inSubscribeHook   = "subscribe_hook"
	inUnsubscribeHook = "unsubscribe_hook"
	inConnectHook     = "connect_hook"
	inDisconnectHook  = "disconnect_hook"
	inDeliverHook     = "deliver_hook"
	inIdentifyHook    = "identify_hook"
	inService         = "service"
	inClassroomRoute  = "classroom_route"
	inAppFunc         = "app_func"
	inSession         = "session"
	inStoredPublish   = "stored_publish"
)

// contained is called (deferred) with recover()'s value: a panic is logged
// and counted, and the error for the client returned; nil if none.
func (h *Hub) contained(where string, r any) error {
	if r == nil {
		return nil
	}
	h.metrics.panics.WithLabelValues(where).Inc()
	h.log.Error("panic contained to one session's operation", "where", where, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
	return Reject(protocol.CodeInternal, fmt.Sprintf("internal error (in %s); it is logged for the hub's operators", where))
}

// contain runs fn, turning a panic into an internal error (contained).
func (h *Hub) contain(where string, fn func() error) (err error) {
	defer func() {
		if e := h.contained(where, recover()); e != nil {
			err = e
		}
	}()
	return fn()
}
