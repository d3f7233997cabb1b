// The official openai npm client against a keymesh edge. Run by
// scripts/ci-client.sh (make test-client), which starts the stack and sets
// KEYMESH_EDGE_URL (the edge's base URL), KEYMESH_KEY (a key linked to the
// deployment in front of the mock upstream), and, for the cases that need
// keys of their own, KEYMESH_ORIGIN_URL and KEYMESH_ORIGIN_TOKEN (the
// origin and an admin JWT) and KEYMESH_DEPLOYMENT (that deployment's name).
//
// Every refusal is read the way an application reads it: the error class
// the client throws (AuthenticationError, PermissionDeniedError,
// RateLimitError), its status, error.code and error.type as the client
// exposes them (err.code, err.type), and the response headers (err.headers).
// Clients are built with maxRetries: 0 so that the client's own retries of
// 429s never hide one.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const edge = process.env.KEYMESH_EDGE_URL;
const key = process.env.KEYMESH_KEY;
const originURL = process.env.KEYMESH_ORIGIN_URL;
const originToken = process.env.KEYMESH_ORIGIN_TOKEN;
const project = process.env.KEYMESH_PROJECT || "default";
const deployment = process.env.KEYMESH_DEPLOYMENT || "client";
if (!edge || !key || !originURL || !originToken) {
  throw new Error(
    "KEYMESH_EDGE_URL, KEYMESH_KEY, KEYMESH_ORIGIN_URL and KEYMESH_ORIGIN_TOKEN must be set (run scripts/ci-client.sh)",
  );
}

// The mock upstream's answer, whole or streamed, and its usage: it counts a
// chat request's prompt tokens as the whitespace-separated words of the
// JSON messages array (2 for these messages) and always answers 8
// completion tokens, whatever max_tokens says.
const answer = "Hello! This is a mock completion.";
const messages = [{ role: "user", content: "Say hello." }];
const mockUsage = { prompt_tokens: 2, completion_tokens: 8, total_tokens: 10 };
// The mock upstream's pace between stream chunks, per request (bench
// HeaderMockChunkInterval): a stream of its 8 chunks at 250ms stays in
// flight for about 2 s.
const slowStream = { headers: { "X-Mock-Chunk-Interval": "250ms" } };

const clientOpts = { baseURL: `${edge}/v1`, maxRetries: 0, timeout: 10_000 };
const clientWith = (apiKey, extra = {}) => new OpenAI({ ...clientOpts, apiKey, ...extra });

// countedClient is clientWith(apiKey) counting the HTTP requests it sends,
// so that a case can show the client tried once: no retry hid a 429.
function countedClient(apiKey) {
  const sent = { n: 0 };
  const client = clientWith(apiKey, {
    fetch: (...args) => {
      sent.n++;
      return fetch(...args);
    },
  });
  return { client, sent };
}

const clients = {
  // apiKey sent as Authorization: Bearer <key>
  bearer: () => clientWith(key),
  // the SDK pattern apiKey "unused" plus X-API-Key: <key>
  "x-api-key": () => clientWith("unused", { defaultHeaders: { "X-API-Key": key } }),
};

// ---- the origin's REST API (docs/api.md), for keys of the cases' own ----

