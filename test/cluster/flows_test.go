package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caps-hub/caps/client"
	"github.com/caps-hub/caps/internal/chat"
	"github.com/caps-hub/caps/internal/hubtest"
	"github.com/caps-hub/caps/protocol"
)

// rig is a NATS cluster with two hubs on it. nats is nil when the hubs'
// embedded servers are the cluster (a hub's NATS node dies with the hub).
type rig struct {
	nats natsCluster
	a, b *runningHub
}

// runFlows runs every flow on r, the destructive ones last: a NATS node is
// shut down, then hub A is.
func runFlows(t *testing.T, r *rig) {
	steps := []struct {
		name string
		fn   func(*testing.T, *rig)
	}{
		{"StreamsReplicated", flowReplicated},
		{"LiveAcrossHubs", flowLive},
		{"QueueGroupAcrossHubs", flowQueueGroup},
		{"LiveOnceInOrderAcrossHubs", flowLiveOnceInOrder},
		{"DurableOnceAcrossHubs", flowDurableOnce},
		{"ParcelsVendorAToDriverB", flowParcelsVendorAToDriverB},
		{"ParcelsAcrossHubs", flowParcels},
		{"OrderRaceAcrossHubs", flowOrderRace},
		{"FairDispatchAcrossHubs", flowFairDispatch},
		{"ChatAcrossHubs", flowChat},
		{"NATSNodeDiesMidRun", flowNodeDies},
		{"HubDiesClientsFailOver", flowHubDies},
	}
	for _, s := range steps {
		if s.name == "NATSNodeDiesMidRun" && r.nats == nil {
			continue // the hub's own NATS node: HubDiesClientsFailOver covers it
		}
		if !t.Run(s.name, func(t *testing.T) { s.fn(t, r) }) {
			// Later steps build on a healthy cluster; stop at the first failure.
			t.FailNow()
		}
	}
}

// flowReplicated: the hubs chose 3 replicas for every stream and bucket,
// and the buckets answer reads from their leader (no stale reads).
func flowReplicated(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	js := r.a.apps.host.JetStream()
	for _, name := range []string{"CAPS_CLIENTS", "CAPS_PARCELS", "KV_CAPS_ORDER_SECRETS", "CHAT_ROOMS", "KV_CHAT_PRESENCE", "CLUSTER_JOBS"} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Errorf("stream %s: %v", name, err)
			continue
		}
		c := s.CachedInfo().Config
		if c.Replicas != 3 {
			t.Errorf("stream %s has %d replicas, want 3", name, c.Replicas)
		}
		if c.AllowDirect {
			t.Errorf("stream %s answers direct gets from any replica (stale reads)", name)
		}
	}
}

