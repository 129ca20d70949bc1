/** The seed server's HTTP side: pieces for agents, and the ops endpoints. */
import { parseDigest } from '@shoal/proto';
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';

import type { SeedMetrics } from '../metrics.js';
import type { SeedBlob } from '../seeding/seed-blob.js';

export interface RouteDeps {
  /** The local copy of a blob, complete or being seeded. */
  readonly blob: (digest: string) => SeedBlob | undefined;
  readonly metrics: SeedMetrics;
  readonly registry: Registry;
  readonly notReadyReason: () => string | undefined;
}

export function registerRoutes(app: FastifyInstance, deps: RouteDeps): void {
  const { metrics } = deps;
  app.get<{ Params: { algorithm: string; hex: string; index: string } }>(
    '/pieces/:algorithm/:hex/:index',
    async (request, reply) => {
      const { algorithm, hex, index } = request.params;
      let digest: string;
      try {
        digest = parseDigest(`${algorithm}:${hex}`).toString();
      } catch {
        metrics.pieceRequests.inc({ result: 'invalid' });
        return reply.code(400).send({ error: 'not a digest' });
      }
      const piece = /^\d{1,9}$/.test(index) ? Number(index) : -1;
      const bytes = piece < 0 ? undefined : await deps.blob(digest)?.readPiece(piece);
      if (bytes === undefined) {
        metrics.pieceRequests.inc({ result: 'missing' });
        return reply.code(404).send({ error: 'piece not held' });
      }
      metrics.pieceRequests.inc({ result: 'served' });
      metrics.servedBytes.inc(bytes.length);
      return reply.header('content-type', 'application/octet-stream').send(bytes);
    },
  );
  app.get('/healthz', async (_request, reply) => reply.send({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const reason = deps.notReadyReason();
    return reason === undefined
      ? reply.send({ status: 'ready' })
      : reply.code(503).send({ status: 'not ready', reason });
  });
  app.get('/metrics', async (_request, reply) =>
    reply.header('content-type', deps.registry.contentType).send(await deps.registry.metrics()),
  );
}
