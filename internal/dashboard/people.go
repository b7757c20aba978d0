package dashboard

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/caps-hub/caps/hub"
)

// Person is one connected client as the People panel shows it.
type Person struct {
	hub.SessionInfo
	// Load is, for a driver, how many orders it holds and has not
	// delivered (across all its sessions and hubs).
	Load *int `json:"load,omitempty"`
}

// PeopleReply answers the people service.
type PeopleReply struct {
	People []Person `json:"people"`
	// Hubs lists the hubs that answered; a hub that did not answer in time
	// is missing, and so are its clients.
	Hubs []string `json:"hubs"`
	// Loads is every driver's in-flight orders, connected or not.
	Loads map[string]int `json:"loads"`
}

// sessionsSubject is the engine subject on which every hub's dashboard
// answers with its sessions. It lies outside the prefix of CAPS topics, so
// no client can publish or subscribe to it.
const sessionsSubject = "caps.dashboard.sessions"

// hubSessions is one hub's answer on sessionsSubject.
type hubSessions struct {
	Hub      string            `json:"hub"`
	Sessions []hub.SessionInfo `json:"sessions"`
}

// answerSessions makes this hub answer the other hubs' requests for its
// sessions.
func answerSessions(nc *nats.Conn, host *hub.Host) (*nats.Subscription, error) {
	return nc.Subscribe(sessionsSubject, func(m *nats.Msg) {
		b, err := json.Marshal(hubSessions{Hub: host.HubName(), Sessions: host.Sessions()})
		if err == nil {
			_ = m.Respond(b)
		}
	})
}

// gatherSessions asks every hub on the engine for its sessions and collects
// the answers: until quiet passes without a new one after the first, or wait
// in all. Hubs answer in milliseconds; quiet only bounds how long a page
// waits for a hub that is slow or gone.
func gatherSessions(ctx context.Context, nc *nats.Conn, wait, quiet time.Duration) ([]hubSessions, error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(sessionsSubject, inbox, nil); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var out []hubSessions
	for {
		next := ctx
		var stop context.CancelFunc = func() {}
		if len(out) > 0 {
			next, stop = context.WithTimeout(ctx, quiet)
		}
		m, err := sub.NextMsgWithContext(next)
		stop()
		if err != nil {
			if len(out) > 0 || ctx.Err() != nil {
				return out, nil
			}
			return nil, err
		}
		var hs hubSessions
		if json.Unmarshal(m.Data, &hs) == nil {
			out = append(out, hs)
		}
	}
}

// people builds the People panel from every hub's sessions and the drivers'
// loads.
func people(all []hubSessions, loads map[string]int) PeopleReply {
	r := PeopleReply{People: []Person{}, Hubs: []string{}, Loads: loads}
	for _, hs := range all {
		r.Hubs = append(r.Hubs, hs.Hub)
		for _, s := range hs.Sessions {
			p := Person{SessionInfo: s}
			if s.Role == "driver" {
				n := loads[s.Name]
				p.Load = &n
			}
			r.People = append(r.People, p)
		}
	}
	slices.Sort(r.Hubs)
	slices.SortFunc(r.People, func(a, b Person) int {
		if c := strings.Compare(a.Role, b.Role); c != 0 {
			return c
		}
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return a.Since.Compare(b.Since)
	})
	return r
}
