// Usage: tokens and requests over time from GET /v1/usage, as SVG charts
// drawn here (one line per key, deployment or model) and a totals table.

import { h, s, mount, errorBox, fmtTime } from './dom.js';
import { api, query } from './api.js';
import { state, pp } from './state.js';

const COLORS = ['#2456c8', '#d9480f', '#2b8a3e', '#862e9c', '#c2255c', '#1098ad', '#5c940d', '#495057'];
const DIM = { key: 'key_id', deployment: 'deployment', model: 'model' };

function tokens(r) { return (r.prompt_tokens || 0) + (r.completion_tokens || 0); }

// chart draws series {label, points: Map(time ms -> value)} over times.
export function chart(times, series, title) {
  const W = 760, H = 240, L = 56, R = 12, T = 24, B = 28;
  // The axis goes up to a round number, in four equal whole steps.
  const top = Math.max(1, ...series.flatMap((x) => [...x.points.values()]));
  const mag = 10 ** Math.floor(Math.log10(top / 4 || 1));
  const step = Math.max(1, [1, 2, 5, 10].map((m) => m * mag).find((st) => st * 4 >= top) || 10 * mag);
  const max = step * 4;
  const t0 = times[0] ?? 0, t1 = times[times.length - 1] ?? 1;
  const x = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  svg.append(s('text', { x: L, y: 14, text: title }));
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    svg.append(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: '#e3e7ec' }),
      s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', text: Math.round(v).toLocaleString() }));
  }
  if (times.length) {
    for (const t of [t0, t1]) svg.append(s('text', { x: x(t), y: H - 8, 'text-anchor': t === t0 ? 'start' : 'end', text: fmtTime(new Date(t)) }));
  }
  series.forEach((ser, i) => {
    const pts = times.map((t) => `${x(t).toFixed(1)},${y(ser.points.get(t) || 0).toFixed(1)}`);
    const color = COLORS[i % COLORS.length];
    svg.append(s('polyline', { points: pts.join(' '), fill: 'none', stroke: color, 'stroke-width': 2 }));
    for (const t of times) svg.append(s('circle', { cx: x(t), cy: y(ser.points.get(t) || 0), r: 2.5, fill: color },
      s('title', { text: `${ser.label} ${fmtTime(new Date(t))}: ${(ser.points.get(t) || 0).toLocaleString()}` })));
  });
  return svg;
}

function legend(series) {
  return h('div', { class: 'legend' }, series.map((x, i) => h('span', {}, h('span', { class: `swatch c${i % COLORS.length}` }), x.label)));
}

// usageView: charts of tokens and requests for filter, one line per
// value of dim ('key', 'deployment' or 'model').
export function usageView(filter, dims = ['key', 'deployment', 'model']) {
  const box = h('div', { id: 'usage' });
  const since = h('select', { 'aria-label': 'Period', id: 'usage-since' },
    [['24h', 'Last 24 hours', 'hour'], ['168h', 'Last 7 days', 'day'], ['720h', 'Last 30 days', 'day']]
      .map(([v, t, g]) => h('option', { value: v, text: t, dataset: { group: g } })));
  const by = h('select', { 'aria-label': 'Group by', id: 'usage-by' }, dims.map((d) => h('option', { value: d, text: `per ${d}` })));
  const out = h('div');
  const names = new Map();

  async function load() {
    out.replaceChildren(h('p', { class: 'muted', text: 'Loading…' }));
    const bucket = since.selectedOptions[0].dataset.group;
    const dim = by.value;
    try {
      if (dim !== 'model' && !names.size) {
        const [keys, deps] = await Promise.all([api('GET', `${pp()}/keys?limit=1000`), api('GET', `${pp()}/deployments`)]);
        for (const k of keys.items || []) names.set(k.id, k.name);
        for (const d of deps.items || []) names.set(d.id, d.name);
      }
      const r = await api('GET', `/v1/usage${query({ project: state.project, since: since.value, group_by: `${bucket},${dim}`, limit: 10000, ...filter })}`);
      const rows = r.items || [];
      const times = [];
      for (let t = new Date(r.since).getTime(); t < new Date(r.until).getTime(); t += bucket === 'hour' ? 3600e3 : 86400e3) times.push(t);
      const groups = new Map();
      for (const row of rows) {
        const g = row[DIM[dim]] ?? '';
        if (!groups.has(g)) groups.set(g, { tokens: new Map(), requests: new Map(), total: { requests: 0, prompt: 0, completion: 0 } });
        const e = groups.get(g);
        const t = new Date(row[bucket]).getTime();
        e.tokens.set(t, (e.tokens.get(t) || 0) + tokens(row));
        e.requests.set(t, (e.requests.get(t) || 0) + (row.requests || 0));
        e.total.requests += row.requests || 0;
        e.total.prompt += row.prompt_tokens || 0;
        e.total.completion += row.completion_tokens || 0;
      }
      const label = (g) => (g === '' ? (dim === 'key' ? '(no auth)' : '(none)') : names.get(g) || g);
      const list = [...groups.entries()].sort((a, b) => b[1].total.requests - a[1].total.requests).slice(0, 8);
      const tokSeries = list.map(([g, e]) => ({ label: label(g), points: e.tokens }));
      const reqSeries = list.map(([g, e]) => ({ label: label(g), points: e.requests }));
      out.replaceChildren(...[
        rows.length ? null : h('p', { class: 'muted', text: 'No usage in this period.' }),
        r.truncated ? h('p', { class: 'notice warn', text: 'More rows matched than were read: the charts are partial.' }) : null,
        chart(times, tokSeries, 'Tokens (prompt + completion)'), legend(tokSeries),
        chart(times, reqSeries, 'Requests'), legend(reqSeries),
        h('table', {}, h('thead', {}, h('tr', {}, [dim, 'Requests', 'Prompt tokens', 'Completion tokens'].map((t) => h('th', { text: t })))),
          h('tbody', {}, [...groups.entries()].map(([g, e]) => h('tr', {}, h('td', { text: label(g) }),
            h('td', { class: 'num', text: e.total.requests }), h('td', { class: 'num', text: e.total.prompt }),
            h('td', { class: 'num', text: e.total.completion })))))].filter(Boolean));
    } catch (e) {
      if (e.status !== 401) out.replaceChildren(errorBox(e));
    }
  }
  since.addEventListener('change', load);
  by.addEventListener('change', load);
  box.append(h('div', { class: 'toolbar' }, since, by), out);
  load();
  return box;
}

export async function usagePage() {
  mount(h('h1', { text: 'Usage' }), usageView({}));
}
