/**
 * Every request the agent sends to a registry goes through here: counted by registry, kind
 * and status, and a failure to get an answer becomes the mirror's 502 UNAVAILABLE.
 */
import { isAbortError, SpanKind, withSpan } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import { MirrorError } from '../mirror/errors.js';
import {
  BlobReader,
  DEFAULT_USER_AGENT,
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
  /** What is asked, for the metrics: `ping` is the API version check (`/v2/`). */
  readonly kind: 'manifest' | 'blob' | 'ping';
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

  /** `timeouts`: those of the upstream client, for the whole-blob reader too. */
  constructor(upstream: UpstreamClient, metrics: AgentMetrics, timeouts: UpstreamTimeouts) {
    this.#upstream = upstream;
    this.#metrics = metrics;
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
        const opened = await this.#counted(req.registry, 'blob', () =>
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
    return this.#counted(req.registry, req.kind, () =>
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

  /** Runs one request, counted by its answer's status; no answer becomes a 502 UNAVAILABLE. */
  async #counted<T extends { readonly status: number }>(
    upstream: UpstreamRegistry,
    kind: RegistryRequest['kind'],
    request: () => Promise<T>,
  ): Promise<T> {
    const registry = upstream.host;
    try {
      const response = await request();
      this.#metrics.upstreamRequests.inc({ registry, kind, status: String(response.status) });
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
