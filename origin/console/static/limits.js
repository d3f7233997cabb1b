// Token bounds (docs/api.md, "Token limits and quotas"): tokens per minute
// and per day, and a quota of tokens or requests, refilled daily, monthly
// or never — the same members on keys, deployments and projects.

import { h, field } from './dom.js';

function int(v) { return v === '' ? null : Number(v); }

// tokenInputs edits o's token bounds; withDefault adds a deployment's
// default_max_tokens. values() answers the members to send (null removes
// a bound).
export function tokenInputs(o, withDefault = false) {
  const q = o.quota || null;
  const tpm = h('input', { type: 'number', min: 1, name: 'tokens_per_minute', value: o.tokens_per_minute ?? '', placeholder: 'none' });
  const tpd = h('input', { type: 'number', min: 1, name: 'tokens_per_day', value: o.tokens_per_day ?? '', placeholder: 'none' });
  const amount = h('input', { type: 'number', min: 1, name: 'quota_amount', value: q ? (q.tokens ?? q.requests ?? '') : '', placeholder: 'none',
    'aria-label': 'Quota amount' });
  const unit = h('select', { name: 'quota_unit', 'aria-label': 'Quota unit' },
    ['tokens', 'requests'].map((u) => h('option', { value: u, text: u, selected: q ? q[u] != null : u === 'tokens' })));
  const refill = h('select', { name: 'quota_refill', 'aria-label': 'Quota refill' },
    [['daily', 'refilled daily (00:00 UTC)'], ['monthly', 'refilled monthly (the 1st, UTC)'], ['', 'never refilled']]
      .map(([v, t]) => h('option', { value: v, text: t, selected: q ? (q.refill || '') === v : v === 'monthly' })));
  const dmt = withDefault ? h('input', { type: 'number', min: 1, name: 'default_max_tokens', value: o.default_max_tokens ?? '', placeholder: 'none' }) : null;
  return {
    nodes: [
      field('Tokens per minute', tpm, 'Prompt plus completion tokens. Empty: no bound.'),
      field('Tokens per day', tpd),
      h('div', { class: 'field' }, h('span', { class: 'label', text: 'Quota' }), h('div', { class: 'row' }, amount, unit, refill),
        h('div', { class: 'hint', text: 'Empty: no quota.' })),
      dmt ? field('Default max tokens', dmt, 'Reserved for a request that names no max_tokens.') : null,
    ],
    values: () => {
      const out = { tokens_per_minute: int(tpm.value), tokens_per_day: int(tpd.value),
        quota: amount.value ? { [unit.value]: Number(amount.value), refill: refill.value || null } : null };
      if (dmt) out.default_max_tokens = int(dmt.value);
      return out;
    },
  };
}

// setOnly drops the null members, for a create (where absent is the default).
export function setOnly(o) {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== null && v !== undefined));
}
