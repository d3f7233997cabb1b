// The console's one way to the origin: the REST API of docs/api.md, with
// the session cookie the browser holds (HttpOnly: this code never sees
// the JWT) and the session's CSRF token, kept in this module's memory only
// (never in web storage or a URL), on every state-changing request.

let csrf = '';
let onExpired = () => {};

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || '';
    this.details = e.details || null;
  }
}

export function setSession(s) { csrf = s ? s.csrf_token : ''; }
export function onSessionExpired(f) { onExpired = f; }

async function send(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!['GET', 'HEAD'].includes(method)) headers['X-CSRF-Token'] = csrf;
  const resp = await fetch(path, { method, headers, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  const text = await resp.text();
  if (text) { try { data = JSON.parse(text); } catch { data = null; } }
  return { resp, data };
}

// api calls the REST API; a 401 ends the session (the login page shows
// why) and rejects.
export async function api(method, path, body) {
  const { resp, data } = await send(method, path, body);
  if (resp.status === 401) {
    setSession(null);
    onExpired('Your session has ended (expired or logged out elsewhere): log in again.');
    throw new ApiError(401, data);
  }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

// query builds ?a=b&… from the members that are set.
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const enc = encodeURIComponent;

// The console's own session endpoints (not API endpoints: docs/api.md, "Console").
export async function login(username, password) {
  const { resp, data } = await send('POST', '/console/session', { username, password });
  if (!resp.ok) throw new ApiError(resp.status, data);
  setSession(data);
  return data;
}

export async function currentSession() {
  const { resp, data } = await send('GET', '/console/session');
  if (!resp.ok) return null;
  setSession(data);
  return data;
}

export async function logout() {
  try { await send('DELETE', '/console/session'); } finally { setSession(null); }
}

// WAIT is how long a mutation waits for the edges (?wait=): the console
// shows which edges applied the change and which are still pending.
export const WAIT = '10s';

// propagationText describes a mutation's propagation report.
export function propagationText(p) {
  if (!p) return '';
  const n = p.live_edges ?? ((p.applied || []).length + (p.pending || []).length);
  if (n === 0) return 'No live edge is known to the origin: nothing proves the change reached an edge.';
  let t = `Applied at ${(p.applied || []).length} of ${n} edge${n === 1 ? '' : 's'}`;
  if ((p.pending || []).length) t += `; pending: ${p.pending.join(', ')}`;
  return t + '.';
}
