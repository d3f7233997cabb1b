// API keys: the list, the create dialog (the Gcore flow plus permissions,
// limits and the model allow-list), the one showing of a secret, and a
// key's page with its tabs, rotation, disabling and deletion.

import { h, mount, dialog, confirmDialog, errorBox, fmtTime, badge, field, tabs, splitList, toast } from './dom.js';
import { api, query, enc, WAIT, propagationText } from './api.js';
import { state, go, pp } from './state.js';
import { usageView } from './usage.js';
import { tokenInputs, setOnly } from './limits.js';

export const PERMISSIONS = ['run_inference', 'read_models', 'use_streaming', 'write_models', 'delete_models', 'manage_cache',
  'read_metrics', 'write_config', 'manage_users', 'view_audit_logs', 'manage_queue'];
const DEFAULT_PERMISSIONS = ['run_inference', 'read_models', 'use_streaming'];
const PAGE = 50;

export async function loadDeployments() {
  const page = await api('GET', `${pp()}/deployments`);
  return page.items || [];
}

export function keyStatus(k) {
  if (k.disabled) return badge('disabled', 'off');
  if (k.expires_at && new Date(k.expires_at) <= new Date()) return badge('expired', 'bad');
  return badge('active', 'ok');
}

function statusName(k) {
  if (k.disabled) return 'disabled';
  if (k.expires_at && new Date(k.expires_at) <= new Date()) return 'expired';
  return 'active';
}

function expiryText(k) { return k.expires_at ? fmtTime(k.expires_at) : 'never'; }

// ---- inputs shared by the create dialog and the key's tabs ----

function checkList(name, options, chosen) {
  const box = h('div', { class: 'checks', role: 'group', 'aria-label': name });
  for (const o of options) {
    const [value, label] = typeof o === 'string' ? [o, o] : o;
    box.append(h('label', {}, h('input', { type: 'checkbox', name, value, checked: chosen.includes(value) }), label));
  }
  return { node: box, value: () => [...box.querySelectorAll('input:checked')].map((i) => i.value) };
}

function deploymentsInput(deps, chosen) {
  if (!deps.length) return { node: h('p', { class: 'muted', text: 'This project has no deployments yet.' }), value: () => [] };
  return checkList('deployments', deps.map((d) => [d.id, d.name]), chosen);
}

// expirationInput: "Never", or a date meaning 00:00 UTC that day.
function expirationInput(current) {
  const id = `exp-${Math.random().toString(36).slice(2)}`;
  const date = current ? new Date(current).toISOString().slice(0, 10) : '';
  const never = h('input', { type: 'radio', name: id, value: 'never', checked: !current });
  const on = h('input', { type: 'radio', name: id, value: 'date', checked: !!current });
  const day = h('input', { type: 'date', name: 'expires_at', value: date, 'aria-label': 'Expiration date',
    oninput: () => { on.checked = true; } });
  const node = h('div', {},
    h('div', { class: 'checks', role: 'radiogroup', 'aria-label': 'Expiration' },
      h('label', {}, never, 'Never expires'), h('label', {}, on, 'Expires on'), day),
    h('div', { class: 'hint', text: 'A date means 00:00 UTC on that day: the key stops working as that day begins.' }));
  return { node, value: () => (never.checked || !day.value ? null : day.value) };
}

function numberInput(name, value, min = 1) {
  return h('input', { type: 'number', name, min, value: value ?? '', placeholder: 'none' });
}

function limitsInputs(k) {
  const rpm = numberInput('requests_per_minute', k.rate_limit ? k.rate_limit.requests_per_minute : '');
  const conc = numberInput('max_concurrency', k.max_concurrency);
  const models = h('input', { name: 'models', value: (k.models || []).join(', '), placeholder: 'any model' });
  return {
    nodes: [
      field('Rate limit (requests per minute)', rpm, 'Empty: no limit.'),
      field('Models', models, 'Comma-separated patterns ("*" within a name, e.g. meta-llama/*). Empty: any model the deployments allow.'),
      field('Max concurrency (per edge)', conc, 'Requests of this key in flight at once at each edge. Empty: no cap.'),
    ],
    rateLimit: () => (rpm.value ? { requests_per_minute: Number(rpm.value) } : null),
    maxConcurrency: () => (conc.value ? Number(conc.value) : null),
    models: () => splitList(models.value),
  };
}

