/** The mirror's HTTP routes: `/v2/` and the pull endpoints, and OCI error answers. */
import { parseDigest, type Digest } from '@shoal/proto';
import type { UpstreamRegistry } from '@shoal/registry';
import { runInContext, type Logger } from '@shoal/runtime';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

import type { AgentMetrics } from '../metrics.js';
import type { BlobLedger } from '../provenance/ledger.js';
import type { RegistryTable } from '../upstream/registries.js';
import { MirrorError, ociErrorBody, toMirrorError } from './errors.js';
import type { Mirror } from './mirror.js';
import { parsePullPath, parseReferrersPath } from './path.js';
import { traceMirrorRequest } from './tracing.js';

export interface MirrorRouteDeps {
  readonly mirror: Mirror;
  /** Where blobs' bytes came from, for `GET /shoal/v1/blobs/<digest>` (shoal-why). */
  readonly ledger: BlobLedger;
  readonly registries: RegistryTable;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
}

const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' };

export function registerMirrorRoutes(app: FastifyInstance, deps: MirrorRouteDeps): void {
  const { mirror, registries, metrics, logger } = deps;

  // The API version check. For a registry that requires credentials its challenge is passed
  // back, or clients that check first (skopeo, docker, crane) would never send theirs.
  app.route({
    method: ['GET', 'HEAD'],
    url: '/v2/',
    handler: async (request, reply) => {
      reply.headers(API_VERSION_HEADER);
      const registry = registryOf(request.url);
      if (registry === undefined) {
        return reply.send({});
      }
      const controller = new AbortController();
      reply.raw.once('close', () => controller.abort());
      await mirror.ping(registry, request.headers.authorization, controller.signal, reply);
      return reply;
    },
  });

  app.route({
    method: ['GET', 'HEAD'],
    url: '/v2/*',
    handler: async (request, reply) => {
      const [rawPath = '', rawQuery = ''] = request.url.split('?', 2);
      const target = parseReferrersPath(rawPath) ?? parsePullPath(rawPath);
      const registry = registries.resolve(singleNs(rawQuery));
      const controller = new AbortController();
      reply.raw.once('close', () => controller.abort());
      reply.headers(API_VERSION_HEADER);
      if (target.kind === 'referrers') {
        await mirror.referrers(
          registry,
          target.name,
          target.digest,
          referrersQuery(rawQuery),
          {
            method: request.method === 'HEAD' ? 'HEAD' : 'GET',
            accept: joinHeader(request.headers.accept),
            authorization: request.headers.authorization,
            signal: controller.signal,
          },
          reply,
        );
        return reply;
      }
      // Everything the request sets off (its download, wants, piece fetches) joins its trace.
      const traced = traceMirrorRequest(request, reply, target, registry.host);
      await runInContext(traced, () =>
        mirror.pull(
          target,
          {
            method: request.method === 'HEAD' ? 'HEAD' : 'GET',
            registry,
            accept: joinHeader(request.headers.accept),
            authorization: request.headers.authorization,
            range: request.headers.range,
            signal: controller.signal,
          },
          reply,
        ),
      );
      return reply;
    },
  });

  // How a blob's bytes arrived on this node, for `shoal-why`: only to a client the registry
  // would serve the blob (its Authorization is checked as for a pull), or another user on the
  // node would learn that a private blob is here, its repository and its size.
  app.get<{ Params: { digest: string } }>('/shoal/v1/blobs/:digest', async (request, reply) => {
    const unknown = (): FastifyReply =>
      reply.code(404).send({ error: 'not pulled through this agent since it started' });
    const record = deps.ledger.get(request.params.digest);
    if (record === undefined) {
      return unknown();
    }
    const slash = record.image.indexOf('/');
    const registry = slash < 0 ? undefined : registries.get(record.image.slice(0, slash));
    let digest: Digest;
    try {
      digest = parseDigest(record.digest);
    } catch {
      return unknown();
    }
    const allowed =
      registry !== undefined &&
      (await mirror.mayDescribe(
        registry,
        record.image.slice(slash + 1),
        digest,
        request.headers.authorization,
      ));
    return allowed ? reply.send(record) : unknown();
  });

  app.route({
    method: ['PUT', 'POST', 'PATCH', 'DELETE'],
    url: '/v2/*',
    handler: () => {
      throw new MirrorError('UNSUPPORTED', 405, 'the mirror is read-only: push to the registry');
    },
  });

  app.setNotFoundHandler(async (request, reply) =>
    sendError(reply, request, new MirrorError('UNSUPPORTED', 404, 'no such endpoint')),
  );

  app.setErrorHandler(async (error, request, reply) =>
    sendError(reply, request, toMirrorError(error)),
  );

  // Counted when the response closes rather than in onResponse, because blob bodies are
  // sent by the mirror itself (hijacked) and fastify's response hooks do not run for them.
  app.addHook('onRequest', (request, reply, done) => {
    const started = performance.now();
    reply.raw.once('close', () => {
      const path = request.url;
      const kind = path.includes('/manifests/')
        ? 'manifest'
        : path.includes('/blobs/')
          ? 'blob'
          : 'other';
      const status = reply.raw.writableFinished ? String(reply.raw.statusCode) : 'aborted';
      metrics.requests.inc({ kind, method: request.method, status });
      logger.debug(
        {
          method: request.method,
          url: path.slice(0, 512),
          status,
          ms: Math.round(performance.now() - started),
        },
        'mirror request',
      );
    });
    done();
  });

  /**
   * The registry a `/v2/` check is for (`ns=`, or the default), or undefined when it names
   * none the mirror serves: then the mirror answers for itself, as it always did.
   */
  function registryOf(url: string): UpstreamRegistry | undefined {
    try {
      return registries.resolve(singleNs(url.split('?', 2)[1] ?? ''));
    } catch {
      return undefined;
    }
  }

  function sendError(
    reply: FastifyReply,
    request: FastifyRequest,
    error: MirrorError,
  ): FastifyReply {
    if (error.status < 500) {
      metrics.rejected.inc({ code: error.code });
      logger.warn(
        { url: request.url.slice(0, 512), code: error.code, status: error.status },
        error.message,
      );
    } else {
      logger.error(
        { url: request.url.slice(0, 512), code: error.code, err: error.cause ?? error },
        error.message,
      );
    }
    if (reply.sent || reply.raw.headersSent) {
      // Bytes already went out: the only honest answer left is to cut the response.
      reply.raw.destroy();
      return reply;
    }
    if (error.code === 'RANGE_INVALID') {
      const size = (error.detail as { size?: number } | undefined)?.size;
      if (size !== undefined) {
        reply.header('content-range', `bytes */${size}`);
      }
    }
    return reply
      .code(error.status)
      .header('content-type', 'application/json')
      .send(ociErrorBody(error.code, error.message, error.detail));
  }
}

/** The one `ns=` of a query string, or undefined; given twice is a client error. */
function singleNs(query: string): string | undefined {
  const ns = new URLSearchParams(query).getAll('ns');
  if (ns.length > 1) {
    throw new MirrorError('DENIED', 400, 'ns= given more than once');
  }
  return ns[0];
}

/**
 * The query a referrers request is passed to the registry with: the client's, without the
 * mirror's own `ns=` (the `artifactType` filter, and a next page's parameters, which only the
 * registry understands).
 */
function referrersQuery(query: string): URLSearchParams {
  const params = new URLSearchParams(query);
  params.delete('ns');
  return params;
}

function joinHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(', ') : value;
}
