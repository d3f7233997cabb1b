// Audit log: GET /v1/audit with its filters, newest first, paged.

import { h, mount, errorBox, fmtTime, badge } from './dom.js';
import { api, query } from './api.js';
import { state } from './state.js';

export async function auditPage() {
  const key = h('input', { id: 'audit-key', placeholder: 'key id', 'aria-label': 'Key id' });
  const dep = h('input', { id: 'audit-deployment', placeholder: 'deployment id or name', 'aria-label': 'Deployment' });
  const status = h('select', { id: 'audit-status', 'aria-label': 'Status' },
    [['', 'Any status'], ['ok', '2xx/3xx'], ['refused', '4xx'], ['error', '5xx'], ['401', '401'], ['403', '403'], ['429', '429']]
      .map(([v, t]) => h('option', { value: v, text: t })));
  const reason = h('input', { id: 'audit-reason', placeholder: 'reason, e.g. unlinked', 'aria-label': 'Reason' });
  const source = h('select', { id: 'audit-source', 'aria-label': 'Source' },
    [['', 'Edge and admin'], ['edge', 'Edge requests'], ['admin', 'Admin actions']].map(([v, t]) => h('option', { value: v, text: t })));
  const since = h('input', { type: 'datetime-local', id: 'audit-since', 'aria-label': 'From (UTC)' });
  const until = h('input', { type: 'datetime-local', id: 'audit-until', 'aria-label': 'Until (UTC)' });
  const body = h('tbody');
  const msg = h('div');
  const more = h('button', { type: 'button', class: 'secondary', id: 'audit-more', text: 'Older records', hidden: true });
  let limit = 100;
  let cursor = '';
  let rows = [];

  const statusOK = (st) => {
    switch (status.value) {
      case '': return true;
      case 'ok': return st < 400;
      case 'refused': return st >= 400 && st < 500;
      case 'error': return st >= 500;
      default: return String(st) === status.value;
    }
  };
  const utc = (v) => (!v ? '' : v.length === 16 ? `${v}:00Z` : `${v}Z`); // datetime-local, read as UTC

  async function load(append) {
    try {
      const exact = /^\d{3}$/.test(status.value) ? status.value : '';
      const r = await api('GET', `/v1/audit${query({ project: state.project, key_id: key.value.trim(), deployment: dep.value.trim(),
        source: source.value, since: utc(since.value), status: exact, reason: reason.value.trim(), limit, cursor: append ? cursor : '' })}`);
      const items = Array.isArray(r) ? r : r.items || [];
      rows = append && !Array.isArray(r) ? rows.concat(items) : items;
      // A paged answer has a cursor; a bare list is paged by asking for more.
      if (Array.isArray(r)) { more.hidden = items.length < limit || limit >= 1000; cursor = ''; } else { cursor = r.next_cursor || ''; more.hidden = !cursor; }
      msg.replaceChildren();
    } catch (e) { if (e.status !== 401) msg.replaceChildren(errorBox(e)); }
    render();
  }

  function render() {
    const end = until.value ? new Date(utc(until.value)) : null;
    const want = reason.value.trim();
    const shown = rows.filter((r) => statusOK(r.status) && (!end || new Date(r.time) < end) && (!want || r.reason === want));
    body.replaceChildren(...shown.map((r) => h('tr', {},
      h('td', { text: fmtTime(r.time) }), h('td', { text: r.source }),
      h('td', {}, badge(String(r.status), r.status >= 500 ? 'bad' : r.status >= 400 ? 'warn' : 'ok')),
      h('td', { class: 'reason', text: r.reason || '' }),
      h('td', {}, h('code', { text: `${r.method} ${r.path}` })),
      h('td', {}, r.key_id ? h('code', { text: r.key_id }) : '—'),
      h('td', { text: r.deployment_name || r.deployment || '—' }),
      h('td', { text: r.source === 'admin' ? `${r.actor || ''} ${r.action || ''} ${r.target || ''}`.trim() : `${r.edge || ''} ${r.client_ip || ''}`.trim() }))));
    if (!shown.length) body.append(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: 'No matching records.' })));
  }

  more.addEventListener('click', () => { if (cursor) load(true); else { limit = Math.min(1000, limit + 100); load(false); } });
  const form = h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); limit = 100; load(false); } },
    key, dep, status, reason, source, h('label', {}, 'From ', since), h('label', {}, 'until ', until), h('span', { class: 'hint', text: 'UTC' }),
    h('button', { type: 'submit', id: 'audit-apply', text: 'Apply' }));
  mount(h('h1', { text: 'Audit log' }), form, msg,
    h('table', { id: 'audit' }, h('thead', {}, h('tr', {}, ['Time', 'Source', 'Status', 'Reason', 'Request', 'Key', 'Deployment', 'By']
      .map((t) => h('th', { text: t })))), body), h('div', { class: 'pager' }, more));
  await load(false);
}
