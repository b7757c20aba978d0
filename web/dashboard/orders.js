// The Parcels panel: a live table of orders with filters and a timeline.
//
// The hub folds every order's events (the parcel stream) into its state and
// answers dashboard.orders with the orders that changed since the page's
// cursor. The page asks when a parcel event arrives on its subscription
// (every change of an order is one), and every second besides.
import { el, setText, duration, clock, throttle, errorText } from './util.js';

const STAGES = ['created', 'assigned', 'in-transit', 'delivered', 'failed', 'returned', 'cancelled'];
const STATUS_TEXT = {
  created: 'created', assigned: 'assigned', 'in-transit': 'in transit', delivered: 'delivered',
  failed: 'failed', returned: 'returned', cancelled: 'cancelled',
};
const FINISHED = new Set(['delivered', 'returned', 'cancelled']);
const MAX_ROWS = 300; // rows in the table at once; the counts cover every order
const MAX_KEPT = 3000; // orders the page remembers

/** stages computes the time spent in each stage of an order, in ms (the
 * current stage runs until now). */
export function stages(o, now) {
  const first = (s) => o.timeline.find((x) => x.status === s);
  const last = (s) => o.timeline.findLast((x) => x.status === s);
  const t = (x) => (x ? Date.parse(x.time) : null);
  const picked = t(first('created')) ?? t(o.timeline[0]);
  const assigned = t(first('assigned'));
  const lastAssigned = t(last('assigned'));
  const transit = t(last('in-transit'));
  const delivered = t(last('delivered')) ?? t(last('returned')) ?? t(last('cancelled'));
  const upTo = (end) => end ?? now;
  return {
    created: picked,
    waiting: picked === null ? null : upTo(assigned ?? transit ?? delivered) - picked,
    pickup: lastAssigned === null ? null : upTo(transit ?? delivered) - lastAssigned,
    transit: transit === null ? null : upTo(delivered) - transit,
    total: picked === null ? null : upTo(delivered) - picked,
    current: o.status,
  };
}

