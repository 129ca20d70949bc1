/**
 * The preheat API for operators (and the `shoal-preheat` CLI): ask for a preheat, read a job's
 * status, list recent jobs. Bearer-token authenticated.
 */
import { labelSelector, preheatScope } from '@shoal/proto';
import { contextFromHttp, ShoalError, SpanKind, withSpan } from '@shoal/runtime';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';

import {
  progressOf,
  type JobProgressView,
  type JobStatus,
  type JobStore,
} from '../preheat/jobs.js';
import type { PreheatRequests } from '../preheat/requests.js';
import type { ImageResolver } from '../preheat/resolve.js';
import { sameText } from '../webhooks/auth.js';

const preheatBody = z.strictObject({
  image: z.string().min(1).max(512),
  scope: preheatScope.default('seed'),
  selector: labelSelector.default({}),
  platforms: z.array(z.string().regex(/^[a-z0-9]+\/[a-z0-9]+(?:\/[a-z0-9]+)?$/)).optional(),
});
export type PreheatBody = z.input<typeof preheatBody>;

export interface ApiRouteDeps {
  /** The API's bearer token; undefined: the API refuses every request. */
  readonly token: string | undefined;
  readonly platforms: readonly string[];
  readonly resolver: ImageResolver;
  readonly requests: PreheatRequests;
  readonly jobs: JobStore;
}

export function registerApiRoutes(app: FastifyInstance, deps: ApiRouteDeps): void {
  const denied = (request: FastifyRequest, reply: FastifyReply): FastifyReply | undefined => {
    const given = /^Bearer\s+(.+)$/i.exec(request.headers.authorization ?? '')?.[1];
    if (deps.token !== undefined && given !== undefined && sameText(given, deps.token)) {
      return undefined;
    }
    return reply
      .code(401)
      .header('www-authenticate', 'Bearer realm="shoal-watcher"')
      .send({
        error:
          deps.token === undefined
            ? 'the API has no token configured'
            : 'wrong or missing bearer token',
      });
  };

  app.post('/preheat', async (request, reply) => {
    const refusal = denied(request, reply);
    if (refusal !== undefined) {
      return refusal;
    }
    const parsed = preheatBody.safeParse(request.body);
    if (!parsed.success) {
      return reply.code(400).send({ error: z.prettifyError(parsed.error).slice(0, 1024) });
    }
    const body = parsed.data;
    let result;
    try {
      // The preheat's trace starts here (or in the caller's trace, if it sent one).
      result = await withSpan(
        'preheat request',
        { kind: SpanKind.SERVER, parent: contextFromHttp(request.headers) },
        async () => {
          const { reference, registry } = deps.resolver.parse(body.image);
          // Not the request's signal: fastify aborts it once the body has been read.
          const digest = await deps.resolver.currentDigest(registry, reference);
          return deps.requests.submit(
            {
              registry: registry.host,
              repository: reference.repository,
              digest: digest.toString(),
              scope: body.scope,
              selector: body.selector,
              platforms: body.platforms ?? deps.platforms,
            },
            body.image,
            'api',
          );
        },
      );
    } catch (error) {
      if (error instanceof ShoalError) {
        return reply.code(error.status).send({ error: error.message });
      }
      throw error;
    }
    return reply.code(202).send({ ...result.status, duplicate: result.duplicate });
  });

  app.get<{ Params: { id: string } }>('/preheat/:id', async (request, reply) => {
    const refusal = denied(request, reply);
    if (refusal !== undefined) {
      return refusal;
    }
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(request.params.id)) {
      return reply.code(400).send({ error: 'not a job id' });
    }
    const job = await deps.jobs.get(request.params.id);
    return job === undefined
      ? reply.code(404).send({ error: `no job ${request.params.id}` })
      : reply.send(withProgress(job, Date.now()));
  });

  app.get<{ Querystring: { limit?: string } }>('/preheat', async (request, reply) => {
    const refusal = denied(request, reply);
    if (refusal !== undefined) {
      return refusal;
    }
    const limit = Math.min(Math.max(Number(request.query.limit ?? 50) || 50, 1), 500);
    const now = Date.now();
    return reply.send({ jobs: (await deps.jobs.list(limit)).map((j) => withProgress(j, now)) });
  });
}

/** A job as the API shows it: its status, and for a running job its phase's progress and ETA. */
function withProgress(job: JobStatus, nowMs: number): JobStatus & { progress?: JobProgressView } {
  const progress = progressOf(job, nowMs);
  return progress === undefined ? job : { ...job, progress };
}
