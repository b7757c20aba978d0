// Small helpers shared by the dashboard's modules. No dependencies.

/** el builds an element: el('td', {class: 'num'}, 'text', child…). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children) {
    if (c !== undefined && c !== null && c !== false) e.append(c);
  }
  return e;
}

/** setText changes an element's text only when it differs (no reflow otherwise). */
export function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

/** duration formats milliseconds for people: 850ms, 4.2s, 3m 05s, 2h 04m. */
export function duration(ms) {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '';
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, '0')}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** clock formats a time as HH:MM:SS.mmm in the browser's zone. */
export function clock(t) {
  const d = new Date(t);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

/** number formats a count or rate compactly: 12, 1.5k, 2.3M. */
export function number(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  if (a >= 100 || Number.isInteger(v)) return String(Math.round(v));
  return v.toFixed(1);
}

/** randomId returns n random hex digits. crypto.getRandomValues works on
 * plain-HTTP pages too, where crypto.randomUUID does not exist. */
export function randomId(n = 16) {
  const b = new Uint8Array(Math.ceil(n / 2));
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('').slice(0, n);
}

/** uuid returns a random (version 4) UUID. */
export function uuid() {
  const h = randomId(32).split('');
  h[12] = '4';
  h[16] = '89ab'[parseInt(h[16], 16) & 3];
  const s = h.join('');
  return `${s.slice(0, 8)}-${s.slice(8, 12)}-${s.slice(12, 16)}-${s.slice(16, 20)}-${s.slice(20)}`;
}

/** throttle runs fn at most once per ms, trailing (the last call always runs). */
export function throttle(fn, ms) {
  let timer = null;
  let again = false;
  const run = () => {
    timer = null;
    if (again) {
      again = false;
      timer = setTimeout(run, ms);
      fn();
    }
  };
  return () => {
    again = true;
    if (timer === null) run();
  };
}

/** errorText turns an error (a hub ERR, a network failure) into one line. */
export function errorText(err) {
  if (!err) return '';
  if (err.code && err.message && !err.message.startsWith(err.code)) return `${err.code}: ${err.message}`;
  return err.message || String(err);
}

/** $ finds one element. */
export const $ = (sel, root = document) => root.querySelector(sel);

/** validName mirrors the hub's rule for names and rooms. */
export const validName = (s) => /^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$/.test(s);
