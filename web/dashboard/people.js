// The People panel: who is connected, on every hub, with drivers' loads.
// The hub answers dashboard.people by asking every hub for its sessions;
// the page asks again when a client connects or disconnects (the hub's
// client.connected / client.disconnected events) and every few seconds.
import { el, setText, duration, throttle, errorText } from './util.js';

// Drivers first: their loads are what a dispatcher looks for.
const ROLE_ORDER = ['driver', 'vendor', 'chat', 'logger', 'admin', 'client'];

export class PeoplePanel {
  constructor(root, { request }) {
    this.root = root;
    this.request = request;
    this.tbody = root.querySelector('#people-table tbody');
    this.counts = root.querySelector('#people-counts');
    this.people = [];
    this.offset = 0;
    this.busy = false;
    this.poke = throttle(() => this.refresh(), 300);
  }

  async refresh() {
    if (this.busy) { this.poke(); return; }
    this.busy = true;
    try {
      const r = await this.request('dashboard.people', {});
      this.people = r.people;
      this.hubs = r.hubs;
      this.draw();
    } catch (err) {
      setText(this.counts, `unavailable: ${errorText(err)}`);
    } finally {
      this.busy = false;
    }
  }

  draw() {
    const now = Date.now();
    const byRole = {};
    for (const p of this.people) byRole[p.role] = (byRole[p.role] || 0) + 1;
    const roles = Object.keys(byRole).sort((a, b) => ROLE_ORDER.indexOf(a) - ROLE_ORDER.indexOf(b));
    this.counts.replaceChildren(
      ...roles.map((r) => el('span', { 'data-role': r }, el('b', { text: String(byRole[r]) }), ` ${r}${byRole[r] > 1 ? 's' : ''}`)),
      el('span', { text: `on ${this.hubs.length} hub${this.hubs.length === 1 ? '' : 's'}` }),
    );
    this.root.querySelector('#people-table').classList.toggle('one-hub', this.hubs.length < 2);
    const sorted = [...this.people].sort((a, b) =>
      ROLE_ORDER.indexOf(a.role) - ROLE_ORDER.indexOf(b.role) || a.name.localeCompare(b.name));
    this.tbody.replaceChildren(...sorted.map((p) => {
      const since = Date.parse(p.since);
      return el('tr', { 'data-role': p.role, 'data-name': p.name },
        el('td', { class: 'role', text: p.role }),
        el('td', { text: p.name + (p.attrs && p.attrs.store && p.attrs.store !== p.name ? ` (${p.attrs.store})` : '') }),
        el('td', { class: 'opt', text: p.remote, title: `${p.dialect} over ${p.transport}` }),
        el('td', { class: 'opt hub', text: p.hub }),
        el('td', { class: 't', title: new Date(since).toLocaleString(), text: duration(now - since) }),
        el('td', { class: 'num load', text: p.load === undefined || p.load === null ? '' : String(p.load) }));
    }));
  }
}
