/**
 * HTTP requests to upstream registries, on Node's own http/https clients: one keep-alive
 * pool per protocol, a connect, headers and idle timeout on every request, redirects followed
 * (blob storage often redirects to a CDN; the client's Authorization is not carried to another
 * origin), and the caller's AbortSignal honoured.
 *
 * Node's client rather than undici: streaming a 1 GiB blob through undici held about twice the
 * memory (its body chunks outlive their use until the collector catches up), and the agent's
 * memory budget is bounded by the pieces in flight.
 */
import { request as httpRequest, Agent as HttpAgent, type IncomingMessage } from 'node:http';
import { request as httpsRequest, Agent as HttpsAgent } from 'node:https';
import type { Readable } from 'node:stream';

import { ShoalError, unreachableCode } from '@shoal/runtime';

import { registryUrl, type UpstreamRegistry } from './registries.js';

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
  /** Headers forwarded from the client: `accept`, `authorization`, `range`. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly signal: AbortSignal;
  /**
   * `follow` (default) follows redirects; `manual` returns the redirect itself (a registry
   * redirects to its storage only after it has authorized the request).
   */
  readonly redirects?: 'follow' | 'manual';
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
  readonly body: Readable;
  /** True when the answer came from another URL than the one asked (a redirect followed). */
  readonly redirected?: boolean;
}

/** Default User-Agent; registries log it, which is how tests tell Shoal's requests apart. */
export const DEFAULT_USER_AGENT = 'shoal-agent/0.1';
const MAX_REDIRECTIONS = 5;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/** A request to a URL that took too long at one stage. */
export class UpstreamTimeoutError extends ShoalError<
  'CONNECT_TIMEOUT' | 'HEADERS_TIMEOUT' | 'IDLE_TIMEOUT'
> {
  override readonly name = 'TimeoutError';
}

/**
 * Whether a request failed because nothing answers at the registry's address or name (refused,
 * no route, a name that does not resolve, or no connection within the connect timeout), as
 * opposed to an answer that went wrong. The error itself only: a wrapper's causes may be an
 * earlier request's.
 */
export function isUnreachable(error: unknown): boolean {
  return (
    unreachableCode(error) !== undefined ||
    (error instanceof UpstreamTimeoutError && error.code === 'CONNECT_TIMEOUT')
  );
}

/**
 * The storage a registry redirected a request to (S3, a CDN) refused it, and refused the fresh
 * URL the registry handed out next: the registry's storage is failing, which is not the
 * registry's answer to the client's credentials.
 */
export class StorageRefusedError extends ShoalError<'STORAGE_REFUSED'> {
  override readonly name = 'StorageRefusedError';

  constructor(url: URL, status: number) {
    super(
      'STORAGE_REFUSED',
      502,
      `the registry's storage ${url.host} answered ${status} to a fresh redirect`,
    );
  }
}

/**
 * Whether an answer is the registry's storage refusing a read it was redirected to: a final
 * 4xx or 5xx from an origin other than the registry's (`start`). A redirect from that storage
 * (S3's global endpoint to a regional one, a CDN chain) is not a refusal: it is followed as
 * the registry's own redirect is.
 */
export function isStorageRefusal(start: URL, url: URL, status: number): boolean {
  return status >= 400 && url.origin !== start.origin;
}

export class UpstreamClient {
  readonly #timeouts: UpstreamTimeouts;
  readonly #http = new HttpAgent({ keepAlive: true, maxSockets: 64 });
  readonly #https = new HttpsAgent({ keepAlive: true, maxSockets: 64 });

  readonly #userAgent: string;

