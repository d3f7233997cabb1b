// The official openai npm client against a keymesh edge. Run by
// scripts/ci-client.sh (make test-client), which starts the stack and sets
// KEYMESH_EDGE_URL (the edge's base URL) and KEYMESH_KEY (a key linked to
// the deployment in front of the mock upstream).
import { test, before } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";

const edge = process.env.KEYMESH_EDGE_URL;
const key = process.env.KEYMESH_KEY;
if (!edge || !key) {
  throw new Error("KEYMESH_EDGE_URL and KEYMESH_KEY must be set (run scripts/ci-client.sh)");
}

// The mock upstream's answer, whole or streamed.
const answer = "Hello! This is a mock completion.";
const messages = [{ role: "user", content: "Say hello." }];

const clients = {
  // apiKey sent as Authorization: Bearer <key>
  bearer: () => new OpenAI({ baseURL: `${edge}/v1`, apiKey: key, maxRetries: 0, timeout: 10_000 }),
  // the SDK pattern apiKey "unused" plus X-API-Key: <key>
  "x-api-key": () =>
    new OpenAI({
      baseURL: `${edge}/v1`,
      apiKey: "unused",
      defaultHeaders: { "X-API-Key": key },
      maxRetries: 0,
      timeout: 10_000,
    }),
};

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
    const res = await make().chat.completions.create({ model: "mock-model", messages });
    assert.equal(res.object, "chat.completion");
    assert.equal(res.choices[0].message.role, "assistant");
    assert.equal(res.choices[0].message.content, answer);
    assert.equal(res.choices[0].finish_reason, "stop");
  });

  test(`streamed chat completion with ${name}`, async () => {
    const stream = await make().chat.completions.create({ model: "mock-model", messages, stream: true });
    let content = "";
    let chunks = 0;
    let finish = null;
    for await (const chunk of stream) {
      chunks++;
      assert.equal(chunk.object, "chat.completion.chunk");
      content += chunk.choices[0]?.delta?.content ?? "";
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    assert.ok(chunks > 1, `want several chunks, got ${chunks}`);
    assert.equal(content, answer);
    assert.equal(finish, "stop");
  });
}

test("a wrong key is refused with 401 AUTHENTICATION_FAILED", async () => {
  const client = new OpenAI({ baseURL: `${edge}/v1`, apiKey: "sk-not-a-keymesh-key", maxRetries: 0, timeout: 10_000 });
  await assert.rejects(client.chat.completions.create({ model: "mock-model", messages }), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError, `want AuthenticationError, got ${err}`);
    assert.equal(err.status, 401);
    assert.equal(err.error?.code ?? err.code, "AUTHENTICATION_FAILED");
    return true;
  });
});
