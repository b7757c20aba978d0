// The Chat panel: read and post in chat rooms from the page.
//
// The page joins chat as a chat client of its own, on a second connection
// (role chat, the name the person picks; on a hub with --auth the token
// decides the name), so it is a member like any other: the room sees it
// join and leave, its messages obey the same rules and rate limits, and
// nobody can post under a name that is not theirs.
import { el, setText, clock, uuid, errorText, validName } from './util.js';

const HISTORY = 50; // messages of history asked for on joining a room
const MAX_LINES = 500; // lines kept per room

export class ChatPanel {
  constructor(root, { open, auth }) {
    this.root = root;
    this.open = open; // async ({name}) → connection
    this.auth = auth;
    this.conn = null;
    this.rooms = new Map(); // room → {log: <ol>, tab: <button>, subs: []}
    this.current = null;
    this.joinForm = root.querySelector('#chat-join');
    this.box = root.querySelector('#chat-box');
    this.tabs = root.querySelector('#chat-rooms');
    this.logs = root.querySelector('#chat-log');
    this.notice = root.querySelector('#chat-notice');
    this.who = root.querySelector('#chat-who');
    this.nameInput = root.querySelector('#chat-name');
    this.roomInput = root.querySelector('#chat-room');
    const saved = localStorage.getItem('caps-chat-name');
    this.nameInput.value = saved && validName(saved) ? saved : `web-${uuid().slice(0, 4)}`;
    this.joinForm.addEventListener('submit', (e) => { e.preventDefault(); this.join(); });
    root.querySelector('#chat-send').addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
  }

  /** setAuth hides the name field on a hub where the token decides names. */
  setAuth(auth) {
    this.auth = auth;
    this.nameInput.closest('label').hidden = auth || !!this.conn;
  }

  show(text, isError = true) {
    this.notice.hidden = !text;
    this.notice.textContent = text;
    this.notice.classList.toggle('error', isError);
  }

  async join() {
    const room = this.roomInput.value.trim();
    if (!validName(room)) { this.show('A room name is 1-32 letters, digits, _ or -.'); return; }
    this.show('');
    try {
      if (!this.conn) {
        const name = this.nameInput.value.trim();
        if (!this.auth && !validName(name)) { this.show('A name is 1-32 letters, digits, _ or -.'); return; }
        this.conn = await this.open({ name, onState: (s) => this.state(s) });
        if (!this.auth) localStorage.setItem('caps-chat-name', name);
        this.nameInput.closest('label').hidden = true;
        this.me = this.conn.welcome.name;
        this.roomInput.placeholder = 'join a room';
        this.roomInput.required = false;
      }
      if (this.rooms.has(room)) { this.select(room); return; }
      await this.enter(room);
      this.roomInput.value = '';
      this.root.classList.add('joined');
    } catch (err) {
      this.show(`Could not join ${room}: ${errorText(err)}`);
    }
  }

  async enter(room) {
    const log = el('ol', { class: 'chat-log', 'data-room': room, 'aria-live': 'polite' });
    const tab = el('button', { type: 'button', role: 'tab', 'data-room': room, text: `#${room}`, onclick: () => this.select(room) });
    const r = { log, tab, subs: [] };
    this.rooms.set(room, r);
    try {
      r.subs.push(await this.conn.subscribe(`chat.room.${room}`, (m) => this.message(room, m), { history: HISTORY }));
      r.subs.push(await this.conn.subscribe(`chat.presence.${room}`, (m) => this.message(room, m)));
    } catch (err) {
      this.rooms.delete(room);
      for (const s of r.subs) s.unsubscribe();
      throw err;
    }
    this.tabs.append(tab);
    this.box.hidden = false;
    this.select(room);
  }

  select(room) {
    this.current = room;
    for (const [name, r] of this.rooms) r.tab.setAttribute('aria-selected', String(name === room));
    const r = this.rooms.get(room);
    this.logs.replaceWith(r.log);
    this.logs = r.log;
    this.logs.id = 'chat-log';
    for (const x of this.rooms.values()) if (x.log !== r.log) x.log.removeAttribute('id');
    this.logs.scrollTop = this.logs.scrollHeight;
    this.refreshWho();
    this.root.querySelector('#chat-text').focus({ preventScroll: true });
  }

  async refreshWho() {
    const room = this.current;
    if (!room || !this.conn) return;
    try {
      const r = await this.conn.request('chat.who', { room });
      if (room !== this.current) return;
      const names = r.members.map((m) => m.name);
      setText(this.who, names.length ? `${names.length} in #${room}: ${names.join(', ')}` : `no chat users in #${room}`);
    } catch {
      setText(this.who, '');
    }
  }

  message(room, m) {
    let msg;
    try { msg = m.json(); } catch { return; }
    const r = this.rooms.get(room);
    if (!r) return;
    const stick = r.log.scrollTop + r.log.clientHeight >= r.log.scrollHeight - 4;
    const when = el('span', { class: 'when', text: clock(Date.parse(msg.time)).slice(0, 8) });
    let li;
    switch (msg.kind) {
      case 'join':
      case 'leave':
        li = el('li', { class: 'presence' }, when, `* ${msg.from} ${msg.kind === 'join' ? 'joined' : 'left'}`);
        if (room === this.current) this.refreshWho();
        break;
      case 'me':
        li = el('li', { class: m.history ? 'hist' : '' }, when, `* ${msg.from} ${msg.text}`);
        break;
      default:
        li = el('li', { class: m.history ? 'hist' : '' }, when, el('span', { class: 'from', text: `${msg.from}:` }), ` ${msg.text}`);
    }
    li.dataset.from = msg.from;
    r.log.append(li);
    while (r.log.childElementCount > MAX_LINES) r.log.firstElementChild.remove();
    if (stick) r.log.scrollTop = r.log.scrollHeight;
  }

  async send() {
    const input = this.root.querySelector('#chat-text');
    let text = input.value.trim();
    const room = this.current;
    if (!text || !room || !this.conn) return;
    let kind = 'msg';
    if (text.startsWith('/me ')) { kind = 'me'; text = text.slice(4); }
    const msg = { id: uuid(), from: this.me, room, text, kind, time: new Date().toISOString() };
    input.disabled = true;
    try {
      await this.conn.publish(`chat.room.${room}`, msg, msg.id);
      input.value = '';
      this.show('');
    } catch (err) {
      this.show(`Not sent: ${errorText(err)}`);
    } finally {
      input.disabled = false;
      input.focus({ preventScroll: true });
    }
  }

  state(s) {
    if (s === 'connected') { this.show(''); this.refreshWho(); }
    else if (s === 'reconnecting' || s === 'disconnected') this.show('Chat connection lost; reconnecting…', false);
  }
}