async function originCall(method, path, body) {
  const res = await fetch(`${originURL}/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${originToken}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(15_000),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    // left null: the assertion below shows the text
  }
  return { status: res.status, json, text };
}

let keySeq = 0;

// createKey creates a key linked to the deployment (unless fields say
// otherwise), waits until the edge holds it, and returns {id, secret,
// record}.
async function createKey(fields = {}) {
  const name = `client-case-${process.pid}-${++keySeq}`;
  const res = await originCall("POST", `/projects/${project}/keys?wait=5s`, {
    name,
    deployments: [deployment],
    ...fields,
  });
  assert.equal(res.status, 201, `creating key ${JSON.stringify(fields)}: ${res.status} ${res.text}`);
  assert.ok(res.json.key, "the create answer holds the secret");
  await edgeHolds(res.json.key, res.json.revision);
  return { id: res.json.id, secret: res.json.key, record: res.json };
}

async function deleteKey(id) {
  const res = await originCall("DELETE", `/projects/${project}/keys/${id}?wait=5s`);
  // 204, or 200 with the propagation report that ?wait adds.
  assert.ok(res.status === 204 || res.status === 200, `deleting key ${id}: ${res.status} ${res.text}`);
}

// keyInfo is the edge's GET /v1/key for secret: {status, json}. It takes no
// rate-limit token and no concurrency slot (docs/api.md, GET /v1/key).
async function keyInfo(secret) {
  const res = await fetch(`${edge}/v1/key`, {
    headers: { Authorization: `Bearer ${secret}` },
    signal: AbortSignal.timeout(5_000),
  });
  return { status: res.status, json: await res.json().catch(() => null) };
}

// until polls cond (async, truthy when done) every 50ms for at most ms.
async function until(what, ms, cond) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms}ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// edgeHolds waits (bounded) until the edge answers GET /v1/key for secret
// at revision rev or later, so that no case's first request races the key's
// propagation (and none spends a rate-limit token on it).
function edgeHolds(secret, rev) {
  return until(`the edge holding the key at revision ${rev}`, 10_000, async () => {
    const { status, json } = await keyInfo(secret);
    return status === 200 && json.revision >= rev;
  });
}

// inFlightZero waits (bounded) until the edge counts no request of the key
// in flight.
function inFlightZero(secret) {
  return until("the key's requests in flight back to 0", 10_000, async () => {
    const { status, json } = await keyInfo(secret);
    return status === 200 && json.in_flight === 0;
  });
}

// ---- assertions on what the client throws ----

// refused runs call, which must throw an instance of cls (an OpenAI error
// class), and checks the status, code and type the client exposes; it
// returns the error for further checks (err.headers).
async function refused(call, cls, { status, code, type }) {
  let err;
  await assert.rejects(call, (e) => {
    err = e;
    return true;
  });
  assert.ok(err instanceof cls, `want ${cls.name}, got ${err?.constructor?.name}: ${err}`);
  assert.ok(err instanceof OpenAI.APIError, "every refusal is an APIError");
  assert.equal(err.status, status, `${err}`);
  assert.equal(err.code, code, `err.code of ${err}`);
  assert.equal(err.type, type, `err.type of ${err}`);
  // The client exposes the body's error member as err.error, too.
  assert.equal(err.error?.code, code);
  assert.equal(typeof err.error?.message, "string");
  assert.ok(err.headers instanceof Headers, "err.headers is a Headers");
  assert.match(err.headers.get("content-type") ?? "", /^application\/json/);
  // Every answer carries a request id, which the client exposes.
  assert.ok(err.requestID, "err.requestID (X-Request-Id) is set");
  assert.equal(err.requestID, err.headers.get("x-request-id"));
  return err;
}

const chat = (client, extra = {}, opts = undefined) =>
  client.chat.completions.create({ model: "mock-model", messages, ...extra }, opts);

// intHeader reads header name of h as an integer, asserting it is one.
function intHeader(h, name) {
  const v = h.get(name);
  assert.ok(v !== null, `header ${name} is present`);
  assert.match(v, /^\d+$/, `header ${name}: ${v}`);
  return Number(v);
}

before(async () => {
  // The edge may still be catching up with the key's revision: bounded wait.
  const client = clients.bearer();
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await client.models.list();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
});

for (const [name, make] of Object.entries(clients)) {
  test(`chat completion with ${name}`, async () => {
    const res = await chat(make());
    assert.equal(res.object, "chat.completion");
    assert.equal(res.choices[0].message.role, "assistant");
    assert.equal(res.choices[0].message.content, answer);
    assert.equal(res.choices[0].finish_reason, "stop");
    assert.deepEqual(res.usage, mockUsage);
  });

  test(`streamed chat completion with ${name}`, async () => {
    const stream = await chat(make(), { stream: true });
    let content = "";
    let chunks = 0;
    let finish = null;
    for await (const chunk of stream) {
      chunks++;
      assert.equal(chunk.object, "chat.completion.chunk");
      // The edge asks the upstream for usage to meter the stream and takes
      // that extra chunk out: the client never sees a chunk it did not ask
      // for.
      assert.ok(chunk.choices.length > 0, `a chunk without choices: ${JSON.stringify(chunk)}`);
      assert.equal(chunk.usage ?? null, null);
      content += chunk.choices[0]?.delta?.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.ok(chunks > 1, `want several chunks, got ${chunks}`);
    assert.equal(content, answer);
    assert.equal(finish, "stop");
  });
}

// ---- AuthenticationError (401 AUTHENTICATION_FAILED) ----

const authFailed = { status: 401, code: "AUTHENTICATION_FAILED", type: "authentication_error" };

test("AuthenticationError: a string that is not a keymesh key", async () => {
  await refused(chat(clientWith("sk-not-a-keymesh-key")), OpenAI.AuthenticationError, authFailed);
});

test("AuthenticationError: a keymesh key with a broken checksum", async () => {
  // The last character changed: the edge rejects it without any lookup.
  const last = key.at(-1);
  const broken = key.slice(0, -1) + (last === "A" ? "B" : "A");
  await refused(chat(clientWith(broken)), OpenAI.AuthenticationError, authFailed);
});

test("AuthenticationError: a well-formed key that no longer exists", async () => {
  const k = await createKey();
  await deleteKey(k.id);
  await until("the edge refusing the deleted key", 10_000, async () => (await keyInfo(k.secret)).status === 401);
  for (const client of [clientWith(k.secret), clientWith("unused", { defaultHeaders: { "X-API-Key": k.secret } })]) {
    await refused(chat(client), OpenAI.AuthenticationError, authFailed);
    await refused(client.models.list(), OpenAI.AuthenticationError, authFailed);
  }
});

test("AuthenticationError: no credential at all, with WWW-Authenticate", async () => {
  // Authorization: null makes the client send no Authorization header.
  const client = clientWith("unused", { defaultHeaders: { Authorization: null } });
  const err = await refused(chat(client), OpenAI.AuthenticationError, authFailed);
  assert.match(err.headers.get("www-authenticate") ?? "", /^Bearer/);
});

test("AuthenticationError: a key not linked to the deployment (invalid_key_status 401)", async () => {
  const k = await createKey({ deployments: [] });
  await refused(chat(clientWith(k.secret)), OpenAI.AuthenticationError, authFailed);
});

// ---- PermissionDeniedError (403 PERMISSION_DENIED) ----

const denied = { status: 403, code: "PERMISSION_DENIED", type: "permission_error" };

test("PermissionDeniedError: a model outside the key's allow-list", async () => {
  const k = await createKey({ models: ["allowed-*"] });
  assert.deepEqual(k.record.models, ["allowed-*"]);
  const client = clientWith(k.secret);
  await refused(chat(client), OpenAI.PermissionDeniedError, denied);
  await refused(chat(client, { stream: true }), OpenAI.PermissionDeniedError, denied);
  await refused(client.models.retrieve("mock-model"), OpenAI.PermissionDeniedError, denied);
  // A model the list allows goes through (the mock answers any model).
  const res = await chat(client, { model: "allowed-model" });
  assert.equal(res.model, "allowed-model");
  assert.equal(res.choices[0].message.content, answer);
  // The model list holds only what the key may use: the mock's one model
  // (mock-model) is not.
  const models = await client.models.list();
  assert.deepEqual(models.data, []);
  const all = await clients.bearer().models.list();
  assert.deepEqual(
    all.data.map((m) => m.id),
    ["mock-model"],
  );
});

test("PermissionDeniedError: a key without run_inference, or use_streaming", async () => {
  const readOnly = clientWith((await createKey({ permissions: ["read_models"] })).secret);
  await refused(chat(readOnly), OpenAI.PermissionDeniedError, denied);
  assert.equal((await readOnly.models.list()).data.length, 1, "read_models still lists the models");

  const noStream = clientWith((await createKey({ permissions: ["run_inference", "read_models"] })).secret);
  await refused(chat(noStream, { stream: true }), OpenAI.PermissionDeniedError, denied);
  assert.equal((await chat(noStream)).choices[0].message.content, answer);
});

// ---- RateLimitError (429 RATE_LIMITED, CONCURRENCY_LIMIT) ----

test("RateLimitError: requests_per_minute 2 refuses the third with Retry-After and X-RateLimit-*", async () => {
  const k = await createKey({ rate_limit: { requests_per_minute: 2 } });
  const { client, sent } = countedClient(k.secret);
  const now = Math.floor(Date.now() / 1000);
  for (const remaining of [1, 0]) {
    const { data, response } = await chat(client).withResponse();
    assert.equal(data.choices[0].message.content, answer);
    assert.equal(intHeader(response.headers, "x-ratelimit-limit"), 2);
    assert.equal(intHeader(response.headers, "x-ratelimit-remaining"), remaining);
    const reset = intHeader(response.headers, "x-ratelimit-reset");
    assert.ok(reset > now && reset <= now + 62, `x-ratelimit-reset ${reset} is unix seconds within a minute of ${now}`);
  }
  const sentBefore = sent.n;
  const err = await refused(chat(client), OpenAI.RateLimitError, {
    status: 429,
    code: "RATE_LIMITED",
    type: "rate_limit_error",
  });
  assert.equal(sent.n - sentBefore, 1, "the client sent the refused request once (maxRetries 0)");
  // One token every 30 s: the client is told to come back within that.
  const retry = intHeader(err.headers, "retry-after");
  assert.ok(retry >= 1 && retry <= 30, `retry-after ${retry}`);
  assert.equal(intHeader(err.headers, "x-ratelimit-limit"), 2);
  assert.equal(intHeader(err.headers, "x-ratelimit-remaining"), 0);
  const reset = intHeader(err.headers, "x-ratelimit-reset");
  assert.ok(reset > now && reset <= now + 62, `x-ratelimit-reset ${reset}`);
  // A stream is refused the same way, before any chunk.
  await refused(chat(client, { stream: true }), OpenAI.RateLimitError, {
    status: 429,
    code: "RATE_LIMITED",
    type: "rate_limit_error",
  });
});

const concurrencyLimit = { status: 429, code: "CONCURRENCY_LIMIT", type: "rate_limit_error" };

test("RateLimitError: max_concurrency 1 refuses a second request while a stream is held", async () => {
  const k = await createKey({ max_concurrency: 1 });
  assert.equal(k.record.max_concurrency, 1);
  const client = clientWith(k.secret);
  const stream = await chat(client, { stream: true }, slowStream);
  const it = stream[Symbol.asyncIterator]();
  const first = await it.next();
  assert.equal(first.done, false);
  let content = first.value.choices[0]?.delta?.content ?? "";

  // The stream holds the key's one slot until its last byte.
  const err = await refused(chat(client), OpenAI.RateLimitError, concurrencyLimit);
  assert.equal(err.headers.get("retry-after"), "1");
  await refused(chat(client, { stream: true }), OpenAI.RateLimitError, concurrencyLimit);

  // The refusals did not disturb the held stream.
  for (let r = await it.next(); !r.done; r = await it.next()) {
    content += r.value.choices[0]?.delta?.content ?? "";
  }
  assert.equal(content, answer);
  await inFlightZero(k.secret);
  assert.equal((await chat(client)).choices[0].message.content, answer);
});

test("RateLimitError: max_concurrency 1 gets its slot back when the client aborts a stream", async () => {
  const k = await createKey({ max_concurrency: 1 });
  const client = clientWith(k.secret);
  const stream = await chat(client, { stream: true }, slowStream);
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    break; // leaving the loop aborts the request
  }
  // The edge notices the client gone at its next chunk (250ms later).
  await inFlightZero(k.secret);
  const { data, response } = await chat(client).withResponse();
  assert.equal(data.choices[0].message.content, answer);
  assert.equal(response.status, 200);
});

// ---- token limits and quotas (issue 14 item 6) ----

// The token headers the edge sends, under the names OpenAI's own API uses.
function tokenHeaders(h) {
  const limit = intHeader(h, "x-ratelimit-limit-tokens");
  const remaining = intHeader(h, "x-ratelimit-remaining-tokens");
  // The time until the budget is full again, written as OpenAI writes it
  // (a Go-style duration: "6m0s", "18s", "250ms").
  const reset = h.get("x-ratelimit-reset-tokens");
  assert.match(reset ?? "", /^(\d+h)?(\d+m)?\d+(\.\d+)?(ms|s)$/, `header x-ratelimit-reset-tokens: ${reset}`);
  return { limit, remaining, reset };
}

test("RateLimitError: tokens_per_minute 100 answers the token headers and refuses with QUOTA_EXCEEDED", async () => {
  const k = await createKey({ tokens_per_minute: 100 });
  assert.equal(k.record.tokens_per_minute, 100);
  const { client, sent } = countedClient(k.secret);
  // Each request reserves its max_tokens (30) and settles
  // at the mock's usage (10): a few are admitted, then one is refused. The
  // bucket refills 100/60 tokens a second, far slower than these requests.
  const admitted = [];
  let err = null;
  for (let i = 0; i < 20 && !err; i++) {
    try {
      const { data, response } = await chat(client, { max_tokens: 30 }).withResponse();
      assert.deepEqual(data.usage, mockUsage);
      admitted.push(tokenHeaders(response.headers));
    } catch (e) {
      err = e;
    }
  }
  assert.ok(err, `no refusal in 20 requests of 10 tokens each under 100 tokens per minute: ${JSON.stringify(admitted)}`);
  assert.equal(sent.n, admitted.length + 1, "each request was sent once (maxRetries 0)");
  assert.ok(admitted.length >= 2, `at least 2 requests fit in 100 tokens, ${admitted.length} did`);
  let prev = 100;
  for (const a of admitted) {
    assert.equal(a.limit, 100);
    assert.ok(a.remaining <= 100, `remaining ${a.remaining} within the limit`);
    // Never more than the previous answer left, but for the refill.
    assert.ok(a.remaining <= prev + 5, `remaining ${a.remaining} after ${prev}`);
    prev = a.remaining;
  }
  await refused(Promise.reject(err), OpenAI.RateLimitError, {
    status: 429,
    code: "QUOTA_EXCEEDED",
    type: "rate_limit_error",
  });
  const h = tokenHeaders(err.headers);
  assert.equal(h.limit, 100);
  // The request needs its max_tokens (30) and its prompt (a few tokens):
  // refused, it cannot have had that much left.
  assert.ok(h.remaining < 30 + 10, `refused with ${h.remaining} tokens left`);
  // Retry-After: when the bucket holds enough again, at most a minute.
  const retry = intHeader(err.headers, "retry-after");
  assert.ok(retry >= 1 && retry <= 60, `retry-after ${retry}`);
});

test("RateLimitError: a quota of 25 tokens refuses with INSUFFICIENT_QUOTA, type insufficient_quota", async () => {
  const k = await createKey({ quota: { tokens: 25 } });
  assert.equal(k.record.quota?.tokens, 25);
  const client = clientWith(k.secret);
  // 10 tokens a request: the quota, which never refills, is gone after 3.
  let admitted = 0;
  let err = null;
  for (let i = 0; i < 10 && !err; i++) {
    try {
      await chat(client, { max_tokens: 5 });
      admitted++;
    } catch (e) {
      err = e;
    }
  }
  assert.ok(err, `no refusal in 10 requests of 10 tokens each under a 25-token quota`);
  assert.ok(admitted >= 1 && admitted <= 3, `${admitted} requests admitted under a 25-token quota`);
  await refused(Promise.reject(err), OpenAI.RateLimitError, {
    status: 429,
    code: "INSUFFICIENT_QUOTA",
    type: "insufficient_quota",
  });
  // A quota that never refills has no time to come back at.
  assert.equal(err.headers.get("retry-after"), null, "no Retry-After on a quota that never refills");
  // Still refused: a quota without refill does not come back.
  await refused(chat(client, { max_tokens: 5 }), OpenAI.RateLimitError, {
    status: 429,
    code: "INSUFFICIENT_QUOTA",
    type: "insufficient_quota",
  });
});
