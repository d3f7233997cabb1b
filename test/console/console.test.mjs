// The operator console in a real Chromium (Debian's, driven by
// playwright-core) against a real origin, edge and mock upstream, started
// by scripts/ci-console.sh. One operator's session, in order: log in,
// create a deployment and a key (keyboard only), read the secret once,
// call the edge with it, unlink it on the deployment's API Keys
// authentication tab and see the change applied at every edge, find the
// refusal in the audit log, turn authentication off, delete the key; and
// what must never work: markup in a key name, a change without the CSRF
// token, another site's form, a session that has ended.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const ORIGIN = process.env.KEYMESH_ORIGIN_URL;
const EDGE = process.env.KEYMESH_EDGE_URL;
const UPSTREAM = process.env.KEYMESH_UPSTREAM_URL;
const PASSWORD = process.env.KEYMESH_ADMIN_PASSWORD;
const OTHER_PORT = Number(process.env.KEYMESH_OTHER_SITE_PORT);
const SHOTS = process.env.CONSOLE_SCREENSHOTS;
const XSS = '<img src=x onerror="window.__xss=1">';
for (const [k, v] of Object.entries({ ORIGIN, EDGE, UPSTREAM, PASSWORD, OTHER_PORT })) assert.ok(v, `${k} is not set (run make test-console)`);

let ctx, page, userDir, jwt;
const consoleErrors = [];

before(async () => {
  userDir = mkdtempSync(join(tmpdir(), 'keymesh-chromium-'));
  ctx = await chromium.launchPersistentContext(userDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium', headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 860 },
  });
  await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: ORIGIN });
  page = ctx.pages()[0] || await ctx.newPage();
  page.setDefaultTimeout(20000); // a mutation waits up to 10 s for the edges (?wait=10s)
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
  const r = await fetch(`${ORIGIN}/v1/auth/login`, { method: 'POST', body: JSON.stringify({ username: 'admin', password: PASSWORD }) });
  assert.equal(r.status, 200);
  jwt = (await r.json()).token;
});

after(async () => {
  await ctx?.close();
  if (userDir) rmSync(userDir, { recursive: true, force: true });
});

// shot saves a screenshot of the page (without passing notifications).
// A secret on screen is masked.
async function shot(name) {
  if (!SHOTS) return;
  await page.evaluate(() => document.getElementById('toast').replaceChildren());
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true, mask: [page.locator('#secret')] });
}

async function admin(method, path, body) {
  const r = await fetch(`${ORIGIN}${path}`, { method, headers: { Authorization: `Bearer ${jwt}` }, body: body && JSON.stringify(body) });
  return { status: r.status, body: r.status === 204 ? null : await r.json() };
}

async function chat(key) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers['X-API-Key'] = key;
  const r = await fetch(`${EDGE}/v1/chat/completions`, { method: 'POST', headers,
    body: JSON.stringify({ model: 'mock-model', messages: [{ role: 'user', content: 'hi' }] }) });
  await r.arrayBuffer();
  return r.status;
}

// until polls f until it returns true, for at most ms.
async function until(what, f, ms = 10000) {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    last = await f();
    if (last === true) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${what}: still ${JSON.stringify(last)} after ${ms} ms`);
}

async function login() {
  await page.locator('#password').fill(PASSWORD);
  await page.locator('#login').click();
  await page.locator('#keys').waitFor();
}

// tabTo presses Tab until the element with id has the focus.
async function tabTo(id) {
  for (let i = 0; i < 60; i++) {
    if (await page.evaluate(() => document.activeElement && document.activeElement.id) === id) return;
    await page.keyboard.press('Tab');
  }
  assert.fail(`Tab never reached #${id}`);
}

let secret, keyId, depId;

