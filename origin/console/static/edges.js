// Edges: what the origin's registry knows of each edge, refreshed while
// the page is shown.

import { h, mount, errorBox, fmtTime, ago, badge } from './dom.js';
import { api } from './api.js';
import { state } from './state.js';

export async function edgesPage() {
  const body = h('tbody');
  const info = h('p', { class: 'muted' });
  const msg = h('div');
  async function load() {
    try {
      const [edges, health] = await Promise.all([api('GET', '/v1/edges'), fetch('/health').then((r) => r.json()).catch(() => ({}))]);
      const list = Array.isArray(edges) ? edges : edges.items || [];
      const rev = health.revision ?? 0;
      info.textContent = `Origin revision ${rev}. ${list.filter((e) => e.live).length} of ${list.length} edges live.`;
      body.replaceChildren(...list.map((e) => h('tr', { dataset: { edge: e.id } },
        h('td', {}, h('code', { text: e.id })), h('td', { text: e.site }), h('td', { text: e.address || '—' }),
        h('td', { class: 'num', text: e.applied_revision }), h('td', { class: 'num', text: Math.max(0, rev - e.applied_revision) }),
        h('td', { title: fmtTime(e.last_seen), text: ago(e.last_seen) }),
        h('td', {}, e.live ? badge('live', 'ok') : badge('stale', 'bad')),
        h('td', { text: e.relayed_by || '—' }))));
      if (!list.length) body.append(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: 'No edge has reported to this origin.' })));
      msg.replaceChildren();
    } catch (e) { if (e.status !== 401) msg.replaceChildren(errorBox(e)); }
  }
  mount(h('h1', { text: 'Edges' }), info, msg,
    h('table', { id: 'edges' }, h('thead', {}, h('tr', {}, ['ID', 'Site', 'Address', 'Applied revision', 'Lag', 'Last seen', 'State', 'Relayed by']
      .map((t) => h('th', { text: t })))), body));
  await load();
  const timer = setInterval(load, 3000);
  state.stop.push(() => clearInterval(timer));
}
