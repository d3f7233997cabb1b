// Deployments: the list, the create/edit form, and the "API Keys
// authentication" tab whose Save changes shows the change reaching the
// edges (the ?wait answer, and the edges' applied revisions meanwhile).

import { h, mount, errorBox, badge, field, tabs, splitList, confirmDialog, toast } from './dom.js';
import { api, query, enc, WAIT, propagationText } from './api.js';
import { go, pp } from './state.js';
import { tokenInputs, setOnly } from './limits.js';

export async function deploymentsPage() {
  const page = await api('GET', `${pp()}/deployments`);
  const items = page.items || [];
  mount(h('h1', { text: 'Deployments' }),
    h('div', { class: 'toolbar' }, h('div', { class: 'grow' }),
      h('button', { type: 'button', id: 'create-deployment', text: 'Create deployment', onclick: () => go('#/deployments/new') })),
    h('table', { id: 'deployments' }, h('thead', {}, h('tr', {}, ['Name', 'Hosts', 'Path prefix', 'Upstream sites', 'Authentication']
      .map((t) => h('th', { text: t })))),
    h('tbody', {}, items.length ? items.map((d) => h('tr', { dataset: { deployment: d.id } },
      h('td', {}, h('a', { href: `#/deployments/${enc(d.id)}`, text: d.name })),
      h('td', { text: (d.hosts || []).join(', ') || 'any host' }),
      h('td', {}, h('code', { text: d.path_prefix || '/' })),
      h('td', { text: Object.keys(d.upstreams || {}).join(', ') }),
      h('td', {}, d.auth_enabled ? badge('API keys', 'ok') : badge('open', 'warn'))))
      : h('tr', {}, h('td', { colspan: 5, class: 'muted', text: 'No deployments yet.' })))));
}

function upstreamRows(upstreams) {
  const box = h('div', { id: 'upstreams' });
  const add = (site = '', urls = []) => {
    const row = h('div', { class: 'row' },
      h('input', { class: 'site', name: 'site', value: site, placeholder: 'site or *', 'aria-label': 'Site' }),
      h('input', { name: 'urls', value: urls.join(', '), placeholder: 'http://host:port, …', 'aria-label': 'Upstream URLs' }),
      h('button', { type: 'button', class: 'secondary', text: 'Remove', onclick: () => row.remove() }));
    box.append(row);
  };
  const entries = Object.entries(upstreams || {});
  if (!entries.length) add('*', []);
  for (const [site, urls] of entries) add(site, urls);
  return {
    node: h('div', {}, box, h('button', { type: 'button', class: 'secondary', text: 'Add a site', onclick: () => add() })),
    value: () => {
      const out = {};
      for (const row of box.querySelectorAll('.row')) {
        const site = row.querySelector('[name=site]').value.trim();
        const urls = splitList(row.querySelector('[name=urls]').value);
        if (site && urls.length) out[site] = urls;
      }
      return out;
    },
  };
}

function num(v) { return v === '' ? null : Number(v); }