  constructor(timeouts: UpstreamTimeouts, userAgent = DEFAULT_USER_AGENT) {
    this.#timeouts = timeouts;
    this.#userAgent = userAgent;
  }

  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const start = registryUrl(req.registry, req.path);
    let url = start;
    const asked: Record<string, string> = { 'user-agent': this.#userAgent };
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined) {
        asked[name] = value;
      }
    }
    let headers = { ...asked };
    let method = req.method;
    let storageRetried = false;
    for (let hop = 0; ; hop += 1) {
      const response = await this.#send(method, url, headers, req.signal);
      const status = response.statusCode ?? 0;
      if (isStorageRefusal(start, url, status)) {
        // The registry sent the request to its storage, which refused it (an expired signed
        // URL, a CDN edge failing): not the registry's answer. A fresh URL from it, once.
        response.resume();
        if (storageRetried) {
          throw new StorageRefusedError(url, status);
        }
        storageRetried = true;
        url = start;
        headers = { ...asked };
        method = req.method;
        continue;
      }
      const location = response.headers.location;
      if (
        req.redirects !== 'manual' &&
        REDIRECTS.has(response.statusCode ?? 0) &&
        location !== undefined &&
        hop < MAX_REDIRECTIONS
      ) {
        response.resume();
        const next = new URL(location, url);
        if (next.origin !== url.origin) {
          // Credentials are for the registry, never for the storage it redirects to.
          delete headers.authorization;
        }
        if (response.statusCode === 303) {
          method = 'GET';
        }
        url = next;
        continue;
      }
      return {
        status: response.statusCode ?? 0,
        headers: response.headers,
        body: response,
        redirected: url.href !== start.href,
      };
    }
  }

  #send(
    method: string,
    url: URL,
    headers: Record<string, string>,
    signal: AbortSignal,
  ): Promise<IncomingMessage> {
    const { connectMs, headersMs, idleMs } = this.#timeouts;
    const send = url.protocol === 'https:' ? httpsRequest : httpRequest;
    const agent = url.protocol === 'https:' ? this.#https : this.#http;
    return new Promise((resolve, reject) => {
      const req = send(url, { method, headers, agent, signal, timeout: idleMs });
      const headersTimer = setTimeout(() => {
        req.destroy(
          new UpstreamTimeoutError(
            'HEADERS_TIMEOUT',
            504,
            `no response from ${url.host} in ${headersMs} ms`,
          ),
        );
      }, headersMs);
      req.once('socket', (socket) => {
        if (!socket.connecting) {
          return;
        }
        const connectTimer = setTimeout(() => {
          req.destroy(
            new UpstreamTimeoutError(
              'CONNECT_TIMEOUT',
              504,
              `could not connect to ${url.host} in ${connectMs} ms`,
            ),
          );
        }, connectMs);
        socket.once('connect', () => clearTimeout(connectTimer));
        socket.once('close', () => clearTimeout(connectTimer));
      });
      // The socket's inactivity timeout, which also covers pauses inside the body.
      req.on('timeout', () => {
        req.destroy(
          new UpstreamTimeoutError('IDLE_TIMEOUT', 504, `${url.host} went quiet for ${idleMs} ms`),
        );
      });
      req.once('response', (response) => {
        clearTimeout(headersTimer);
        resolve(response);
      });
      req.once('error', (error) => {
        clearTimeout(headersTimer);
        reject(error);
      });
      req.end();
    });
  }

  close(): Promise<void> {
    this.#http.destroy();
    this.#https.destroy();
    return Promise.resolve();
  }
}

/** An upstream's answer other than the content: status, headers and a small body. */
export interface UpstreamAnswer {
  readonly status: number;
  readonly headers: UpstreamResponse['headers'];
  readonly body: Buffer;
}

/** Largest answer body kept from an upstream, in bytes (error bodies are small). */
const MAX_ANSWER_BYTES = 64 * 1024;

/** Reads an upstream's non-content answer, keeping at most 64 KiB of its body. */
export async function readAnswer(response: UpstreamResponse): Promise<UpstreamAnswer> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of response.body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    length += chunk.length;
    if (length >= MAX_ANSWER_BYTES) {
      response.body.destroy();
      break;
    }
  }
  return {
    status: response.status,
    headers: response.headers,
    body: Buffer.concat(chunks).subarray(0, MAX_ANSWER_BYTES),
  };
}

/** A fetch ended with the upstream's answer instead of the content (401, 404, ...). */
export class UpstreamAnswerError extends ShoalError<'UPSTREAM_ANSWER'> {
  override readonly name = 'UpstreamAnswerError';
  readonly answer: UpstreamAnswer;

  constructor(answer: UpstreamAnswer) {
    super('UPSTREAM_ANSWER', answer.status, `upstream answered ${answer.status}`);
    this.answer = answer;
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

/** Reads a small body whole; past `limit` bytes it stops and throws what `tooLarge` returns. */
export async function readLimited(
  body: Readable,
  limit: number,
  tooLarge: () => Error,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    length += chunk.length;
    if (length > limit) {
      body.destroy();
      throw tooLarge();
    }
  }
  return Buffer.concat(chunks);
}
