// The copilot-state client: openapi-fetch over the types generated from the service's own
// OpenAPI document (src/schema.d.ts, `npm run generate`). Nothing here describes a request by
// hand: paths, parameters, bodies and responses all come from the document.
import createClient, { type Client, type ClientOptions } from "openapi-fetch";
import type { components, operations, paths } from "./schema.js";

export type { components, operations, paths };
export type CopilotStateClient = Client<paths>;

/** A client for `baseUrl` (e.g. `http://127.0.0.1:8080`) that sends `token` as its bearer. */
export function createCopilotStateClient(
  baseUrl: string,
  token: string,
  options: Omit<ClientOptions, "baseUrl"> = {},
): CopilotStateClient {
  return createClient<paths>({
    ...options,
    baseUrl,
    headers: { ...(options.headers as Record<string, string> | undefined), Authorization: `Bearer ${token}` },
  });
}

/** The data of a successful answer; throws with the problem document otherwise. */
export function ok<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || result.data === undefined) {
    throw new Error(
      `${result.response.status} ${result.response.url}: ${JSON.stringify(result.error)}`,
    );
  }
  return result.data;
}
