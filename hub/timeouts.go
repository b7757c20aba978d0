package hub

import "time"

// Every wait the hub bounds on its own, in one place. The waits an operator
// tunes are Config fields (HandshakeTimeout, Heartbeat, AckWait,
// ShutdownTimeout, ClassroomGrace); these are the rest. Each exists so that
// no client, no app and no slow engine can hold one of the hub's goroutines
// for ever; docs/OPERATIONS.md lists them with the configurable ones.
const (
	// HookTimeout is the deadline of the context every app hook gets
	// (OnConnect, OnPublish, OnSubscribe, OnDeliver): one deadline for all,
	// counted from when the hub starts running the hooks for one event.
	// Hooks run on a session's read loop (or a durable's delivery
	// goroutine): a hook that waits on the engine (the parcel dispatcher's
	// compare-and-set) must give up in time for the client's next frame,
	// well inside two heartbeats (Config.Heartbeat, 10 s by default).
	HookTimeout = 5 * time.Second

	// ServiceTimeout is the deadline of a request service (Host.Handle).
	// Services read views (an order's timeline, who is in a room), often
	// with several engine calls, and run off the read loop, so they get
	// twice a hook's time.
	ServiceTimeout = 10 * time.Second

	// storeTimeout bounds the engine's acknowledgement of one stored
	// publish (with SyncAlways: written and fsynced). Longer than a JetStream
	// leader election on a healthy cluster (a few seconds), so that a
	// failover delays a publish instead of failing it.
	storeTimeout = 10 * time.Second

	// engineCallTimeout bounds one JetStream API call made for a client:
	// looking up or creating a durable's consumer, starting to consume,
	// opening a subscription's history. The same reasoning as storeTimeout.
	engineCallTimeout = 10 * time.Second

	// durableSyncTimeout bounds how long a durable message waits, before
	// it is handed to a member, for the group sync that puts it on disk
	// (a sync takes milliseconds; a disk stuck longer than a stored publish
	// may wait has the message offered again after refusedRedelivery).
	durableSyncTimeout = storeTimeout

	// historyFetchWait is how long one fetch of a subscription's history
	// waits for messages the consumer said were pending.
	historyFetchWait = 2 * time.Second

	// historyConsumerIdle is how long the engine keeps a consumer made to
	// read a subscription's history when the hub does not delete it (it
	// died meanwhile): longer than the read itself may take.
	historyConsumerIdle = 2 * engineCallTimeout

	// ackConfirmTimeout bounds a confirmed ACK (the engine's answer to a
	// double ack): an acknowledgement is one small write.
	ackConfirmTimeout = 5 * time.Second

	// consumerDrainTimeout bounds the stop of a durable's pull loop when its
	// last local member leaves: what its pull requests were bringing goes
	// back through the handler (and is handed back).
	consumerDrainTimeout = 5 * time.Second

	// sharedDurableIdle is how long JetStream keeps a shared durable's
	// consumer (a name the session's permissions share: a work queue, a
	// store's mailbox) with nobody subscribed: a vendor offline for weeks is
	// still told of its deliveries, a durable name used once does not stay
	// for ever. A session's own durables have Config.DurableIdle.
	sharedDurableIdle = 30 * 24 * time.Hour

	// pullWait is how long a durable's pull request at the best priority
	// waits at the server for messages (it cannot improve: it may wait
	// long); pullWaitBusy a request at a lower priority, so that one sent
	// while the hub's members were busy does not linger (hub/dispatch.go).
	pullWait     = 30 * time.Second
	pullWaitBusy = 5 * time.Second

	// writeTimeout bounds one batch written to a client: a peer whose
	// socket takes nothing for this long is gone (the queue limit,
	// Config.MaxPending, catches the one that reads too slowly).
	writeTimeout = 10 * time.Second

	// closeFlushTimeout is how long the last frames of a closing session
	// (a fatal ERR, the BYE of a shutdown) get to be written.
	closeFlushTimeout = 2 * time.Second

	// greetTimeout bounds the writes made before a session's write loop
	// exists: the WELCOME, or the fatal ERR refusing a handshake.
	greetTimeout = 2 * time.Second

	// refuseTimeout bounds writing a refusal to a connection the hub does
	// not admit (over the connection limit, plain text on the TLS port, a
	// refused classroom client) and reading what it still sends before the
	// close (so the close does not reset the refusal away).
	refuseTimeout = time.Second

	// writerLinger is how long a session's write loop with nothing to write
	// waits for more before it ends (the next frame starts another).
	writerLinger = time.Second

	// eventFlushInterval is how often buffered EVENT lines are written out:
	// often enough to read live, without a write per event.
	eventFlushInterval = 50 * time.Millisecond

	// acceptBackoffMax caps the pause after a failed accept (out of file
	// descriptors): back off instead of spinning.
	acceptBackoffMax = time.Second

	// httpReadHeaderTimeout bounds reading an HTTP request's headers (the
	// whole request has Config.HTTPRequestTimeout).
	httpReadHeaderTimeout = 5 * time.Second

	// headroomHold is how long a connection over the HTTP port's limits,
	// let in for one health check, may stay open: one request's worth (as
	// long as a request header may take), so that a client cannot keep the
	// headroom for itself.
	headroomHold = httpReadHeaderTimeout

	// streamScrapeTimeout bounds the engine request a /metrics scrape makes
	// for the streams' sizes.
	streamScrapeTimeout = 2 * time.Second

	// refusedRedelivery is how long a durable message nobody may take now
	// (every member refused it, it is outside the group's pattern, or the
	// sync that would make it durable failed) waits before the engine
	// offers it again.
	refusedRedelivery = time.Second
)

// Waits of the text dialect (hub/text_conn.go).
const (
	// textLoginTimeout is how long a text client of a hub with
	// authentication has to send "@token TOKEN": a person typing or
	// pasting it, so far longer than a program's handshake.
	textLoginTimeout = time.Minute

	// textJoinDelay is how long after its session starts a text client that
	// has typed nothing yet is made ready (TextHandler.Ready: chat joins
	// the lobby). A first line coming sooner — a script's "@nickname
	// carol" — is handled before, so that nobody hears of the guest name.
	textJoinDelay = 2 * time.Second
)

// Pacing of the classroom dialect (hub/classroom_codec.go).
const (
	// classroomWriteGap spaces the objects written to one classroom
	// connection. Classroom clients parse each 'data' event as one object;
	// objects written back to back can reach them in one read when they
	// are slow to read, and break JSON.parse. The gap makes that unlikely;
	// nothing can make it impossible, the dialect has no framing.
	classroomWriteGap = 100 * time.Millisecond
)
