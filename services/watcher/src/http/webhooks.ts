/**
 * `POST /webhooks/<format>`: registry push notifications. A delivery is authenticated, size-
 * limited, parsed and validated before anything is published; a refused one gets its status
 * and a reason (401, 400, 413), a metric and a log line. Pushes of tagged manifests become
 * preheat jobs (202); deliveries holding none (pulls, blob pushes) are acknowledged (200) so
 * the registry does not retry them.
 */
import { parseRepositoryName } from '@shoal/proto';
import { contextFromHttp, SpanKind, withSpan, type Logger } from '@shoal/runtime';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';

import type { WatcherMetrics } from '../metrics.js';
import type { PreheatRequests } from '../preheat/requests.js';
import type { ImageResolver } from '../preheat/resolve.js';
import { refuseWebhook, type WebhookSecrets } from '../webhooks/auth.js';
import { DeliveryError, FORMATS, type ImagePush } from '../webhooks/format.js';

export interface WebhookRouteDeps {
  readonly secrets: WebhookSecrets;
  readonly maxBytes: number;
  readonly scope: 'seed' | 'nodes';
  readonly platforms: readonly string[];
  readonly resolver: ImageResolver;
  readonly requests: PreheatRequests;
  readonly metrics: WatcherMetrics;
  readonly logger: Logger;
}

type Refusal = 'unauthorized' | 'malformed' | 'invalid' | 'unknown-format';

export function registerWebhookRoutes(app: FastifyInstance, deps: WebhookRouteDeps): void {
  const { metrics, logger } = deps;
  const refuse = (
    reply: FastifyReply,
    status: number,
    reason: Refusal,
    message: string,
    format: string,
  ): FastifyReply => {
    metrics.webhooksRejected.inc({ reason });
    metrics.webhooks.inc({ format, outcome: 'rejected' });
    logger.warn({ format, status, reason, message }, 'webhook refused');
    if (status === 401) {
      void reply.header('www-authenticate', 'Bearer realm="shoal-watcher"');
    }
    return reply.code(status).send({ error: message });
  };

  void app.register((scope, _options, done) => {
    // The raw bytes, whatever the content type: the signature is over them, and registries
    // label their JSON differently (distribution sends its own events media type).
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser(
      '*',
      { parseAs: 'buffer', bodyLimit: deps.maxBytes },
      (_req, body, next) => next(null, body),
    );
    scope.post<{ Params: { format: string }; Querystring: { registry?: string | string[] } }>(
      '/webhooks/:format',
      { bodyLimit: deps.maxBytes },
      (request, reply) =>
        withSpan(
          `webhook ${request.params.format.slice(0, 32)}`,
          { kind: SpanKind.SERVER, parent: contextFromHttp(request.headers) },
          () => handle(request, reply),
        ),
    );
    done();
  });

  const handle = async (
    request: FastifyRequest<{
      Params: { format: string };
      Querystring: { registry?: string | string[] };
    }>,
    reply: FastifyReply,
  ): Promise<FastifyReply> => {
    const name = request.params.format;
    const format = FORMATS.get(name);
    if (format === undefined) {
      return refuse(
        reply,
        404,
        'unknown-format',
        `no webhook format "${name.slice(0, 64)}"; use ${[...FORMATS.keys()].join(' or ')}`,
        'unknown',
      );
    }
    const body = Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
    const denied = refuseWebhook(request.headers, body, deps.secrets);
    if (denied !== undefined) {
      return refuse(reply, 401, 'unauthorized', denied, name);
    }
    let json: unknown;
    try {
      json = JSON.parse(body.toString('utf8'));
    } catch (error) {
      return refuse(
        reply,
        400,
        'malformed',
        `the body is not JSON: ${(error as Error).message}`,
        name,
      );
    }
    const parsed = format.schema.safeParse(json);
    if (!parsed.success) {
      return refuse(
        reply,
        400,
        'invalid',
        `not a ${name} delivery: ${z.prettifyError(parsed.error).slice(0, 1024)}`,
        name,
      );
    }
    let pushes: readonly ImagePush[];
    let ignored: readonly string[];
    try {
      ({ pushes, ignored } = format.read(parsed.data));
    } catch (error) {
      if (error instanceof DeliveryError) {
        return refuse(reply, 400, 'invalid', error.message, name);
      }
      throw error;
    }
    // A push that cannot be preheated (a registry not configured, a name that does not parse)
    // is acknowledged and listed as ignored: the distribution registry retries a refused
    // delivery for ever and holds every later notification behind it.
    const registryParam =
      typeof request.query.registry === 'string' ? request.query.registry : undefined;
    const jobs = [];
    const skipped = [...ignored];
    for (const push of pushes) {
      const host = registryParam ?? push.host;
      const registry = host === undefined ? undefined : deps.resolver.registryFor(host);
      let problem: string | undefined;
      if (registry === undefined) {
        problem = `registry ${host ?? '(not named)'} is not in SHOAL_WATCHER_REGISTRIES; name it with ?registry=<host>`;
      } else {
        try {
          parseRepositoryName(push.repository);
        } catch (error) {
          problem = (error as Error).message;
        }
      }
      if (registry === undefined || problem !== undefined) {
        metrics.webhooksRejected.inc({
          reason: registry === undefined ? 'unknown-registry' : 'invalid',
        });
        logger.warn(
          { format: name, repository: push.repository.slice(0, 255), problem },
          'webhook push ignored',
        );
        skipped.push(`${push.repository.slice(0, 255)}@${push.digest}: ${problem ?? ''}`);
        continue;
      }
      jobs.push({ push, registry });
    }
    const accepted = [];
    for (const { push, registry } of jobs) {
      const image = `${registry.host}/${push.repository}${push.tag === undefined ? '' : `:${push.tag}`}`;
      const result = await deps.requests.submit(
        {
          registry: registry.host,
          repository: push.repository,
          digest: push.digest,
          scope: deps.scope,
          selector: {},
          platforms: deps.platforms,
        },
        image,
        'webhook',
      );
      accepted.push({ id: result.id, image, duplicate: result.duplicate });
    }
    metrics.webhookEvents.inc({ result: 'preheat' }, accepted.length);
    metrics.webhookEvents.inc({ result: 'ignored' }, skipped.length);
    metrics.webhooks.inc({
      format: name,
      outcome: accepted.length > 0 ? 'accepted' : 'ignored',
    });
    return reply.code(accepted.length > 0 ? 202 : 200).send({ accepted, ignored: skipped });
  };
}
