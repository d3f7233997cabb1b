// What every page shares: the chosen project, the session, and the timers
// of the page on screen (stopped when another page is shown).
export const state = { project: 'default', session: null, message: '', stop: [] };

// go shows the page of hash (also when it is already the current one).
export function go(hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent('hashchange'));
  else location.hash = hash;
}

export const pp = () => `/v1/projects/${encodeURIComponent(state.project)}`;