export class OrdersPanel {
  constructor(root, { request, onTrack }) {
    this.root = root;
    this.request = request;
    this.onTrack = onTrack;
    this.tbody = root.querySelector('#orders tbody');
    this.counts = root.querySelector('#order-counts');
    this.foot = root.querySelector('#orders-foot');
    this.notice = root.querySelector('#orders-notice');
    this.f = {
      store: root.querySelector('#f-store'),
      status: root.querySelector('#f-status'),
      driver: root.querySelector('#f-driver'),
    };
    this.orders = new Map(); // id → order
    this.rows = new Map(); // id → <tr>
    this.cursor = '';
    this.offset = 0; // hub clock minus browser clock, ms
    this.busy = false;
    this.again = false;
    this.scope = 'none';
    this.render = throttle(() => this.draw(), 200);
    for (const s of Object.values(this.f)) s.addEventListener('change', () => this.draw());
    this.tbody.addEventListener('click', (e) => this.clicked(e));
    this.tbody.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); this.clicked(e); }
    });
  }

  /** setScope says what the page may see: "all", "store" or "none". */
  setScope(scope, store) {
    this.scope = scope;
    this.f.store.closest('label').hidden = scope !== 'all';
    this.root.querySelector('#orders').classList.toggle('one-store', scope === 'store');
    if (scope === 'none') {
      this.show(`This identity may not see parcels (a vendor sees its own store's, an admin or logger every store's).`);
    } else if (scope === 'store') {
      this.show(`Orders of store ${store}.`, false);
    } else {
      this.show('');
    }
  }

  show(text, isError = false) {
    this.notice.hidden = !text;
    this.notice.textContent = text;
    this.notice.classList.toggle('error', isError);
  }

  /** refresh asks the hub what changed; overlapping calls fold into one. */
  async refresh() {
    if (this.scope === 'none') return;
    if (this.busy) { this.again = true; return; }
    this.busy = true;
    try {
      do {
        this.again = false;
        const sent = Date.now();
        const r = await this.request('dashboard.orders', { cursor: this.cursor });
        const got = Date.now();
        if (typeof r.now === 'number') this.offset = r.now - (sent + got) / 2;
        this.merge(r);
      } while (this.again);
    } catch (err) {
      this.show(`Could not load orders: ${errorText(err)}`, true);
    } finally {
      this.busy = false;
    }
  }

  merge(r) {
    if (r.reset) {
      this.orders.clear();
    }
    for (const o of r.orders) {
      const old = this.orders.get(o.orderID);
      if (old && old.rev >= o.rev) continue;
      o.fresh = !!old && old.status !== o.status;
      this.orders.set(o.orderID, o);
    }
    for (const id of r.removed) this.orders.delete(id);
    if (this.orders.size > MAX_KEPT) this.forget();
    this.cursor = r.cursor;
    this.loaded = r.loaded;
    this.render();
  }

  /** forget drops the finished orders that changed longest ago. */
  forget() {
    const done = [...this.orders.values()].filter((o) => FINISHED.has(o.status));
    done.sort((a, b) => Date.parse(a.timeline.at(-1).time) - Date.parse(b.timeline.at(-1).time));
    for (const o of done.slice(0, this.orders.size - MAX_KEPT)) this.orders.delete(o.orderID);
  }

  /** tick redraws the running clocks. */
  tick() {
    if (this.orders.size) this.render();
  }

  now() { return Date.now() + this.offset; }

  draw() {
    const now = this.now();
    const all = [...this.orders.values()];
    this.options(all);
    const want = { store: this.f.store.value, status: this.f.status.value, driver: this.f.driver.value };
    const match = (o) =>
      (!want.store || o.store === want.store) &&
      (!want.driver || o.driver === want.driver) &&
      (!want.status || (want.status === 'active' ? !FINISHED.has(o.status) : o.status === want.status));
    const shown = all.filter(match);
    for (const o of shown) o._st = stages(o, now);
    shown.sort((a, b) => b._st.created - a._st.created || (a.orderID < b.orderID ? -1 : 1));

    // Counts over the filtered orders, by status.
    const n = Object.fromEntries(STAGES.map((s) => [s, 0]));
    for (const o of shown) n[o.status] = (n[o.status] || 0) + 1;
    this.counts.replaceChildren(
      el('span', {}, el('b', { text: String(shown.length) }), ' orders'),
      ...STAGES.map((s) => el('span', { 'data-status': s }, el('b', { text: String(n[s]) }), ` ${STATUS_TEXT[s]}`)),
    );

    // Rows: reuse each order's <tr>, and move it only when out of place.
    const visible = shown.slice(0, MAX_ROWS);
    const keep = new Set();
    visible.forEach((o, i) => {
      keep.add(o.orderID);
      let tr = this.rows.get(o.orderID);
      if (!tr) {
        tr = this.row(o);
        this.rows.set(o.orderID, tr);
      }
      this.fill(tr, o, o._st);
      if (this.tbody.children[i] !== tr) this.tbody.insertBefore(tr, this.tbody.children[i] || null);
    });
    for (const [id, tr] of this.rows) {
      if (!keep.has(id)) { tr.remove(); this.rows.delete(id); }
    }
    let foot = shown.length > MAX_ROWS ? `Showing the newest ${MAX_ROWS} of ${shown.length}. ` : '';
    if (this.loaded === false) foot += 'The hub is still loading its orders. ';
    if (!all.length && this.scope !== 'none') foot += 'No orders yet.';
    setText(this.foot, foot.trim());
  }

  row(o) {
    const tr = el('tr', { tabindex: '0', 'data-id': o.orderID });
    tr.append(
      el('td', { class: 'id', title: o.orderID, text: o.orderID.slice(0, 8) }),
      el('td', { class: 'store' }),
      el('td', { class: 'customer opt' }),
      el('td', { class: 'driver' }),
      el('td', { class: 'status' }, el('span', { class: 'badge' })),
      el('td', { class: 't waiting opt' }),
      el('td', { class: 't pickup opt' }),
      el('td', { class: 't transit opt' }),
      el('td', { class: 't total' }),
    );
    return tr;
  }

  fill(tr, o, st) {
    const c = tr.children;
    setText(c[1], o.store);
    setText(c[2], o.customer);
    setText(c[3], o.driver || '–');
    const badge = c[4].firstChild;
    if (badge.textContent !== STATUS_TEXT[o.status]) {
      badge.className = `badge ${o.status}`;
      badge.textContent = STATUS_TEXT[o.status] || o.status;
    }
    tr.dataset.status = o.status;
    const cell = (td, v, running) => {
      setText(td, duration(v));
      td.classList.toggle('now', running);
    };
    cell(c[5], st.waiting, o.status === 'created');
    cell(c[6], st.pickup, o.status === 'assigned');
    cell(c[7], st.transit, o.status === 'in-transit');
    cell(c[8], st.total, false);
    if (o.fresh) {
      o.fresh = false;
      tr.classList.remove('fresh');
      void tr.offsetWidth; // restart the animation
      tr.classList.add('fresh');
    }
  }

  /** options keeps the store and driver filters' choices current. */
  options(all) {
    const sync = (select, values) => {
      const have = new Set([...select.options].map((o) => o.value));
      for (const v of [...values].sort()) {
        if (!have.has(v)) {
          // Insert in order after "all".
          const next = [...select.options].slice(1).find((o) => o.value > v);
          select.insertBefore(el('option', { value: v, text: v }), next || null);
        }
      }
    };
    sync(this.f.store, new Set(all.map((o) => o.store)));
    sync(this.f.driver, new Set(all.map((o) => o.driver).filter(Boolean)));
  }

  clicked(e) {
    const tr = e.target.closest('tr[data-id]');
    if (tr) this.onTrack(tr.dataset.id);
  }
}

/** showTimeline fills the timeline dialog from a parcel.track answer. */
export function showTimeline(dialog, o) {
  dialog.querySelector('#timeline-h').textContent = `Order ${o.orderID.slice(0, 8)}`;
  const facts = dialog.querySelector('#timeline-facts');
  const fact = (k, v) => [el('dt', { text: k }), el('dd', { text: v })];
  facts.replaceChildren(
    ...fact('Order', o.orderID),
    ...fact('Store', o.store),
    ...fact('Customer', o.customer),
    ...fact('Address', o.address),
    ...fact('Status', (STATUS_TEXT[o.status] || o.status) + (o.driver ? ` (driver ${o.driver})` : '')),
  );
  const start = o.timeline.length ? Date.parse(o.timeline[0].time) : 0;
  dialog.querySelector('#timeline-steps tbody').replaceChildren(
    ...o.timeline.map((s, i) => {
      const t = Date.parse(s.time);
      return el('tr', { 'data-status': s.status },
        el('td', { class: 't', title: s.time, text: clock(t) + (i ? ` (+${duration(t - start)})` : '') }),
        el('td', {}, el('span', { class: `badge ${s.status}`, text: STATUS_TEXT[s.status] || s.status })),
        el('td', { text: s.by || '' }),
        el('td', { text: s.hub || '' }));
    }),
  );
}
