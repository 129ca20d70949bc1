/**
 * Every request the agent sends to a registry goes through here: counted by registry, kind
 * and status, and a failure to get an answer becomes the mirror's 502 UNAVAILABLE.
 */
import { isAbortError, SpanKind, withSpan } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import { MirrorError } from '../mirror/errors.js';
import type { UpstreamClient, UpstreamRegistry, UpstreamResponse } from '@shoal/registry';

export interface RegistryRequest {
  readonly registry: UpstreamRegistry;
  readonly method: 'GET' | 'HEAD';
  readonly kind: 'manifest' | 'blob';
  /** Path below the registry's base URL, starting with `/v2/`. */
  readonly path: string;
  /** Forwarded headers: `accept`, `authorization`, `range`. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly signal: AbortSignal;
  /** Whether redirects are followed (default) or returned. */
  readonly redirects?: 'follow' | 'manual';
}

export class RegistryRequests {
  readonly #upstream: UpstreamClient;
  readonly #metrics: AgentMetrics;

  constructor(upstream: UpstreamClient, metrics: AgentMetrics) {
    this.#upstream = upstream;
    this.#metrics = metrics;
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

  async #send(req: RegistryRequest): Promise<UpstreamResponse> {
    const registry = req.registry.host;
    const { kind } = req;
    try {
      const response = await this.#upstream.request({
        registry: req.registry,
        method: req.method,
        path: req.path,
        headers: req.headers,
        signal: req.signal,
        ...(req.redirects === undefined ? {} : { redirects: req.redirects }),
      });
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
