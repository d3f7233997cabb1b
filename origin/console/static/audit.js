// Audit log: GET /v1/audit with its filters (the origin applies them all),
// newest first, paged by next_cursor.

import { h, mount, errorBox, fmtTime, badge } from './dom.js';
import { api, query } from './api.js';
import { state } from './state.js';

export async function auditPage() {
  const key = h('input', { id: 'audit-key', placeholder: 'key id', 'aria-label': 'Key id' });
  const dep = h('input', { id: 'audit-deployment', placeholder: 'deployment id or name', 'aria-label': 'Deployment' });
  const status = h('select', { id: 'audit-status', 'aria-label': 'Status' },
    [['', 'Any status'], ['2xx', '2xx'], ['4xx', '4xx'], ['5xx', '5xx'], ['401', '401'], ['403', '403'], ['404', '404'], ['429', '429']]
      .map(([v, t]) => h('option', { value: v, text: t })));
  // The refusal reasons of docs/api.md ("Audit log"), in event.AuditReasons'
  // order (console_test.go holds the two together).
  const reason = h('select', { id: 'audit-reason', 'aria-label': 'Reason' },
    ['', 'no_credential', 'malformed', 'unknown', 'unlinked', 'disabled', 'expired', 'permission', 'model_not_allowed',
      'rate_limited', 'concurrency', 'token_limit', 'quota', 'too_large', 'prompt_too_long', 'bad_body', 'bad_request',
      'no_deployment', 'no_upstream', 'unavailable', 'stream_cut'].map((v) => h('option', { value: v, text: v || 'Any reason' })));
  const source = h('select', { id: 'audit-source', 'aria-label': 'Source' },
    [['', 'Edge and admin'], ['edge', 'Edge requests'], ['admin', 'Admin actions']].map(([v, t]) => h('option', { value: v, text: t })));
  const since = h('input', { type: 'datetime-local', id: 'audit-since', 'aria-label': 'From (UTC)' });
  const until = h('input', { type: 'datetime-local', id: 'audit-until', 'aria-label': 'Until (UTC)' });
  const body = h('tbody');
  const msg = h('div');
  const more = h('button', { type: 'button', class: 'secondary', id: 'audit-more', text: 'Older records', hidden: true });
  const limit = 100;
  let cursor = '';
  let rows = [];

  const utc = (v) => (!v ? '' : v.length === 16 ? `${v}:00Z` : `${v}Z`); // datetime-local, read as UTC

  async function load(append) {
    try {
      const r = await api('GET', `/v1/audit${query({ project: state.project, key_id: key.value.trim(), deployment: dep.value.trim(),
        source: source.value, since: utc(since.value), until: utc(until.value), status: status.value, reason: reason.value,
        limit, cursor: append ? cursor : '' })}`);
      rows = append ? rows.concat(r.items) : r.items;
      cursor = r.next_cursor || '';
      more.hidden = !cursor;
      msg.replaceChildren();
    } catch (e) { if (e.status !== 401) msg.replaceChildren(errorBox(e)); }
    render();
  }

  function render() {
    body.replaceChildren(...rows.map((r) => h('tr', {},
      h('td', { text: fmtTime(r.time) }), h('td', { text: r.source }),
      h('td', {}, badge(String(r.status), r.status >= 500 ? 'bad' : r.status >= 400 ? 'warn' : 'ok')),
      h('td', { class: 'reason', text: r.reason || '' }),
      h('td', {}, h('code', { text: `${r.method} ${r.path}` })),
      h('td', {}, r.key_id ? h('code', { text: r.key_id }) : '—'),
      h('td', { text: r.deployment_name || r.deployment || '—' }),
      h('td', { text: r.source === 'admin' ? `${r.actor || ''} ${r.action || ''} ${r.target || ''}${r.changed ? ` (${r.changed.join(', ')})` : ''}`.trim() : `${r.edge || ''} ${r.client_ip || ''}`.trim() }))));
    if (!rows.length) body.append(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: 'No matching records.' })));
  }

  more.addEventListener('click', () => { if (cursor) load(true); });
  const form = h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); load(false); } },
    key, dep, status, reason, source, h('label', {}, 'From ', since), h('label', {}, 'until ', until), h('span', { class: 'hint', text: 'UTC' }),
    h('button', { type: 'submit', id: 'audit-apply', text: 'Apply' }));
  mount(h('h1', { text: 'Audit log' }), form, msg,
    h('table', { id: 'audit' }, h('thead', {}, h('tr', {}, ['Time', 'Source', 'Status', 'Reason', 'Request', 'Key', 'Deployment', 'By']
      .map((t) => h('th', { text: t })))), body), h('div', { class: 'pager' }, more));
  await load(false);
}