// ---- the secret, shown once ----

// showSecret shows a secret in a modal until the operator says it is
// copied; then the dialog, and the only node holding the secret, leaves
// the document.
export function showSecret(title, secret, extra) {
  return new Promise((resolve) => {
    const code = h('code', { id: 'secret', text: secret });
    const copied = h('span', { class: 'hint', role: 'status' });
    const copy = h('button', { type: 'button', class: 'secondary', id: 'copy', text: 'Copy', onclick: async () => {
      try {
        await navigator.clipboard.writeText(code.textContent);
        copied.textContent = 'Copied.';
      } catch {
        getSelection().selectAllChildren(code);
        copied.textContent = 'Selected: press Ctrl+C to copy.';
      }
    } });
    const d = dialog(title,
      h('p', { class: 'notice warn', text: 'This is the only time the secret is shown. Copy it now and keep it safe: it cannot be shown again.' }),
      h('div', { class: 'secret' }, code, copy), copied, extra || null,
      h('div', { class: 'actions' }, h('button', { type: 'button', id: 'copied', text: "OK, I've copied", onclick: () => d.close() })));
    d.addEventListener('cancel', (e) => e.preventDefault()); // Escape does not skip the warning
    d.addEventListener('close', () => { code.textContent = ''; resolve(); });
    copy.focus();
  });
}

// ---- the list ----

export async function keysPage() {
  const deps = await loadDeployments();
  const depName = new Map(deps.map((d) => [d.id, d.name]));
  let cursors = [''];
  let items = [];
  let next = null;
  const search = h('input', { type: 'search', id: 'key-search', placeholder: 'Search by name, prefix or id', 'aria-label': 'Search keys' });
  const status = h('select', { id: 'key-status', 'aria-label': 'Status' },
    ['all', 'active', 'disabled', 'expired'].map((v) => h('option', { value: v, text: v === 'all' ? 'Any status' : v })));
  const depFilter = h('select', { id: 'key-deployment', 'aria-label': 'Deployment' },
    h('option', { value: '', text: 'Any deployment' }), deps.map((d) => h('option', { value: d.id, text: d.name })));
  const body = h('tbody');
  const pager = h('div', { class: 'pager' });
  const msg = h('div');

  function render() {
    const q = search.value.trim().toLowerCase();
    const shown = items.filter((k) => (!q || [k.name, k.prefix, k.id, k.description].some((v) => (v || '').toLowerCase().includes(q)))
      && (status.value === 'all' || statusName(k) === status.value)
      && (!depFilter.value || (k.deployments || []).includes(depFilter.value)));
    body.replaceChildren(...shown.map((k) => h('tr', { dataset: { key: k.id } },
      h('td', {}, h('a', { href: `#/keys/${enc(k.id)}`, class: 'key-name', text: k.name || '(no name)' }),
        k.description ? h('div', { class: 'hint', text: k.description }) : null),
      h('td', {}, h('code', { text: k.prefix })),
      h('td', { text: (k.deployments || []).map((id) => depName.get(id) || id).join(', ') || '—' }),
      h('td', { text: (k.permissions || []).join(', ') }),
      h('td', { text: expiryText(k) }),
      h('td', {}, keyStatus(k)))));
    if (!shown.length) body.append(h('tr', {}, h('td', { colspan: 6, class: 'muted', text: items.length ? 'No key on this page matches.' : 'No API keys yet.' })));
    pager.replaceChildren(
      h('button', { type: 'button', class: 'secondary', disabled: cursors.length < 2, text: 'Previous page',
        onclick: () => { cursors.pop(); load(cursors[cursors.length - 1]); } }),
      h('span', { class: 'muted', text: `Page ${cursors.length}` }),
      h('button', { type: 'button', class: 'secondary', id: 'next-page', disabled: !next, text: 'Next page',
        onclick: () => { cursors.push(next); load(next); } }));
  }

  async function load(cursor) {
    try {
      const page = await api('GET', `${pp()}/keys${query({ limit: PAGE, cursor })}`);
      items = page.items || [];
      next = page.next_cursor;
      msg.replaceChildren();
    } catch (e) {
      msg.replaceChildren(errorBox(e));
    }
    render();
  }

  for (const el of [search, status, depFilter]) el.addEventListener('input', render);
  mount(h('h1', { text: 'API keys' }),
    h('div', { class: 'toolbar' }, h('div', { class: 'grow' }, search), status, depFilter,
      h('button', { type: 'button', id: 'create-key', text: 'Create API key', onclick: () => createKeyDialog(deps, () => load(cursors[cursors.length - 1])) })),
    msg,
    h('table', { id: 'keys' }, h('thead', {}, h('tr', {}, ['Name', 'Prefix', 'Deployments', 'Permissions', 'Expires', 'Status'].map((t) => h('th', { text: t })))), body),
    pager,
    h('p', { class: 'hint', text: 'Search and filters apply to the page shown.' }));
  await load('');
}

