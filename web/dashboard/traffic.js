// The Traffic panel: messages per second and latency over the last
// minutes, as inline SVG lines, and the hub's error counters. The hub
// samples its own metrics every second (dashboard.traffic); the page asks
// for the points after the last one it has.
import { el, setText, number, errorText } from './util.js';

const W = 300; // the charts' viewBox width; height is H
const H = 90;

/** niceMax rounds a chart's top up to 1, 2 or 5 × 10^n. */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/** linear is a chart's y scale from 0 to a nice top. */
function linear(values) {
  const top = niceMax(Math.max(0, ...values));
  return { top, grid: [top / 2, top], y: (v) => H - (v / top) * H };
}

/** logarithmic is a y scale over whole decades, for latencies whose p50
 * and p99 lie orders of magnitude apart. */
function logarithmic(values) {
  const pos = values.filter((v) => v > 0);
  const lo = 10 ** Math.floor(Math.log10(Math.min(...pos, 1)));
  const top = 10 ** Math.ceil(Math.log10(Math.max(...pos, lo * 10)));
  const span = Math.log10(top / lo);
  const grid = [];
  for (let d = lo * 10; d <= top; d *= 10) grid.push(d);
  return { top, bottom: lo, grid, y: (v) => H - (Math.log10(Math.max(v, lo) / lo) / span) * H };
}

/** drawChart draws series of {t, v} points (v null = a gap) into svg,
 * between times t0 and t1, and returns the scale. */
export function drawChart(svg, series, t0, t1, log = false) {
  const values = series.flatMap((s) => s.points.filter((p) => p.t >= t0).map((p) => p.v ?? 0));
  const scale = log ? logarithmic(values) : linear(values);
  const x = (t) => ((t - t0) / Math.max(1, t1 - t0)) * W;
  const ns = 'http://www.w3.org/2000/svg';
  const kids = [];
  for (const g of scale.grid) {
    const line = document.createElementNS(ns, 'line');
    line.setAttribute('class', 'grid');
    line.setAttribute('x1', '0'); line.setAttribute('x2', String(W));
    line.setAttribute('y1', scale.y(g).toFixed(1)); line.setAttribute('y2', scale.y(g).toFixed(1));
    kids.push(line);
  }
  for (const s of series) {
    // One polyline per unbroken run, so gaps in the data stay gaps.
    let run = [];
    const flush = () => {
      if (run.length) {
        const pl = document.createElementNS(ns, 'polyline');
        pl.setAttribute('class', s.cls);
        pl.setAttribute('points', (run.length === 1 ? [run[0], run[0]] : run).join(' '));
        kids.push(pl);
      }
      run = [];
    };
    for (const p of s.points) {
      if (p.v === null || p.v === undefined || p.t < t0) { flush(); continue; }
      run.push(`${x(p.t).toFixed(1)},${scale.y(p.v).toFixed(1)}`);
    }
    flush();
  }
  svg.replaceChildren(...kids);
  return scale;
}

export class TrafficPanel {
  constructor(root, { request }) {
    this.root = root;
    this.request = request;
    this.samples = [];
    this.since = 0;
    this.busy = false;
    this.rate = root.querySelector('#chart-rate');
    this.latency = root.querySelector('#chart-latency');
    this.stats = root.querySelector('#traffic-stats');
  }

  async refresh() {
    if (this.busy) return;
    this.busy = true;
    try {
      const r = await this.request('dashboard.traffic', { since: this.since });
      if (this.hub !== undefined && r.hub !== this.hub && this.since) {
        // Another hub (a failover) counts other things: start the charts
        // over, with its history, on the next tick.
        this.samples = [];
        this.since = 0;
        this.hub = r.hub;
        return;
      }
      this.hub = r.hub;
      this.samples.push(...r.samples);
      this.every = r.every_ms;
      const keep = Math.ceil((5 * 60 * 1000) / (r.every_ms || 1000));
      if (this.samples.length > keep) this.samples.splice(0, this.samples.length - keep);
      if (this.samples.length) this.since = this.samples.at(-1).t;
      const span = this.samples.length ? this.samples.at(-1).t - this.samples[0].t : 0;
      setText(this.root.querySelector('#traffic-hub'), `hub ${r.hub}, last ${span > 90000 ? `${Math.round(span / 60000)} minutes` : 'minute'}`);
      const what = this.root.querySelector('#latency-what');
      what.title = `${r.latency}: ${r.latency_help}; each point over the ${r.window_ms / 1000}s before it, on a log scale`;
      setText(what, r.latency);
      this.draw(r.totals);
    } catch (err) {
      setText(this.root.querySelector('#traffic-hub'), `unavailable: ${errorText(err)}`);
    } finally {
      this.busy = false;
    }
  }

  /** reset forgets the points (another hub: other counters). */
  reset() { this.samples = []; this.since = 0; }

  draw(totals) {
    const s = this.samples;
    if (!s.length) return;
    // The last five minutes, or as much as there is (at least a minute), so
    // a page opened on a young hub is not all blank.
    const t1 = s.at(-1).t;
    const t0 = Math.max(t1 - 5 * 60 * 1000, Math.min(s[0].t, t1 - 60 * 1000));
    const pts = (k) => s.map((p) => ({ t: p.t, v: p[k] }));
    const rate = drawChart(this.rate, [{ cls: 's1', points: pts('pub') }, { cls: 's2', points: pts('dlv') }], t0, t1);
    const lat = drawChart(this.latency, [{ cls: 's1', points: pts('p50') }, { cls: 's3', points: pts('p99') }], t0, t1, true);
    this.rate.dataset.top = rate.top;
    this.latency.dataset.top = lat.top;
    setText(this.root.querySelector('#rate-top'), `${number(rate.top)}/s`);
    setText(this.root.querySelector('#latency-top'), fmtMs(lat.top));
    setText(this.root.querySelector('#latency-bottom'), fmtMs(lat.bottom));
    const last = s.at(-1);
    const lastLat = s.findLast((p) => p.p99 !== null);
    const errs = Object.entries(totals.errors || {}).filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1]);
    const errTotal = errs.reduce((a, [, v]) => a + v, 0);
    const stat = (id, label, value, note, bad) =>
      el('div', { 'data-stat': id }, el('dt', { text: label }),
        el('dd', { class: bad ? 'bad' : '' }, value, note ? el('small', { text: note }) : null));
    this.stats.replaceChildren(
      stat('conns', 'Connections', number(last.conns)),
      stat('pub', 'Published/s', number(last.pub), `${number(totals.published)} in all`),
      stat('dlv', 'Delivered/s', number(last.dlv), `${number(totals.delivered)} in all`),
      stat('lat', 'Latency p50 / p99', lastLat ? `${fmtMs(lastLat.p50)} / ${fmtMs(lastLat.p99)}` : '–'),
      stat('errors', 'Errors', number(errTotal), errs.slice(0, 3).map(([k, v]) => `${k} ${number(v)}`).join(', '), errTotal > 0),
      stat('slow', 'Slow consumers', number(totals.slow_consumers), 'cut off for not reading', totals.slow_consumers > 0),
    );
  }
}

function fmtMs(v) {
  if (v === null || v === undefined) return '–';
  if (v >= 1000) return `${number(v / 1000)}s`;
  if (v >= 10) return `${Math.round(v)}ms`;
  return `${Number(v.toPrecision(2))}ms`;
}
