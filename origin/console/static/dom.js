// DOM helpers. Every text the API provides reaches the page as a text
// node or an attribute value, never as markup: nothing here (or anywhere in
// the console) parses a string as HTML, so a key named
// <img src=x onerror=...> shows as those characters (origin/console's
// tests hold every file to it).

const SVG = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') el.textContent = String(v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'selected' || k === 'hidden' || k === 'required' || k === 'multiple')
      el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// h('tag', {attrs}, ...children): an HTML element; strings become text.
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

// s('tag', {attrs}, ...children): an SVG element.
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG, tag), attrs, children);
}

// mount replaces the children of el (by default <main>).
export function mount(...children) {
  const main = document.getElementById('main');
  main.replaceChildren(...children.flat(Infinity).filter(Boolean));
  return main;
}

export function toast(msg) {
  const box = document.getElementById('toast');
  const d = h('div', { text: msg });
  box.append(d);
  setTimeout(() => d.remove(), 4000);
}

export function fmtTime(t) {
  if (!t) return '—';
  const d = new Date(t);
  if (isNaN(d)) return String(t);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z').replace(/:00Z$/, 'Z');
}

export function ago(t) {
  const d = (Date.now() - new Date(t).getTime()) / 1000;
  if (!isFinite(d)) return '—';
  if (d < 0) return 'just now';
  if (d < 90) return `${Math.round(d)} s ago`;
  if (d < 5400) return `${Math.round(d / 60)} min ago`;
  if (d < 129600) return `${Math.round(d / 3600)} h ago`;
  return `${Math.round(d / 86400)} d ago`;
}

export function badge(text, kind) { return h('span', { class: `badge ${kind}`, text }); }

// field: a labelled input.
export function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', { text: label }), input, hint ? h('div', { class: 'hint', text: hint }) : null);
}

// tabs renders a tab bar over panes: [{id, label, render: () => Node}].
export function tabs(list, current, onSelect) {
  const bar = h('div', { class: 'tabs', role: 'tablist' });
  for (const t of list) {
    bar.append(h('button', { type: 'button', role: 'tab', id: `tab-${t.id}`, 'aria-selected': String(t.id === current),
      onclick: () => onSelect(t.id), text: t.label }));
  }
  const cur = list.find((t) => t.id === current) || list[0];
  const pane = h('div', { role: 'tabpanel', 'aria-labelledby': `tab-${cur.id}` }, cur.render());
  return h('div', {}, bar, pane);
}

// dialog opens a modal <dialog> (focus stays inside it; Escape closes it)
// and removes it from the document when it closes.
export function dialog(title, ...body) {
  const d = h('dialog', { 'aria-label': title }, h('h2', { text: title }), ...body);
  d.addEventListener('close', () => d.remove());
  document.body.append(d);
  d.showModal();
  return d;
}

// confirmDialog resolves true when the operator confirms.
export function confirmDialog(title, message, action = 'Delete') {
  return new Promise((resolve) => {
    let ok = false;
    const d = dialog(title, h('p', { text: message }),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', onclick: () => d.close(), text: 'Cancel' }),
        h('button', { type: 'button', class: 'danger', id: 'confirm', onclick: () => { ok = true; d.close(); }, text: action })));
    d.addEventListener('close', () => resolve(ok));
  });
}

export function errorBox(err) { return h('div', { class: 'error', role: 'alert', text: err && err.message ? err.message : String(err) }); }

// splitList reads "a, b c" as ['a', 'b', 'c'].
export function splitList(v) { return String(v || '').split(/[\s,]+/).filter(Boolean); }
