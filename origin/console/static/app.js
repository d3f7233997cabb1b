// The console's shell: session, navigation (hash routes, so that every
// page is index.html and no path reaches the server but the API's), the
// project picker and the login page.

import { h, mount, errorBox } from './dom.js';
import { api, login, logout, currentSession, onSessionExpired, setSession } from './api.js';
import { keysPage, keyPage } from './keys.js';
import { deploymentsPage, deploymentPage } from './deployments.js';
import { edgesPage } from './edges.js';
import { auditPage } from './audit.js';
import { usagePage } from './usage.js';
import { state, go } from './state.js';


let expiryTimer = 0;

function startSession(sess) {
  state.session = sess;
  document.getElementById('top').hidden = false;
  document.getElementById('who').textContent = sess.username;
  clearTimeout(expiryTimer);
  const ms = new Date(sess.expires_at).getTime() - Date.now();
  if (ms > 0 && ms < 2 ** 31) expiryTimer = setTimeout(() => expired('Your session has expired: log in again.'), ms);
}

function expired(message) {
  state.session = null;
  setSession(null);
  clearTimeout(expiryTimer);
  state.message = message;
  go('#/login');
}

onSessionExpired(expired);

function loginPage() {
  document.getElementById('top').hidden = true;
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, value: 'admin' });
  const pw = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const err = h('div');
  const form = h('form', { class: 'card login', onsubmit: async (e) => {
    e.preventDefault();
    err.replaceChildren();
    try {
      const sess = await login(user.value, pw.value);
      state.message = '';
      startSession(sess);
      await loadProjects();
      go('#/keys');
    } catch (ex) {
      err.replaceChildren(errorBox(ex.status === 401 ? new Error('Wrong username or password.') : ex));
    }
  } },
  h('h1', { text: 'keymesh console' }),
  state.message ? h('div', { class: 'notice warn', id: 'session-message', role: 'alert', text: state.message }) : null,
  h('label', { class: 'field' }, h('span', { text: 'Username' }), user),
  h('label', { class: 'field' }, h('span', { text: 'Password' }), pw),
  err,
  h('button', { type: 'submit', id: 'login', text: 'Log in' }));
  mount(form);
  (state.message || user.value ? pw : user).focus();
}

async function loadProjects() {
  const sel = document.getElementById('project');
  try {
    const page = await api('GET', '/v1/projects');
    const items = page.items || [];
    if (!items.some((p) => p.name === state.project || p.id === state.project) && items.length) state.project = items[0].name;
    sel.replaceChildren(...items.map((p) => h('option', { value: p.name, text: p.name, selected: p.name === state.project })));
  } catch (e) {
    if (e.status !== 401) sel.replaceChildren(h('option', { value: state.project, text: state.project }));
  }
}

const routes = [
  [/^#\/keys$/, 'keys', () => keysPage()],
  [/^#\/keys\/([^/]+)$/, 'keys', (m) => keyPage(decodeURIComponent(m[1]))],
  [/^#\/deployments$/, 'deployments', () => deploymentsPage()],
  [/^#\/deployments\/([^/]+)$/, 'deployments', (m) => deploymentPage(decodeURIComponent(m[1]))],
  [/^#\/edges$/, 'edges', () => edgesPage()],
  [/^#\/audit$/, 'audit', () => auditPage()],
  [/^#\/usage$/, 'usage', () => usagePage()],
];

async function route() {
  for (const f of state.stop.splice(0)) f(); // a page's timers end with it
  if (!state.session || location.hash === '#/login') {
    if (state.session && location.hash === '#/login') { go('#/keys'); return; }
    loginPage();
    return;
  }
  const hash = location.hash || '#/keys';
  for (const [re, section, page] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.section === section);
    try {
      await page(m);
    } catch (e) {
      if (e.status !== 401) mount(errorBox(e));
    }
    document.getElementById('main').focus({ preventScroll: true });
    return;
  }
  go('#/keys');
}

async function start() {
  document.getElementById('logout').addEventListener('click', async () => {
    await logout();
    state.session = null;
    state.message = 'You have logged out.';
    go('#/login');
  });
  document.getElementById('project').addEventListener('change', (e) => {
    state.project = e.target.value;
    const section = (location.hash.match(/^#\/(\w+)/) || [])[1] || 'keys';
    go(`#/${section}`);
  });
  window.addEventListener('hashchange', route);
  const sess = await currentSession();
  if (sess) {
    startSession(sess);
    await loadProjects();
  }
  route();
}

start();