test('the console, end to end', async (t) => {
  await t.test('log in', async () => {
    const resp = await page.goto(`${ORIGIN}/`);
    const h = resp.headers();
    assert.match(h['content-security-policy'], /default-src 'self'/);
    assert.match(h['content-security-policy'], /frame-ancestors 'none'/);
    assert.equal(h['x-frame-options'], 'DENY');
    await page.locator('#password').waitFor();
    await shot('login');
    await page.locator('#password').fill('not the password');
    await page.locator('#login').click();
    await page.getByText('Wrong username or password.').waitFor();
    await login();
    const cookies = await ctx.cookies(ORIGIN);
    const c = cookies.find((x) => x.name === 'keymesh_console');
    assert.ok(c && c.httpOnly && c.sameSite === 'Strict', `session cookie ${JSON.stringify(c)}`);
    assert.equal(await page.evaluate(() => document.cookie), '', 'the page can read no cookie');
    assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0, 'nothing in web storage');
  });

  await t.test('create a deployment', async () => {
    await page.locator('#nav a[data-section=deployments]').click();
    await page.locator('#create-deployment').click();
    await page.locator('#deployment-name').fill('console-dep');
    await page.locator('#upstreams [name=urls]').fill(UPSTREAM);
    await shot('deployment-create');
    await page.locator('#deployment-save').click();
    await page.locator('#tab-auth').waitFor();
    depId = decodeURIComponent(new URL(page.url()).hash.split('/')[2]);
    assert.ok(depId);
  });

  await t.test('create a key with the keyboard only; its secret is shown once', async () => {
    await page.locator('#nav a[data-section=keys]').click();
    await page.locator('#create-key').focus();
    await page.keyboard.press('Enter');
    await page.locator('dialog #key-name').waitFor();
    assert.equal(await page.evaluate(() => document.activeElement.id), 'key-name', 'the dialog focuses its first field');
    await page.keyboard.type('console-key');
    await page.keyboard.press('Tab');
    await page.keyboard.type('made by the browser test');
    await page.keyboard.press('Tab'); // the deployment's checkbox
    await page.keyboard.press('Space');
    assert.equal(await page.locator('dialog input[name=deployments]').isChecked(), true);
    await shot('key-create');
    await tabTo('create-key-submit');
    await page.keyboard.press('Enter');
    const code = page.locator('dialog #secret');
    await code.waitFor();
    secret = await code.textContent();
    assert.match(secret, /^\S{20,}$/);
    await page.locator('#copy').click();
    await page.getByText('Copied.').waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
    await page.keyboard.press('Escape'); // does not skip the warning
    assert.equal(await code.isVisible(), true);
    await shot('key-secret');
    await page.locator('#copied').click();
    await page.locator('dialog').waitFor({ state: 'detached' });
    assert.ok(!(await page.content()).includes(secret), 'the secret is in the DOM after the dialog closed');
    const row = page.locator('#keys tr', { hasText: 'console-key' });
    await row.waitFor();
    assert.match(await row.textContent(), /console-dep/);
    keyId = await row.getAttribute('data-key');
    await shot('keys');
  });

  await t.test('the edge serves the key', async () => {
    await until('a request with the new key', async () => (await chat(secret)) === 200 || await chat(secret));
  });

  await t.test('a key named with markup shows as text', async () => {
    await page.locator('#create-key').click();
    await page.locator('dialog #key-name').fill(XSS);
    await page.locator('#create-key-submit').click();
    await page.locator('#copied').click();
    const link = page.locator('#keys a.key-name', { hasText: 'onerror' });
    await link.waitFor();
    assert.equal(await link.textContent(), XSS);
    assert.equal(await page.locator('#keys img').count(), 0);
    await link.click();
    await page.locator('#key-title').waitFor();
    assert.match(await page.locator('#key-title').textContent(), /<img src=x onerror=/);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
  });

  await t.test('the key page has its tabs', async () => {
    await page.goto(`${ORIGIN}/#/keys/${encodeURIComponent(keyId)}`);
    for (const tab of ['General', 'Deployments', 'Expiration', 'Permissions & limits', 'Usage']) {
      await page.getByRole('tab', { name: tab, exact: true }).click();
    }
    await page.locator('#usage svg.chart').first().waitFor();
    await shot('key-usage');
  });

  await t.test('rotate with a grace period; disable and enable', async () => {
    await page.locator('#rotate').click();
    await page.locator('dialog [name=grace_seconds]').fill('600');
    await page.locator('#rotate-submit').click();
    const code = page.locator('dialog #secret');
    await code.waitFor();
    const rotated = await code.textContent();
    assert.notEqual(rotated, secret);
    await page.locator('#copied').click();
    await page.locator('dialog').waitFor({ state: 'detached' });
    assert.ok(!(await page.content()).includes(rotated), 'the new secret is in the DOM after the dialog closed');
    assert.equal(await chat(rotated), 200);
    assert.equal(await chat(secret), 200, 'the old secret stopped within its grace period');
    await page.locator('#toggle-disabled').click();
    await page.getByText(/Saved \(revision \d+\)\. Applied at 1 of 1 edge/).waitFor();
    assert.match(await page.locator('#key-title').textContent(), /disabled/);
    assert.equal(await chat(rotated), 401);
    await page.locator('#toggle-disabled').click();
    await page.getByText(/Saved \(revision \d+\)\. Applied at 1 of 1 edge/).waitFor();
    assert.equal(await chat(rotated), 200);
    secret = rotated;
    // Token limits on the Permissions & limits tab.
    await page.getByRole('tab', { name: 'Permissions & limits', exact: true }).click();
    await page.locator('[name=tokens_per_day]').fill('50000');
    await page.locator('[name=quota_amount]').fill('100');
    await page.locator('[name=quota_unit]').selectOption('requests');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByText(/Saved \(revision \d+\)\. Applied at 1 of 1 edge/).waitFor();
    const k = (await admin('GET', `/v1/projects/default/keys/${encodeURIComponent(keyId)}`)).body;
    assert.equal(k.tokens_per_day, 50000);
    assert.deepEqual(k.quota, { requests: 100, refill: 'monthly' });
    assert.equal(await chat(secret), 200);
  });

  await t.test('unlinking on the API Keys authentication tab reaches the edge', async () => {
    await page.goto(`${ORIGIN}/#/deployments/${encodeURIComponent(depId)}`);
    await page.locator('#tab-auth').click();
    const box = page.locator(`#auth-keys input[value="${keyId}"]`);
    assert.equal(await box.isChecked(), true);
    await box.uncheck();
    await page.locator('#auth-save').click();
    const result = page.locator('#propagation-result');
    await result.waitFor();
    assert.match(await result.textContent(), /Applied at 1 of 1 edge\b/);
    await shot('deployment-auth');
    assert.equal(await chat(secret), 401);
  });

  await t.test('the audit log shows the refusal', async () => {
    await page.locator('#nav a[data-section=audit]').click();
    // By deployment and reason: the refusal after unlinking says why.
    await page.locator('#audit-deployment').fill('console-dep');
    await page.locator('#audit-status').selectOption('401');
    await page.locator('#audit-reason').selectOption('unlinked');
    await until('the refusal in the audit log', async () => {
      await page.locator('#audit-apply').click();
      await page.waitForTimeout(200);
      return (await page.locator('#audit tbody tr', { hasText: '401' }).count()) > 0;
    });
    const r = await admin('GET', `/v1/audit?deployment=${encodeURIComponent(depId)}&limit=10`);
    assert.ok(Array.isArray(r.body.items), 'GET /v1/audit answers {items, next_cursor}');
    const refused = r.body.items.find((x) => x.status === 401);
    assert.ok(refused, 'the refusal is in the audit log');
    assert.equal(refused.reason, 'unlinked');
    assert.equal(refused.key_id, keyId);
    assert.match(await page.locator('#audit tbody tr', { hasText: '401' }).first().textContent(), /unlinked/);
    await shot('audit');
  });

  await t.test('authentication off: a request without a key goes through', async () => {
    assert.equal(await chat(''), 401);
    await page.goto(`${ORIGIN}/#/deployments/${encodeURIComponent(depId)}`);
    await page.locator('#tab-auth').click();
    await page.locator('#auth-toggle').uncheck();
    await page.locator('#auth-save').click();
    await page.locator('#propagation-result').waitFor();
    assert.match(await page.locator('#propagation-result').textContent(), /Applied at 1 of 1 edge\b/);
    assert.equal(await chat(''), 200);
  });

  await t.test("edit a deployment's limits", async () => {
    await page.locator('#tab-general').click();
    await page.locator('#deployment-form [name=max_prompt_chars]').fill('20000');
    await page.locator('#deployment-form [name=tokens_per_minute]').fill('100000');
    await page.locator('#deployment-form [name=quota_amount]').fill('1000000');
    await page.locator('#deployment-form [name=quota_refill]').selectOption('daily');
    await page.locator('#deployment-save').click();
    await page.getByText(/Saved \(revision \d+\)\. Applied at 1 of 1 edge/).waitFor();
    const d = await admin('GET', `/v1/projects/default/deployments/${encodeURIComponent(depId)}`);
    assert.equal(d.body.max_prompt_chars, 20000);
    assert.equal(d.body.tokens_per_minute, 100000);
    assert.deepEqual(d.body.quota, { tokens: 1000000, refill: 'daily' });
    assert.equal(d.body.tokens_per_day, null);
    assert.equal(await chat(''), 200);
    assert.equal(d.body.auth_enabled, false, 'saving the general tab changed authentication');
    assert.deepEqual(d.body.upstreams, { '*': [UPSTREAM] });
  });

  await t.test('edges and usage pages', async () => {
    await page.locator('#nav a[data-section=edges]').click();
    await page.locator('#edges tr[data-edge="console-edge"]').waitFor();
    assert.match(await page.locator('#edges tr[data-edge="console-edge"]').textContent(), /live/);
    await shot('edges');
    await page.locator('#nav a[data-section=usage]').click();
    await page.locator('#usage svg.chart').first().waitFor();
    // Usage records reach the origin through their stream: reload until
    // the key's is in.
    await until('the key in the usage chart', async () => {
      if (await page.locator('#usage .legend', { hasText: 'console-key' }).count()) return true;
      await page.locator('#usage-by').selectOption('deployment');
      await page.locator('#usage-by').selectOption('key');
      await page.waitForTimeout(300);
      return false;
    }, 15000);
    await shot('usage');
    await page.locator('#usage-by').selectOption('model');
    await page.locator('#usage .legend', { hasText: 'mock-model' }).first().waitFor();
    await page.locator('#usage-since').selectOption('168h');
    await page.locator('#usage svg.chart').first().waitFor();
  });

  await t.test('a deployment without an upstream for the edge\'s site shows a warning; strip_prefix is a field', async () => {
    const edges = (await admin('GET', '/v1/edges')).body;
    const site = edges.find((e) => e.id === 'console-edge').site;
    const c = await admin('POST', '/v1/projects/default/deployments?wait=5s', { name: 'misconfigured', path_prefix: '/misconf',
      auth_enabled: false, upstreams: { [`not-${site}`]: [UPSTREAM] } });
    assert.equal(c.status, 201);
    assert.deepEqual(c.body.warnings.map((w) => [w.code, w.site]), [['no_upstream_for_site', site]]);
    await page.goto(`${ORIGIN}/#/deployments/${encodeURIComponent(c.body.id)}`);
    await page.locator('#warnings').waitFor();
    assert.match(await page.locator('#warnings').textContent(), new RegExp(`no upstream for site "${site}"`));
    await shot('deployment-warnings');
    // The edge's 502 says what is missing.
    const r = await fetch(`${EDGE}/misconf/v1/models`);
    assert.equal(r.status, 502);
    assert.equal((await r.json()).error.message, `no upstream configured for site ${site}`);
    // strip_prefix from the General tab.
    await page.locator('#strip-prefix').check();
    await page.locator('#deployment-save').click();
    await page.getByText(/Saved \(revision \d+\)/).waitFor();
    const d = await admin('GET', `/v1/projects/default/deployments/${encodeURIComponent(c.body.id)}`);
    assert.equal(d.body.strip_prefix, true);
    assert.equal((await admin('DELETE', `/v1/projects/default/deployments/${encodeURIComponent(c.body.id)}`)).status, 204);
  });

  await t.test('delete the key, with confirmation', async () => {
    await page.goto(`${ORIGIN}/#/keys/${encodeURIComponent(keyId)}`);
    await page.locator('#delete-key').click();
    await page.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await admin('GET', `/v1/projects/default/keys/${encodeURIComponent(keyId)}`)).status, 200, 'Cancel deleted the key');
    await page.locator('#delete-key').click();
    await page.locator('#confirm').click();
    await page.locator('#keys').waitFor();
    assert.equal((await admin('GET', `/v1/projects/default/keys/${encodeURIComponent(keyId)}`)).status, 404);
  });

  await t.test('a change without the CSRF token is refused', async () => {
    const st = await page.evaluate(async () => {
      const out = [];
      for (const token of [null, 'wrong']) {
        const headers = { 'Content-Type': 'application/json' };
        if (token) headers['X-CSRF-Token'] = token;
        const r = await fetch('/v1/projects/default/keys', { method: 'POST', headers, credentials: 'same-origin', body: '{"name":"csrf-fetch"}' });
        out.push(r.status);
      }
      return out;
    });
    assert.deepEqual(st, [403, 403]);
  });

  await t.test("another site's form cannot act", async () => {
    const target = `${ORIGIN}/v1/projects/default/keys`;
    const srv = createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html' });
      res.end(`<form id=f method=POST action="${target}" enctype="text/plain"><input name='{"name":"csrf-form","x":"' value='"}'></form>` +
        '<script>document.getElementById("f").submit()</script>');
    });
    await new Promise((r) => srv.listen(OTHER_PORT, 'localhost', r));
    try {
      const other = await ctx.newPage();
      const answered = other.waitForResponse((r) => r.url() === target);
      await other.goto(`http://localhost:${OTHER_PORT}/`);
      const resp = await answered;
      assert.ok([401, 403].includes(resp.status()), `the cross-site form got ${resp.status()}`);
      await other.close();
    } finally { srv.close(); }
    const keys = (await admin('GET', '/v1/projects/default/keys?limit=1000')).body.items;
    assert.ok(!keys.some((k) => k.name.startsWith('csrf')), 'a refused request created a key');
  });

  await t.test('an ended session returns to the login page with a message', async () => {
    await page.goto(`${ORIGIN}/#/keys`);
    await page.locator('#keys').waitFor();
    assert.equal((await admin('POST', '/v1/auth/logout')).status, 204); // ends every session of admin
    const r = await fetch(`${ORIGIN}/v1/auth/login`, { method: 'POST', body: JSON.stringify({ username: 'admin', password: PASSWORD }) });
    jwt = (await r.json()).token;
    await page.locator('#nav a[data-section=deployments]').click();
    await page.locator('#session-message').waitFor();
    assert.match(await page.locator('#session-message').textContent(), /log in again/);
    await login();
  });

  await t.test('log out', async () => {
    await page.locator('#logout').click();
    await page.locator('#password').waitFor();
    assert.equal((await ctx.cookies(ORIGIN)).filter((c) => c.name === 'keymesh_console').length, 0, 'the cookie outlived the logout');
    await page.reload();
    await page.locator('#password').waitFor();
  });

  assert.deepEqual(consoleErrors.filter((e) => !/status of 40[13]/.test(e)), [], 'errors in the browser console');
});
