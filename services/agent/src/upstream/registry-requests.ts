/**
 * Every request the agent sends to a registry goes through here: counted by registry, kind
 * and status, and a failure to get an answer becomes the mirror's 502 UNAVAILABLE.
 */
import { Readable } from 'node:stream';

import { isAbortError, SpanKind, withSpan, type Logger } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import { MirrorError } from '../mirror/errors.js';
import {
  BlobReader,
  DEFAULT_USER_AGENT,
  heldAnswerBody,
  RateLimitHolds,
  type OpenedBlob,
  type UpstreamClient,
  type UpstreamRegistry,
  type UpstreamResponse,
  type UpstreamTimeouts,
} from '@shoal/registry';
import type { Digest } from '@shoal/proto';

export interface RegistryRequest {
  readonly registry: UpstreamRegistry;
  readonly method: 'GET' | 'HEAD';
  /**
   * What is asked, for the metrics: `ping` is the API version check (`/v2/`), `referrers` the
   * referrers API.
   */
  readonly kind: 'manifest' | 'blob' | 'ping' | 'referrers';
  /** Path below the registry's base URL, starting with `/v2/`. */
  readonly path: string;
  /** Forwarded headers: `accept`, `authorization`, `range`. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly signal: AbortSignal;
  /** Whether redirects are followed (default) or returned. */
  readonly redirects?: 'follow' | 'manual';
}

/** A whole-blob GET with the client's credentials (the mirror's own origin fetch). */
export interface BlobRequest {
  readonly registry: UpstreamRegistry;
  /** The repository, as in `/v2/<name>/blobs/...`. */
  readonly name: string;
  readonly digest: Digest;
  /** The client's Authorization header, forwarded as is. */
  readonly authorization: string | undefined;
  readonly signal: AbortSignal;
  /** The blob from this byte on, to resume a transfer that broke off (default 0: whole). */
  readonly from?: number;
}

/**
 * The agent answers no challenge itself: a whole-blob GET carries the client's Authorization,
 * and a 401 goes back to the client.
 */
const CLIENT_CREDENTIALS_ONLY = {
  current: (): undefined => undefined,
  answer: (): Promise<undefined> => Promise.resolve(undefined),
};

export class RegistryRequests {
  readonly #upstream: UpstreamClient;
  readonly #metrics: AgentMetrics;
  /**
   * Whole blobs from the origin: read into a few reused blocks on the raw HTTP client, not
   * through node:http (a fresh 64 KiB buffer per socket read and another per parsed chunk,
   * which made V8 collect the whole heap every few tens of MiB; the seed server's origin
   * reader, see `BlobReader`).
   */
  readonly #blobs: BlobReader;

  /** Registries' 429s with Retry-After, honoured per registry, credential and method. */
  readonly #holds = new RateLimitHolds();
  readonly #logger: Logger | undefined;