// deploymentForm edits everything of d but its keys (null: a new one).
function deploymentForm(d, onSaved) {
  const isNew = !d;
  d = d || { hosts: [], path_prefix: '', upstreams: {}, auth_enabled: true, invalid_key_status: 401, upstream_auth: null, models: [] };
  const ua = d.upstream_auth || { mode: 'none' };
  const name = h('input', { name: 'name', id: 'deployment-name', value: d.name || '', required: true, maxlength: 63 });
  const hosts = h('input', { name: 'hosts', value: (d.hosts || []).join(', '), placeholder: 'any host' });
  const prefix = h('input', { name: 'path_prefix', value: d.path_prefix || '', placeholder: '/' });
  const strip = h('input', { type: 'checkbox', name: 'strip_prefix', id: 'strip-prefix', checked: !!d.strip_prefix });
  const ups = upstreamRows(d.upstreams);
  const auth = h('input', { type: 'checkbox', name: 'auth_enabled', checked: d.auth_enabled });
  const invalid = h('select', { name: 'invalid_key_status' }, [401, 403].map((v) => h('option', { value: v, text: v, selected: d.invalid_key_status === v })));
  const mode = h('select', { name: 'upstream_auth_mode' }, ['none', 'inject', 'passthrough'].map((v) => h('option', { value: v, text: v, selected: ua.mode === v })));
  const header = h('input', { name: 'upstream_auth_header', value: ua.header || '', placeholder: 'Authorization' });
  const uprefix = h('input', { name: 'upstream_auth_prefix', value: ua.prefix ?? '', placeholder: 'Bearer ' });
  const secret = h('input', { name: 'upstream_auth_secret', value: ua.secret || '', placeholder: 'secret name, e.g. openai-prod' });
  const rpm = h('input', { type: 'number', min: 1, name: 'requests_per_minute', value: d.rate_limit ? d.rate_limit.requests_per_minute : '', placeholder: 'none' });
  const body = h('input', { type: 'number', min: 1, name: 'max_body_bytes', value: d.max_body_bytes ?? '', placeholder: '10485760' });
  const prompt = h('input', { type: 'number', min: 1, name: 'max_prompt_chars', value: d.max_prompt_chars ?? '', placeholder: '10000' });
  const models = h('input', { name: 'models', value: (d.models || []).join(', '), placeholder: 'any model' });
  const conc = h('input', { type: 'number', min: 1, name: 'max_concurrency', value: d.max_concurrency ?? '', placeholder: 'none' });
  const tok = tokenInputs(d, true);
  const err = h('div');
  return h('form', { id: 'deployment-form', onsubmit: async (e) => {
    e.preventDefault();
    err.replaceChildren();
    const input = { name: name.value.trim(), hosts: splitList(hosts.value), path_prefix: prefix.value.trim() || null, upstreams: ups.value(),
      strip_prefix: strip.checked,
      auth_enabled: auth.checked, invalid_key_status: Number(invalid.value),
      upstream_auth: mode.value === 'none' ? null : { mode: mode.value, header: header.value.trim() || undefined,
        prefix: uprefix.value || undefined, secret: secret.value.trim() || undefined },
      rate_limit: rpm.value ? { requests_per_minute: Number(rpm.value) } : null,
      models: splitList(models.value), max_concurrency: num(conc.value) };
    if (body.value) input.max_body_bytes = Number(body.value);
    if (prompt.value) input.max_prompt_chars = Number(prompt.value);
    // A new deployment sends only the bounds set; an edit sends them all
    // (null removes one), on an origin that has them.
    if (isNew) Object.assign(input, setOnly(tok.values()));
    else if ('tokens_per_minute' in d) Object.assign(input, tok.values());
    try {
      const r = isNew ? await api('POST', `${pp()}/deployments${query({ wait: WAIT })}`, input)
        : await api('PATCH', `${pp()}/deployments/${enc(d.id)}${query({ wait: WAIT })}`, input);
      onSaved(r);
    } catch (ex) { if (ex.status !== 401) err.replaceChildren(errorBox(ex)); }
  } },
  field('Name', name), field('Hosts', hosts, 'Comma-separated; exact names or *.suffix. Empty: every host.'),
  field('Path prefix', prefix, 'Requests under this path match (the longest prefix wins).'),
  h('label', { class: 'switch' }, strip, 'Strip the prefix: the upstream gets the path without it (off: the path as sent)'),
  h('h3', { text: 'Upstreams per site' }), h('p', { class: 'hint', text: 'An edge uses its own site\'s list, else "*".' }), ups.node,
  h('h3', { text: 'Authentication' }),
  h('label', { class: 'switch' }, auth, 'Require an API key'),
  field('Status for an invalid key', invalid),
  h('h3', { text: 'Upstream authentication' }),
  field('Mode', mode, 'inject: the edge sets the header from its local secret of that name; passthrough: the client\'s own value.'),
  field('Header', header), field('Prefix', uprefix), field('Secret name', secret, 'A name only: the secret itself stays on the edges.'),
  h('h3', { text: 'Limits' }),
  field('Rate limit (requests per minute)', rpm), field('Max body bytes', body), field('Max prompt characters', prompt),
  field('Models', models, 'Comma-separated patterns. Empty: any model.'), field('Max concurrency (per edge)', conc),
  h('h3', { text: 'Token limits' }), tok.nodes,
  err, h('button', { type: 'submit', id: 'deployment-save', text: isNew ? 'Create deployment' : 'Save changes' }));
}

