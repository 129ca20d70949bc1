/**
 * Every request the agent sends to a registry goes through here: counted by registry, kind
 * and status, and a failure to get an answer becomes the mirror's 502 UNAVAILABLE.
 */
import { Readable } from 'node:stream';

import { isAbortError, SpanKind, withSpan, type Logger } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import { MirrorError } from '../mirror/errors.js';
import {
  blobRangeHeader,
  BlobReader,
  DEFAULT_USER_AGENT,
  heldAnswer,
  RateLimitHolds,
  type LimitedRequest,
  type LimitHeaders,
  type OpenedBlob,
  type RegistryRequestKind,
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
  readonly kind: RegistryRequestKind;
  /** Path below the registry's base URL, starting with `/v2/`. */
  readonly path: string;
  /** Forwarded headers: `accept`, `authorization`, `range`. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly signal: AbortSignal;
  /** Whether redirects are followed (default) or returned. */
  readonly redirects?: 'follow' | 'manual';
  /**
   * The request carries on a transfer already started (the swarm's late range read of a blob
   * being served): never held by a rate limit, the registry answers it. Default false.
   */
  readonly started?: boolean;
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
  /** The read ends before this byte (a part of the blob; default: its end). */
  readonly until?: number;
  /**
   * A client is already receiving this blob (the swarm's late read of its rest): a rate limit
   * met by other requests must not fail its pull. Default: when `from` is past 0 (a resume).
   */
  readonly started?: boolean;
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

  /** Registries' 429s (their Retry-After, or a backoff), honoured per registry, kind, method and credential. */
  readonly #holds: RateLimitHolds;
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
    this.#holds = new RateLimitHolds({
      count: (registry, outcome) => metrics.rateLimitHolds.inc({ registry, outcome }),
    });
    this.#blobs = new BlobReader(CLIENT_CREDENTIALS_ONLY, {
      timeouts,
      userAgent: DEFAULT_USER_AGENT,
    });
  }

  /**
   * GETs a blob (or the part `from`/`until` names), redirects followed (the client's
   * credentials never go to another origin), counted and traced as `send` does; resolves at
   * the final answer's head. The body of a 200 (or of a part's 206) comes in lent blocks (each
   * valid until the next is asked for); any other answer comes with its body (`answer`, its
   * first 64 KiB), for the client.
   */
  openBlob(req: BlobRequest): Promise<OpenedBlob> {
    const range = blobRangeHeader(req.from ?? 0, req.until);
    return withSpan(
      'origin GET blob',
      {
        kind: SpanKind.CLIENT,
        attributes: {
          'oci.registry': req.registry.host,
          'http.request.method': 'GET',
          ...(range === undefined ? {} : { 'http.request.range': range }),
        },
      },
      async (span) => {
        const limited: LimitedRequest = {
          registry: req.registry.host,
          kind: 'blob',
          method: 'GET',
          authorization: req.authorization,
          // A resume carries on a transfer the client is already receiving.
          started: req.started ?? (req.from ?? 0) > 0,
        };
        const held = this.#held(limited);
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
        const opened = await this.#counted(req.registry, limited, () =>
          this.#blobs.open(
            req.registry,
            req.name,
            req.digest,
            req.signal,
            { authorization: req.authorization },
            req.from,
            req.until,
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
    const limited: LimitedRequest = {
      registry: req.registry.host,
      kind: req.kind,
      method: req.method,
      authorization: req.headers.authorization,
      started: req.started ?? false,
    };
    const held = this.#held(limited);
    if (held !== undefined) {
      return Promise.resolve({
        status: 429,
        headers: held.headers,
        body: Readable.from(req.method === 'HEAD' ? [] : [held.body]),
      });
    }
    return this.#counted(req.registry, limited, () =>
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

  /**
   * A 429 came: holds further requests of its kind for its Retry-After (or the backoff when it
   * sent none), logged once per hold.
   */
  #noteLimit(request: LimitedRequest, headers: LimitHeaders): void {
    const ms = this.#holds.noteAnswer(request, 429, headers);
    if (ms === undefined) {
      return;
    }
    const { registry, kind, method, authorization } = request;
    this.#logger?.warn(
      {
        registry,
        kind,
        method,
        retry_after_ms: ms,
        credential:
          authorization === undefined ? 'none' : authorization.split(' ')[0]?.toLowerCase(),
      },
      'the registry rate-limited a request (429); its Retry-After (or, without one, a backoff of 1 s doubling to 60 s) is honoured: requests of the same kind with this credential are answered 429 until then',
    );
  }

  /**
   * The answer for a request that would meet a rate limit the registry asked to wait out (a
   * 429, for this kind, method and credential): the registry is not asked
   * again before then.
   */
  #held(request: LimitedRequest): { headers: Record<string, string>; body: Buffer } | undefined {
    const held = this.#holds.held(request);
    return held === undefined ? undefined : heldAnswer(request.registry, held);
  }

  /**
   * Runs one request, counted by its answer's status; no answer becomes a 502 UNAVAILABLE. A
   * 429 starts a hold for this registry, kind, method and credential.
   */
  async #counted<T extends { readonly status: number; readonly headers: LimitHeaders }>(
    upstream: UpstreamRegistry,
    limited: LimitedRequest,
    request: () => Promise<T>,
  ): Promise<T> {
    const registry = upstream.host;
    const { kind } = limited;
    try {
      const response = await request();
      this.#metrics.upstreamRequests.inc({ registry, kind, status: String(response.status) });
      if (response.status === 429) {
        this.#noteLimit(limited, response.headers);
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

/** The body of an answer other than 200: no blocks. */
async function* noBlocks(): AsyncGenerator<Buffer> {}