function createKeyDialog(deps, done) {
  const name = h('input', { name: 'name', id: 'key-name', required: true, maxlength: 200, autocomplete: 'off' });
  const desc = h('textarea', { name: 'description', id: 'key-description', maxlength: 2000 });
  const depsIn = deploymentsInput(deps, []);
  const exp = expirationInput(null);
  const perms = checkList('permissions', PERMISSIONS, DEFAULT_PERMISSIONS);
  const lim = limitsInputs({});
  const tok = tokenInputs({});
  const err = h('div');
  const submit = h('button', { type: 'submit', id: 'create-key-submit', text: 'Create' });
  const form = h('form', { method: 'dialog', onsubmit: async (e) => {
    e.preventDefault();
    err.replaceChildren();
    submit.disabled = true;
    const body = { name: name.value.trim(), description: desc.value, deployments: depsIn.value(), permissions: perms.value(),
      models: lim.models() };
    if (exp.value()) body.expires_at = exp.value();
    if (lim.rateLimit()) body.rate_limit = lim.rateLimit();
    if (lim.maxConcurrency()) body.max_concurrency = lim.maxConcurrency();
    Object.assign(body, setOnly(tok.values()));
    try {
      const k = await api('POST', `${pp()}/keys${query({ wait: WAIT })}`, body);
      d.close();
      await showSecret(`API key "${k.name}" created`, k.key, propagationNote(k.propagation));
      done();
    } catch (ex) {
      submit.disabled = false;
      if (ex.status !== 401) err.replaceChildren(errorBox(ex));
    }
  } },
  field('Name', name), field('Description', desc),
  h('h3', { text: 'Deployments' }), depsIn.node,
  h('h3', { text: 'Expiration' }), exp.node,
  h('h3', { text: 'Permissions' }), perms.node,
  h('h3', { text: 'Limits' }), lim.nodes,
  h('h3', { text: 'Token limits' }), tok.nodes,
  err,
  h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', onclick: () => d.close(), text: 'Cancel' }), submit));
  const d = dialog('Create API key', form);
  name.focus();
}

function propagationNote(p) {
  return p ? h('p', { class: 'notice', id: 'propagation', text: propagationText(p) }) : null;
}

// ---- one key ----

export async function keyPage(id, tab = 'general') {
  const [k, deps] = await Promise.all([api('GET', `${pp()}/keys/${enc(id)}`), loadDeployments()]);
  const notice = h('div', { id: 'notice' });
  const again = (t = tab) => keyPage(id, t);

  async function save(patch, t) {
    notice.replaceChildren(h('p', { class: 'notice', text: 'Saving…' }));
    try {
      const r = await api('PATCH', `${pp()}/keys/${enc(id)}${query({ wait: WAIT })}`, patch);
      await again(t);
      document.getElementById('notice').replaceChildren(h('p', { class: 'notice ok', text: `Saved (revision ${r.revision}). ${propagationText(r.propagation)}` }));
    } catch (e) {
      if (e.status !== 401) notice.replaceChildren(errorBox(e));
    }
  }

  const panes = [
    { id: 'general', label: 'General', render: () => {
      const name = h('input', { name: 'name', value: k.name, maxlength: 200 });
      const desc = h('textarea', { name: 'description', maxlength: 2000, value: k.description });
      return h('form', { onsubmit: (e) => { e.preventDefault(); save({ name: name.value.trim(), description: desc.value }, 'general'); } },
        field('Name', name), field('Description', desc),
        h('dl', {}, h('dt', { text: 'ID' }), h('dd', {}, h('code', { text: k.id })),
          h('dt', { text: 'Prefix' }), h('dd', {}, h('code', { text: k.prefix })),
          h('dt', { text: 'Created' }), h('dd', { text: fmtTime(k.created_at) }),
          h('dt', { text: 'Updated' }), h('dd', { text: fmtTime(k.updated_at) }),
          h('dt', { text: 'Revision' }), h('dd', { text: k.revision })),
        h('button', { type: 'submit', text: 'Save changes' }));
    } },
    { id: 'deployments', label: 'Deployments', render: () => {
      const input = deploymentsInput(deps, k.deployments || []);
      return h('form', { onsubmit: (e) => { e.preventDefault(); save({ deployments: input.value() }, 'deployments'); } },
        h('p', { class: 'hint', text: 'The deployments this key may call.' }), input.node, h('button', { type: 'submit', text: 'Save changes' }));
    } },
    { id: 'expiration', label: 'Expiration', render: () => {
      const exp = expirationInput(k.expires_at);
      return h('form', { onsubmit: (e) => { e.preventDefault(); save({ expires_at: exp.value() }, 'expiration'); } },
        h('p', { text: `Currently: ${expiryText(k)}.` }), exp.node, h('button', { type: 'submit', text: 'Save changes' }));
    } },
    { id: 'limits', label: 'Permissions & limits', render: () => {
      const perms = checkList('permissions', PERMISSIONS, k.permissions || []);
      const lim = limitsInputs(k);
      // Token bounds are sent only by an origin that has them.
      const tok = 'tokens_per_minute' in k ? tokenInputs(k) : null;
      return h('form', { onsubmit: (e) => { e.preventDefault();
        save({ permissions: perms.value(), rate_limit: lim.rateLimit(), models: lim.models(), max_concurrency: lim.maxConcurrency(),
          ...(tok ? tok.values() : {}) }, 'limits'); } },
      h('h3', { text: 'Permissions' }), perms.node, h('h3', { text: 'Limits' }), lim.nodes,
      tok ? [h('h3', { text: 'Token limits' }), tok.nodes] : null, h('button', { type: 'submit', text: 'Save changes' }));
    } },
    { id: 'usage', label: 'Usage', render: () => usageView({ key_id: k.id }, ['model']) },
  ];

  async function rotate() {
    const grace = h('input', { type: 'number', name: 'grace_seconds', min: 0, max: 2592000, value: 3600 });
    const err = h('div');
    const d = dialog(`Rotate "${k.name}"`,
      h('form', { onsubmit: async (e) => {
        e.preventDefault();
        try {
          const r = await api('POST', `${pp()}/keys/${enc(id)}/rotate${query({ wait: WAIT })}`, { grace_seconds: Number(grace.value || 0) });
          d.close();
          await showSecret(`New secret for "${r.name}"`, r.key, propagationNote(r.propagation));
          again();
        } catch (ex) { if (ex.status !== 401) err.replaceChildren(errorBox(ex)); }
      } },
      h('p', { text: 'A new secret replaces the current one. The current secret keeps working for the grace period, so clients can switch over.' }),
      field('Grace period (seconds)', grace, '0 ends the current secret (and any earlier ones still in their grace) at once.'), err,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', onclick: () => d.close(), text: 'Cancel' }),
        h('button', { type: 'submit', id: 'rotate-submit', text: 'Rotate' }))));
    grace.focus();
  }

  async function remove() {
    if (!await confirmDialog('Delete API key', `Delete the key "${k.name}" (${k.prefix}…)? Requests with it are refused at once; this cannot be undone.`)) return;
    try {
      await api('DELETE', `${pp()}/keys/${enc(id)}${query({ wait: WAIT })}`);
      toast(`Deleted the key "${k.name}".`);
      go('#/keys');
    } catch (e) { if (e.status !== 401) notice.replaceChildren(errorBox(e)); }
  }

  mount(h('p', {}, h('a', { href: '#/keys', text: '← API keys' })),
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow', id: 'key-title' }, h('span', { text: k.name || '(no name)' }), ' ', keyStatus(k)),
      h('button', { type: 'button', class: 'secondary', id: 'rotate', onclick: rotate, text: 'Rotate secret' }),
      h('button', { type: 'button', class: 'secondary', id: 'toggle-disabled', text: k.disabled ? 'Enable' : 'Disable',
        onclick: () => save({ disabled: !k.disabled }, tab) }),
      h('button', { type: 'button', class: 'danger', id: 'delete-key', onclick: remove, text: 'Delete' })),
    notice,
    tabs(panes, tab, (t) => again(t)));
}
