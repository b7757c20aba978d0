// CAPS dashboard: the page's entry point. It connects to the hub it was
// served by over /ws (the CAPS protocol, through the project's JS client),
// asks what this identity may see, and wires up the panels.
import { Hub, isAuthError } from './hub.js';
import { OrdersPanel, showTimeline } from './orders.js';
import { PeoplePanel } from './people.js';
import { TrafficPanel } from './traffic.js';
import { ChatPanel } from './chat.js';
import { $, errorText, randomId } from './util.js';

const TOKEN_KEY = 'caps-token';
const ORDERS_EVERY = 1000; // ms between order refreshes without events
const PEOPLE_EVERY = 5000;

const state = document.getElementById('conn-state');
const identity = document.getElementById('identity');
const signOut = document.getElementById('sign-out');
const login = document.getElementById('login');
const timeline = document.getElementById('timeline');

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || '';
}

function setState(s, text) {
  state.dataset.state = s;
  state.textContent = text || s;
}

/** askToken shows the token dialog and resolves with what was entered. */
function askToken(why) {
  document.getElementById('login-why').textContent = why;
  const form = document.getElementById('login-form');
  const input = document.getElementById('login-token');
  input.value = '';
  login.showModal();
  return new Promise((resolve) => {
    form.onsubmit = (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      (document.getElementById('login-remember').checked ? localStorage : sessionStorage).setItem(TOKEN_KEY, t);
      login.close();
      resolve(t);
    };
  });
}

/** connect opens the page's main connection, asking for a token while the
 * hub refuses. Without --auth the hub takes the page at its word: it
 * connects as an admin, which the open hub allows to see everything. */
async function connect() {
  let why = 'This hub runs with authentication. Paste your token (`caps token new` makes one).';
  // Ask for a token first on a hub that needs one, rather than be refused.
  const cfg = await fetch('dashboard/config.json').then((r) => r.json()).catch(() => ({}));
  if (cfg.auth && !token()) {
    setState('failed', 'needs a token');
    await askToken(why);
  }
  for (;;) {
    const t = token();
    try {
      setState('connecting', 'connecting…');
      return await Hub.open({
        role: 'admin', name: `dashboard-${randomId(6)}`, token: t,
        onState: (s) => setState(s, s),
      });
    } catch (err) {
      if (!isAuthError(err)) throw err;
      sessionStorage.removeItem(TOKEN_KEY);
      localStorage.removeItem(TOKEN_KEY);
      setState('failed', 'needs a token');
      if (t) why = `The hub refused that token (${errorText(err)}). Paste another.`;
      await askToken(why);
    }
  }
}

async function main() {
  let hub;
  try {
    hub = await connect();
  } catch (err) {
    setState('failed', `cannot connect: ${errorText(err)}`);
    return;
  }
  const request = (service, body) => hub.request(service, body);
  const hello = await request('dashboard.hello', {});
  identity.textContent = `${hello.role} ${hello.name}${hello.store && hello.store !== hello.name ? ` (${hello.store})` : ''} · hub ${hello.hub}`;
  signOut.hidden = hello.open;
  signOut.onclick = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    location.reload();
  };
  document.body.dataset.role = hello.role;
  document.body.classList.toggle('no-people', !hello.people);
  for (const n of document.querySelectorAll('[data-needs]')) n.hidden = !hello[n.dataset.needs];

  // Parcels.
  const orders = new OrdersPanel($('#parcels'), {
    request,
    onTrack: async (id) => {
      const notice = $('#timeline-notice');
      try {
        showTimeline(timeline, await request('parcel.track', { orderID: id }));
        notice.hidden = true;
      } catch (err) {
        notice.hidden = false;
        notice.textContent = `Could not load the timeline: ${errorText(err)}`;
      }
      if (!timeline.open) timeline.showModal();
    },
  });
  orders.setScope(hello.orders, hello.store);
  if (hello.orders !== 'none') {
    // The events that move orders, as far as this identity may hear them.
    const pattern = hello.orders === 'all' ? 'parcel.>' : `parcel.${hello.store}.>`;
    await hub.subscribe(pattern, () => orders.refresh()).catch((err) =>
      orders.show(`Live parcel events unavailable (${errorText(err)}); refreshing every second.`, true));
    orders.refresh();
    setInterval(() => orders.refresh(), ORDERS_EVERY);
    setInterval(() => orders.tick(), 1000);
  }

  // People and traffic, for those who may watch the hub's own events.
  let people = null;
  let traffic = null;
  if (hello.people) {
    people = new PeoplePanel($('#people'), { request });
    people.refresh();
    await hub.subscribe('client.>', () => people.poke()).catch(() => {});
    setInterval(() => people.refresh(), PEOPLE_EVERY);
  }
  if (hello.traffic) {
    traffic = new TrafficPanel($('#traffic'), { request });
    traffic.refresh();
    setInterval(() => traffic.refresh(), 1000);
  }

  // Chat, on a connection of its own; a chat token's page already is a
  // chat client (the hub would refuse its name a second time).
  new ChatPanel($('#chat'), {
    auth: !hello.open,
    open: hello.role === 'chat'
      ? async () => hub
      : ({ name, onState }) => Hub.open({ role: 'chat', name, token: token(), onState }),
  }).setAuth(!hello.open);

  hub.onReconnect(() => {
    // Maybe another hub (failover), maybe a restart: the panels catch up
    // (the orders' cursor tells the hub's index apart and gets a snapshot).
    orders.refresh();
    people?.refresh();
    traffic?.refresh();
  });
  document.body.dataset.ready = 'true';
}

main();