// flowLive: a live (not stored) topic published on hub A reaches a
// subscriber on hub B.
func flowLive(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	sub := dial(t, "live-sub", protocol.RoleClient, r.b.Addr())
	pub := dial(t, "live-pub", protocol.RoleClient, r.a.Addr())
	got := newCounter()
	if _, err := sub.Subscribe(ctx, "news.cluster", func(m *client.Msg) { got.add(string(m.Payload), "b") }); err != nil {
		t.Fatal(err)
	}
	// B's interest reaches A's NATS node over the routes a moment after the
	// SUB is answered: probe until it has.
	hubtest.Until(t, flowTimeout, "interest of hub B to reach hub A", func() bool {
		if _, err := pub.Publish(ctx, "news.cluster", []byte("probe")); err != nil {
			t.Logf("probe: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
		return got.has("probe")
	})
	var keys []string
	for i := range 20 {
		k := fmt.Sprintf("m%d", i)
		keys = append(keys, k)
		if _, err := pub.Publish(ctx, "news.cluster", []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, flowTimeout, "20 live messages across hubs", func() bool { return got.hasAll(keys) })
	if d := got.dups(); len(d) > 1 || (len(d) == 1 && d["probe"] == nil) {
		t.Errorf("live messages delivered twice: %v", d)
	}
}

// flowQueueGroup: one member of a queue group on each hub; each message goes
// to exactly one of them, whichever hub it was published on.
func flowQueueGroup(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	got := newCounter()
	for _, h := range []*runningHub{r.a, r.b} {
		c := dial(t, "q-"+h.name, protocol.RoleClient, h.Addr())
		who := h.name
		if _, err := c.Subscribe(ctx, "work.q", func(m *client.Msg) { got.add(string(m.Payload), who) }, client.Queue("qworkers")); err != nil {
			t.Fatal(err)
		}
	}
	pubA := dial(t, "q-pub-a", protocol.RoleClient, r.a.Addr())
	pubB := dial(t, "q-pub-b", protocol.RoleClient, r.b.Addr())
	// Wait until both hubs' queue subscriptions are known cluster-wide:
	// probes from either side reach the group.
	for i, p := range []*client.Conn{pubA, pubB} {
		hubtest.Until(t, flowTimeout, "the queue group to be known cluster-wide", func() bool {
			k := fmt.Sprintf("probe%d", i)
			_, _ = p.Publish(ctx, "work.q", []byte(k))
			time.Sleep(20 * time.Millisecond)
			return got.has(k)
		})
	}
	var keys []string
	for i := range 100 {
		k := fmt.Sprintf("job%d", i)
		keys = append(keys, k)
		p := pubA
		if i%2 == 1 {
			p = pubB
		}
		if _, err := p.Publish(ctx, "work.q", []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, flowTimeout, "100 queue messages", func() bool { return got.hasAll(keys) })
	for k, by := range got.dups() {
		if len(k) > 3 && k[:3] == "job" {
			t.Errorf("%s delivered to %d members of the group: %v", k, len(by), by)
		}
	}
	t.Logf("queue group deliveries per hub: %v", got.byWho())
}

// flowLiveOnceInOrder: a live topic with publishers on both hubs, plain
// subscribers on both, and a queue group with two members on hub A (the
// publisher's hub, for half the messages) and one on hub B. A hub delivers
// its own publishers' messages to its subscribers directly and the other
// hub's through the engine: each plain subscription still gets each
// publisher's messages once and in order, and the group gets each message
// once in the whole cluster.
func flowLiveOnceInOrder(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	const topic, n = "order.live", 200
	type sub struct {
		name string
		mu   sync.Mutex
		got  []string
	}
	var plain []*sub
	group := newCounter()
	for _, h := range []*runningHub{r.a, r.b} {
		s := &sub{name: "plain-" + h.name}
		plain = append(plain, s)
		c := dial(t, s.name, protocol.RoleClient, h.Addr())
		if _, err := c.Subscribe(ctx, topic, func(m *client.Msg) {
			s.mu.Lock()
			s.got = append(s.got, string(m.Payload))
			s.mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
	}
	for i, h := range []*runningHub{r.a, r.a, r.b} {
		who := fmt.Sprintf("member%d-%s", i, h.name)
		c := dial(t, who, protocol.RoleClient, h.Addr())
		if _, err := c.Subscribe(ctx, topic, func(m *client.Msg) { group.add(string(m.Payload), who) }, client.Queue("ordered")); err != nil {
			t.Fatal(err)
		}
	}
	pubs := map[string]*client.Conn{
		"a": dial(t, "pub-a", protocol.RoleClient, r.a.Addr()),
		"b": dial(t, "pub-b", protocol.RoleClient, r.b.Addr()),
	}
	// Every subscription's interest must have reached the other hub's
	// engine node: probes from both sides, until each plain subscriber and
	// the group has one from each.
	hubtest.Until(t, flowTimeout, "both hubs' subscriptions known cluster-wide", func() bool {
		for who, p := range pubs {
			_ = p.PublishAsync(topic, []byte("probe-"+who))
			_ = p.Flush(ctx)
		}
		for _, s := range plain {
			s.mu.Lock()
			a, b := slices.Contains(s.got, "probe-a"), slices.Contains(s.got, "probe-b")
			s.mu.Unlock()
			if !a || !b {
				return false
			}
		}
		return group.has("probe-a") && group.has("probe-b")
	})
	var keys []string
	var wg sync.WaitGroup
	for who, p := range pubs {
		for i := range n {
			keys = append(keys, fmt.Sprintf("%s:%d", who, i))
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				if err := p.PublishAsync(topic, fmt.Appendf(nil, "%s:%d", who, i)); err != nil {
					t.Errorf("publish on hub %s: %v", who, err)
					return
				}
			}
			if err := p.Flush(ctx); err != nil {
				t.Errorf("flush on hub %s: %v", who, err)
			}
		}()
	}
	wg.Wait()
	hubtest.Until(t, flowTimeout, "every message to the queue group", func() bool { return group.hasAll(keys) })
	for _, s := range plain {
		hubtest.Eventually(t, flowTimeout, s.name+" to get every message once, in order", func() error {
			s.mu.Lock()
			defer s.mu.Unlock()
			next := map[string]int{}
			for _, m := range s.got {
				who, num, ok := strings.Cut(m, ":")
				if !ok {
					continue // a probe
				}
				if i, _ := strconv.Atoi(num); i != next[who] {
					t.Fatalf("%s: from hub %s got message %d, want %d (out of order, lost or twice)", s.name, who, i, next[who])
				}
				next[who]++
			}
			if next["a"] != n || next["b"] != n {
				return fmt.Errorf("got %d from hub a and %d from hub b of %d each", next["a"], next["b"], n)
			}
			return nil
		})
	}
	for k, by := range group.dups() {
		if strings.Contains(k, ":") {
			t.Errorf("%s delivered to %d members of the group: %v", k, len(by), by)
		}
	}
	t.Logf("queue group deliveries per member: %v", group.byWho())
}

// worker is a durable subscriber that records what it processed. A hub
// that answers "unavailable" (a cluster still electing the leader of the
// durables bucket after a node died) is asked again, as a client would.
func subscribeWorker(ctx context.Context, t *testing.T, c *client.Conn, who, durable string, got *counter) *client.Subscription {
	t.Helper()
	var sub *client.Subscription
	hubtest.Eventually(t, 2*flowTimeout, who+"'s durable subscription", func() error {
		var err error
		sub, err = c.Subscribe(ctx, "jobs.>", func(m *client.Msg) {
			got.add(m.Key, who)
			// Ack and wait for the engine to confirm: from here the job is done.
			actx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := m.Ack(actx); err != nil {
				t.Logf("%s: ack %s: %v (it will be redelivered)", who, m.Key, err)
			}
		}, client.Durable(durable), client.ManualAck())
		var pe *protocol.Error
		if err != nil && !(errors.As(err, &pe) && pe.Code == protocol.CodeUnavailable) {
			t.Fatalf("%s: durable subscribe: %v", who, err)
		}
		return err
	})
	return sub
}

// flowDurableOnce: a durable shared by a worker on each hub; every stored
// job is processed, each by exactly one worker.
func flowDurableOnce(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	got := newCounter()
	for _, h := range []*runningHub{r.a, r.b} {
		c := dial(t, "w-"+h.name, protocol.RoleClient, h.Addr())
		subscribeWorker(ctx, t, c, h.name, "once", got)
	}
	pubA := dial(t, "d-pub-a", protocol.RoleClient, r.a.Addr())
	pubB := dial(t, "d-pub-b", protocol.RoleClient, r.b.Addr())
	var keys []string
	for i := range 100 {
		k := fmt.Sprintf("once-%d", i)
		keys = append(keys, k)
		p := pubA
		if i%2 == 1 {
			p = pubB
		}
		if _, err := p.Publish(ctx, "jobs.once", []byte(k), client.WithMsgID(k), client.WithDurable()); err != nil {
			t.Fatal(err)
		}
	}
	hubtest.Until(t, flowTimeout, "100 durable jobs processed", func() bool { return got.hasAll(keys) })
	if d := got.dups(); len(d) > 0 {
		t.Errorf("jobs processed more than once: %v", d)
	}
	t.Logf("durable jobs per hub: %v", got.byWho())
}

// flowNodeDies: workers on both hubs and a publisher; half way through, the
// NATS node hub A is connected to is shut down. Every publish the hub
// confirmed (stored) is processed; nothing acknowledged is lost.
func flowNodeDies(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*flowTimeout)
	defer cancel()
	got := newCounter()
	for _, h := range []*runningHub{r.a, r.b} {
		c := dial(t, "nd-"+h.name, protocol.RoleClient, h.Addr())
		subscribeWorker(ctx, t, c, h.name, "nodedies", got)
	}
	pub := dial(t, "nd-pub", protocol.RoleClient, r.a.Addr(), r.b.Addr())
	const n = 60
	var stored []string
	for i := range n {
		if i == n/3 {
			node := r.nats.NodeOf(r.a.name)
			if node < 0 {
				t.Fatalf("hub %s is connected to no NATS node", r.a.name)
			}
			t.Logf("shutting down NATS node %d (hub %s's) after %d jobs", node, r.a.name, i)
			r.nats.Stop(t, node)
		}
		k := fmt.Sprintf("nd-%d", i)
		start := time.Now()
		if err := publishUntilStored(ctx, pub, "jobs.nodedies", k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Logf("publish %s took %s (the cluster was recovering)", k, d.Round(time.Millisecond))
		}
		stored = append(stored, k)
	}
	start := time.Now()
	hubtest.Until(t, 2*flowTimeout, "every stored job processed after the node died", func() bool { return got.hasAll(stored) })
	t.Logf("all %d stored jobs processed %s after the last publish", n, time.Since(start).Round(time.Millisecond))
	if m := got.missing(stored); len(m) > 0 {
		t.Fatalf("lost: %v", m)
	}
	d := got.dups()
	t.Logf("jobs per hub: %v; redelivered after the failure (at least once, never lost): %d", got.byWho(), len(d))

	// Stored publishes and deliveries go on through stream leaders, but new
	// durables (consumers) need the cluster's metadata leader; when the dead
	// node held it, the survivors elect another within seconds (longer after
	// a SIGKILL than after a clean stop). The next steps create durables.
	start = time.Now()
	for _, h := range []*runningHub{r.a, r.b} {
		js := h.apps.host.JetStream()
		hubtest.Until(t, 2*flowTimeout, "the JetStream metadata leader, asked through "+h.name, func() bool {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err := js.AccountInfo(actx)
			return err == nil
		})
	}
	t.Logf("JetStream metadata leader answering %s after the last publish", time.Since(start).Round(time.Millisecond))
}

// flowHubDies: a worker and a publisher connected to hub A with hub B as
// their second address; hub A shuts down mid-run. Both carry on through B:
// the worker's durable subscription resumes there and every stored job is
// processed.
func flowHubDies(t *testing.T, r *rig) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*flowTimeout)
	defer cancel()
	got := newCounter()
	worker := dial(t, "hd-worker", protocol.RoleClient, r.a.Addr(), r.b.Addr())
	if worker.Addr() != r.a.Addr() {
		t.Fatalf("worker connected to %s, want hub A %s first", worker.Addr(), r.a.Addr())
	}
	subscribeWorker(ctx, t, worker, "worker", "hubdies", got)
	pub := dial(t, "hd-pub", protocol.RoleClient, r.a.Addr(), r.b.Addr())
	// Chat too: dora is on hub A (B second), erin on hub B.
	dora := joinChat(t, "dora", "failover", r.a.Addr(), r.b.Addr())
	erin := joinChat(t, "erin", "failover", r.b.Addr())
	dora.waitEvent(t, "erin join", func(e chat.Event) bool {
		return e.Kind == chat.EventPresence && e.Msg.Kind == chat.KindJoin && e.Msg.From == "erin"
	})
	const n = 40
	var stored []string
	var stopOnce sync.Once
	for i := range n {
		if i == n/2 {
			stopOnce.Do(func() {
				t.Logf("shutting down hub %s after %d jobs", r.a.name, i)
				r.a.Stop(t)
			})
		}
		k := fmt.Sprintf("hd-%d", i)
		if err := publishUntilStored(ctx, pub, "jobs.hubdies", k, []byte(k)); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, k)
	}
	hubtest.Until(t, 2*flowTimeout, "every stored job processed through hub B", func() bool { return got.hasAll(stored) })
	if worker.Addr() != r.b.Addr() || pub.Addr() != r.b.Addr() {
		t.Errorf("after hub A stopped: worker on %s, publisher on %s; want both on hub B %s", worker.Addr(), pub.Addr(), r.b.Addr())
	}
	hubtest.Until(t, flowTimeout, "dora's chat client to reconnect to hub B", func() bool { return dora.c.Hub() == r.b.Addr() })
	// Hub B may still be finding the chat buckets' leaders: "unavailable"
	// is a retry, as the chat client's user would.
	hubtest.Eventually(t, flowTimeout, "dora's message through hub B to be taken", func() error {
		err := dora.c.Say(ctx, "still here")
		var pe *protocol.Error
		if err != nil && !(errors.As(err, &pe) && pe.Code == protocol.CodeUnavailable) {
			t.Fatalf("dora after the failover: %v", err)
		}
		return err
	})
	erin.waitEvent(t, "dora's message through hub B", said("dora", "still here", false))
	t.Logf("redelivered across the failover (at least once, never lost): %d", len(got.dups()))
}
