// The README tour, through the typed client (scripts/test.sh runs it against a fresh server):
// API, TOKEN (a service token) and ALICE (a tenant admin of tenant demo) come from the
// environment.
import { createCopilotStateClient, ok } from "./index.js";

function env(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const api = env("API");
const service = createCopilotStateClient(api, env("TOKEN"));
const alice = createCopilotStateClient(api, env("ALICE"));
const demo = { params: { path: { t: "demo" } } } as const;

// 1. A routing policy for tenant demo.
ok(
  await alice.PUT("/v1/tenants/{t}/llm-policy", {
    ...demo,
    body: {
      defaultModel: "gpt-4o-mini",
      defaultProvider: "openai",
      tasks: [{ task: "summarize", model: "claude-haiku", provider: "anthropic", temperature: 0.2 }],
      egressMode: "audit",
    },
  }),
);

// 2. Which route must a call for the summarize task use?
const route = ok(await alice.POST("/v1/tenants/{t}/llm-route", { ...demo, body: { task: "summarize" } }));
console.log(`route: ${route.provider}/${route.model} (egress ${route.egress.effective})`);

// 3. Conversation settings at two levels, then the effective result with its sources.
ok(await service.PUT("/v1/config/global", { body: { mergeMaxMessages: 80 } }));
ok(
  await alice.PATCH("/v1/tenants/{t}/users/{u}/config", {
    params: { path: { t: "demo", u: "alice" } },
    body: { pathMaxMessages: 500 },
  }),
);
const effective = ok(await alice.GET("/v1/tenants/{t}/config/effective", demo));
console.log(`effective: mergeMaxMessages ${effective.mergeMaxMessages} from ${effective.sources.mergeMaxMessages}`);

// 4. A conversation, two messages, and the list of both.
const conversation = ok(
  await alice.POST("/v1/tenants/{t}/conversations", { ...demo, body: { title: "First steps" } }),
);
const path = { params: { path: { t: "demo", id: conversation.id } } } as const;
ok(await alice.POST("/v1/tenants/{t}/conversations/{id}/messages", { ...path, body: { role: "user", content: "Hello!" } }));
ok(
  await service.POST("/v1/tenants/{t}/conversations/{id}/messages", {
    ...path,
    body: { role: "assistant", content: "Hi, how can I help?" },
  }),
);
const messages = ok(
  await alice.GET("/v1/tenants/{t}/conversations/{id}/messages", {
    params: { path: path.params.path, query: { limit: 10 } },
  }),
);
const list = ok(await alice.GET("/v1/tenants/{t}/conversations", demo));
console.log(`messages: ${messages.items.length}; conversations: ${list.items.length}`);
if (messages.items.length !== 2 || !list.items.some((c) => c.id === conversation.id)) {
  throw new Error("the tour did not read back what it wrote");
}
