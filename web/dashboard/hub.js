// hub.js: the dashboard's connection to the hub that served it, through
// the project's browser client (/caps.js: the CAPS protocol over /ws). It
// adds what the page wants on top: JSON in and out, and a call after each
// reconnect so the panels can catch up on what they missed.
import { Client } from '../caps.js';

/** isAuthError tells a refused identity (a token is needed, or wrong). */
export const isAuthError = (err) => err?.code === 'unauthorized';

export class Hub {
  /** open connects and resolves once the hub has welcomed the page. It
   * rejects when the hub refuses the identity (a missing or wrong token);
   * while the hub is unreachable it keeps trying. Later losses reconnect on
   * their own, resuming the subscriptions. */
  static async open({ role, name, token = '', onState = () => {} }) {
    const h = new Hub();
    let was = '';
    h.client = new Client('/ws', {
      role, name, token,
      onState: (s) => {
        onState(s);
        if (s === 'connected' && was === 'reconnecting') for (const fn of h.reconnected) fn();
        was = s;
      },
      onError: (err) => console.warn('caps:', err.message),
    });
    await h.client.ready();
    return h;
  }

  constructor() {
    this.reconnected = [];
  }

  /** welcome is the hub's WELCOME: session, hub, role and name granted. */
  get welcome() { return this.client.welcome; }

  /** request asks a service with a JSON body and decodes its JSON answer. */
  async request(service, body = {}) {
    const b = await this.client.request(service, JSON.stringify(body));
    return JSON.parse(new TextDecoder().decode(b));
  }

  /** publish sends body as JSON; id is the message id (de-duplication). */
  publish(topic, body, id) {
    return this.client.publish(topic, JSON.stringify(body), { id });
  }

  /** subscribe calls fn(msg) for each message on pattern (msg.text(),
   * msg.json(), msg.history), across reconnects. Options: history. */
  subscribe(pattern, fn, opts = {}) {
    return this.client.subscribe(pattern, fn, opts);
  }

  /** onReconnect calls fn after every reconnect. */
  onReconnect(fn) { this.reconnected.push(fn); }

  close() { this.client.close(); }
}
