/**
 * HTTP requests to upstream registries. One keep-alive connection pool for all of them, with
 * a connect, headers and idle timeout on every request, redirects followed (blob storage
 * often redirects to a CDN; the client's Authorization is not carried to another origin),
 * and the caller's AbortSignal honoured.
 */
import type { Readable } from 'node:stream';

import { Agent, interceptors, request, type Dispatcher } from 'undici';

import type { UpstreamRegistry } from './config.js';

export interface UpstreamTimeouts {
  readonly connectMs: number;
  readonly headersMs: number;
  readonly idleMs: number;
}

export interface UpstreamRequest {
  readonly registry: UpstreamRegistry;
  readonly method: 'GET' | 'HEAD';
  /** Path below the registry's base URL, starting with `/v2/`. */
  readonly path: string;
  /** Headers forwarded from the client: `accept`, `authorization`. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly signal: AbortSignal;
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Readable;
}

const USER_AGENT = 'shoal-agent/0.1';
const MAX_REDIRECTIONS = 5;

export class UpstreamClient {
  readonly #dispatcher: Dispatcher;
  readonly #agent: Agent;

  constructor(timeouts: UpstreamTimeouts) {
    this.#agent = new Agent({
      connect: { timeout: timeouts.connectMs },
      headersTimeout: timeouts.headersMs,
      bodyTimeout: timeouts.idleMs,
      keepAliveTimeout: 30_000,
      connections: 64,
    });
    this.#dispatcher = this.#agent.compose(
      interceptors.redirect({ maxRedirections: MAX_REDIRECTIONS }),
    );
  }

  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const url = new URL(req.path, req.registry.url);
    const headers: Record<string, string> = { 'user-agent': USER_AGENT };
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined) {
        headers[name] = value;
      }
    }
    const response = await request(url, {
      method: req.method,
      headers,
      signal: req.signal,
      dispatcher: this.#dispatcher,
    });
    return { status: response.statusCode, headers: response.headers, body: response.body };
  }

  async close(): Promise<void> {
    await this.#agent.close();
  }
}

/** The first value of a response header. */
export function headerValue(
  headers: UpstreamResponse['headers'],
  name: string,
): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value[0] : value;
}