// watchEdges shows, until stopped, which live edges hold revision rev.
function watchEdges(rev, out) {
  let stopped = false;
  (async () => {
    while (!stopped) {
      try {
        const edges = await api('GET', '/v1/edges');
        const live = (Array.isArray(edges) ? edges : edges.items || []).filter((e) => e.live);
        if (stopped) return;
        const applied = live.filter((e) => e.applied_revision >= rev);
        out.textContent = `Applying… at ${applied.length} of ${live.length} edges` +
          (applied.length < live.length ? `; pending: ${live.filter((e) => e.applied_revision < rev).map((e) => e.id).join(', ')}` : '');
      } catch { return; }
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  return () => { stopped = true; };
}

function authTab(d, keys, linked, reload) {
  const toggle = h('input', { type: 'checkbox', id: 'auth-toggle', role: 'switch', checked: d.auth_enabled });
  const chosen = new Set(linked);
  const list = h('div', { class: 'checks', id: 'auth-keys', role: 'group', 'aria-label': 'Keys' },
    keys.map((k) => h('label', {}, h('input', { type: 'checkbox', value: k.id, checked: chosen.has(k.id),
      onchange: (e) => (e.target.checked ? chosen.add(k.id) : chosen.delete(k.id)) }), k.name || k.prefix, ' ', h('code', { class: 'muted', text: k.prefix }))));
  const status = h('div', { id: 'propagation', role: 'status', 'aria-live': 'polite' });
  const save = h('button', { type: 'button', id: 'auth-save', text: 'Save changes', onclick: async () => {
    const changes = [];
    if (toggle.checked !== d.auth_enabled) changes.push(['PATCH', `${pp()}/deployments/${enc(d.id)}`, { auth_enabled: toggle.checked }]);
    for (const k of keys) {
      if (chosen.has(k.id) && !linked.includes(k.id)) changes.push(['PUT', `${pp()}/deployments/${enc(d.id)}/keys/${enc(k.id)}`]);
      if (!chosen.has(k.id) && linked.includes(k.id)) changes.push(['DELETE', `${pp()}/deployments/${enc(d.id)}/keys/${enc(k.id)}`]);
    }
    if (!changes.length) { status.replaceChildren(h('p', { class: 'notice', text: 'Nothing to save.' })); return; }
    save.disabled = true;
    const live = h('p', { class: 'notice', text: 'Saving…' });
    status.replaceChildren(live);
    let stop = () => {};
    try {
      // Edges apply changes in revision order: waiting for the last one's
      // revision waits for them all.
      let last;
      for (let i = 0; i < changes.length; i++) {
        const [method, path, body] = changes[i];
        if (i === changes.length - 1) {
          // The change's revision is not known before its answer: the
          // next one after the origin's current one stands for it.
          const health = await fetch('/health').then((r) => r.json()).catch(() => ({}));
          const rev = Math.max(last ? last.revision : 0, health.revision || 0) + 1;
          stop = watchEdges(rev, live);
          last = await api(method, `${path}${query({ wait: WAIT })}`, body);
        } else last = await api(method, path, body);
      }
      stop();
      const p = last.propagation;
      const done = p && (p.pending || []).length === 0 && p.live_edges > 0;
      await reload();
      document.getElementById('propagation').replaceChildren(h('p', { class: `notice ${done ? 'ok' : 'warn'}`, id: 'propagation-result',
        text: `Saved (revision ${last.revision}). ${propagationText(p)}` }));
    } catch (e) {
      stop();
      save.disabled = false;
      if (e.status !== 401) status.replaceChildren(errorBox(e));
    }
  } });
  return h('div', {},
    h('label', { class: 'switch' }, toggle, 'API Keys authentication'),
    h('p', { class: 'hint', text: 'Off: every request to this deployment is forwarded without a key.' }),
    h('h3', { text: 'Keys allowed on this deployment' }),
    keys.length ? list : h('p', { class: 'muted', text: 'This project has no keys yet.' }),
    h('div', { class: 'actions' }, save), status);
}

// warnings shows what the API says is misconfigured (e.g. a site without
// an upstream), when it says so.
function warnings(d) {
  const list = Array.isArray(d.warnings) ? d.warnings : [];
  if (!list.length) return null;
  return h('div', { class: 'notice warn', id: 'warnings', role: 'alert' }, h('strong', { text: 'Warnings' }),
    h('ul', {}, list.map((w) => h('li', { text: typeof w === 'string' ? w : w.message || JSON.stringify(w) }))));
}

export async function deploymentPage(id, tab = 'general') {
  if (id === 'new') {
    mount(h('p', {}, h('a', { href: '#/deployments', text: '← Deployments' })), h('h1', { text: 'Create deployment' }),
      deploymentForm(null, (r) => { toast(`Created the deployment "${r.name}". ${propagationText(r.propagation)}`); go(`#/deployments/${enc(r.id)}`); }));
    return;
  }
  const [d, linkedPage, keysPage] = await Promise.all([api('GET', `${pp()}/deployments/${enc(id)}`),
    api('GET', `${pp()}/deployments/${enc(id)}/keys`), api('GET', `${pp()}/keys?limit=1000`)]);
  const linked = ((linkedPage && linkedPage.items) || []).map((k) => k.id);
  const again = (t) => deploymentPage(id, t);
  const notice = h('div', { id: 'notice' });
  async function remove() {
    if (!await confirmDialog('Delete deployment', `Delete the deployment "${d.name}"? Its requests are refused at once; this cannot be undone.`)) return;
    try {
      await api('DELETE', `${pp()}/deployments/${enc(id)}${query({ wait: WAIT })}`);
      toast(`Deleted the deployment "${d.name}".`);
      go('#/deployments');
    } catch (e) { if (e.status !== 401) notice.replaceChildren(errorBox(e)); }
  }
  mount(h('p', {}, h('a', { href: '#/deployments', text: '← Deployments' })),
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, h('span', { text: d.name }), ' ', d.auth_enabled ? badge('API keys', 'ok') : badge('open', 'warn')),
      h('button', { type: 'button', class: 'danger', id: 'delete-deployment', onclick: remove, text: 'Delete' })),
    notice,
    warnings(d),
    tabs([
      { id: 'general', label: 'General', render: () => deploymentForm(d, async (r) => {
        await again('general');
        document.getElementById('notice').replaceChildren(h('p', { class: 'notice ok', text: `Saved (revision ${r.revision}). ${propagationText(r.propagation)}` }));
      }) },
      { id: 'auth', label: 'API Keys authentication', render: () => authTab(d, keysPage.items || [], linked, () => again('auth')) },
    ], tab, (t) => again(t)));
}