  /** `timeouts`: those of the upstream client, for the whole-blob reader too. */
  constructor(
    upstream: UpstreamClient,
    metrics: AgentMetrics,
    timeouts: UpstreamTimeouts,
    logger?: Logger,
  ) {
    this.#upstream = upstream;
    this.#metrics = metrics;
    this.#logger = logger;
    this.#blobs = new BlobReader(CLIENT_CREDENTIALS_ONLY, {
      timeouts,
      userAgent: DEFAULT_USER_AGENT,
    });
  }

  /**
   * GETs a whole blob, redirects followed (the client's credentials never go to another
   * origin), counted and traced as `send` does; resolves at the final answer's head. The body
   * of a 200 comes in lent blocks (each valid until the next is asked for); any other answer
   * comes with its body (`answer`), for the client.
   */
  openBlob(req: BlobRequest): Promise<OpenedBlob> {
    return withSpan(
      'origin GET blob',
      {
        kind: SpanKind.CLIENT,
        attributes: { 'oci.registry': req.registry.host, 'http.request.method': 'GET' },
      },
      async (span) => {
        const held = this.#held(req.registry, 'GET', req.authorization);
        if (held !== undefined) {
          span.setAttribute('http.response.status_code', 429);
          return {
            status: 429,
            headers: held.headers,
            size: held.body.length,
            answer: held.body,
            blocks: noBlocks(),
            cancel: () => undefined,
          };
        }
        const opened = await this.#counted(req.registry, 'blob', req.authorization, 'GET', () =>
          this.#blobs.open(
            req.registry,
            req.name,
            req.digest,
            req.signal,
            { authorization: req.authorization },
            req.from,
          ),
        );
        span.setAttribute('http.response.status_code', opened.status);
        return opened;
      },
    );
  }

  /** Closes the whole-blob reader's idle connections. */
  close(): void {
    this.#blobs.close();
  }

  /** Sends one request in a CLIENT span (ended at the response headers; no header values). */
  send(req: RegistryRequest): Promise<UpstreamResponse> {
    return withSpan(
      `origin ${req.method} ${req.kind}`,
      {
        kind: SpanKind.CLIENT,
        attributes: {
          'oci.registry': req.registry.host,
          'http.request.method': req.method,
          ...(req.headers.range === undefined ? {} : { 'http.request.range': req.headers.range }),
        },
      },
      async (span) => {
        const response = await this.#send(req);
        span.setAttribute('http.response.status_code', response.status);
        return response;
      },
    );
  }

  #send(req: RegistryRequest): Promise<UpstreamResponse> {
    const held = this.#held(req.registry, req.method, req.headers.authorization);
    if (held !== undefined) {
      return Promise.resolve({
        status: 429,
        headers: held.headers,
        body: Readable.from(req.method === 'HEAD' ? [] : [held.body]),
      });
    }
    return this.#counted(req.registry, req.kind, req.headers.authorization, req.method, () =>
      this.#upstream.request({
        registry: req.registry,
        method: req.method,
        path: req.path,
        headers: req.headers,
        signal: req.signal,
        ...(req.redirects === undefined ? {} : { redirects: req.redirects }),
      }),
    );
  }

  /** A 429 came: holds further requests for its Retry-After, logged once per hold. */
  #noteLimit(
    upstream: UpstreamRegistry,
    kind: RegistryRequest['kind'],
    authorization: string | undefined,
    method: string,
    headers: AnswerHeaders,
  ): void {
    const value = headers['retry-after'];
    const retryAfter = typeof value === 'string' ? value : value?.[0];
    const ms = this.#holds.note(upstream.host, method, authorization, 429, retryAfter);
    if (ms === undefined) {
      return;
    }
    this.#metrics.rateLimitHolds.inc({ registry: upstream.host, outcome: 'answered' });
    this.#logger?.warn(
      {
        registry: upstream.host,
        kind,
        method,
        retry_after_ms: ms,
        credential:
          authorization === undefined ? 'none' : authorization.split(' ')[0]?.toLowerCase(),
      },
      'the registry rate-limited a request (429); its Retry-After is honoured: the same requests with this credential are answered 429 until then',
    );
  }

  /**
   * The answer for a request that would meet a rate limit the registry asked to wait out (a
   * 429 with Retry-After, for this credential and method): the registry is not asked again
   * before then.
   */
  #held(
    upstream: UpstreamRegistry,
    method: string,
    authorization: string | undefined,
  ): { headers: Record<string, string>; body: Buffer } | undefined {
    const held = this.#holds.held(upstream.host, method, authorization);
    if (held === undefined) {
      return undefined;
    }
    this.#metrics.rateLimitHolds.inc({ registry: upstream.host, outcome: 'held' });
    const body = heldAnswerBody(upstream.host, held.retryAfterS);
    return {
      headers: {
        'content-type': 'application/json',
        'content-length': String(body.length),
        'retry-after': String(held.retryAfterS),
      },
      body,
    };
  }

  /**
   * Runs one request, counted by its answer's status; no answer becomes a 502 UNAVAILABLE. A
   * 429 with Retry-After starts a hold for this registry, credential and method.
   */
  async #counted<T extends { readonly status: number; readonly headers: AnswerHeaders }>(
    upstream: UpstreamRegistry,
    kind: RegistryRequest['kind'],
    authorization: string | undefined,
    method: string,
    request: () => Promise<T>,
  ): Promise<T> {
    const registry = upstream.host;
    try {
      const response = await request();
      this.#metrics.upstreamRequests.inc({ registry, kind, status: String(response.status) });
      if (response.status === 429) {
        this.#noteLimit(upstream, kind, authorization, method, response.headers);
      }
      return response;
    } catch (error) {
      this.#metrics.upstreamRequests.inc({
        registry,
        kind,
        status: isAbortError(error) ? 'aborted' : 'error',
      });
      const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      throw new MirrorError('UNAVAILABLE', 502, `upstream ${registry} did not answer: ${reason}`, {
        cause: error,
      });
    }
  }
}

/** A registry answer's headers, from node:http (`UpstreamResponse`) or the block reader. */
type AnswerHeaders = Readonly<Record<string, string | readonly string[] | undefined>>;

/** The body of an answer other than 200: no blocks. */
async function* noBlocks(): AsyncGenerator<Buffer> {}
