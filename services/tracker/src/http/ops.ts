/** Liveness, readiness and metrics endpoints of the tracker's ops listener. */
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';

import type { SwarmSnapshot } from '../swarm/view.js';

export interface OpsDeps {
  readonly registry: Registry;
  /** The swarm view, shown read-only on the admin routes. */
  readonly view: SwarmSnapshot;
  /** Why the tracker is not ready, or undefined when it is. */
  readonly notReadyReason: () => string | undefined;
}

export function registerOpsRoutes(app: FastifyInstance, deps: OpsDeps): void {
  app.get('/healthz', async (_request, reply) => reply.send({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const reason = deps.notReadyReason();
    return reason === undefined
      ? reply.send({ status: 'ready' })
      : reply.code(503).send({ status: 'not ready', reason });
  });
  // Admin: what the tracker believes, to compare with what the agents hold.
  app.get('/swarm', async (_request, reply) => reply.send({ blobs: deps.view.blobs() }));
  app.get<{ Params: { algorithm: string; hex: string } }>(
    '/swarm/:algorithm/:hex',
    async (request, reply) => {
      const blob = `${request.params.algorithm}:${request.params.hex}`;
      return reply.send({
        blob,
        members: deps.view.swarm(blob).map((entry) => ({
          peer: entry.peer.id,
          url: entry.peer.url,
          pieces: entry.pieces,
          complete: entry.complete,
          seed: entry.seed,
        })),
      });
    },
  );
  app.get('/metrics', async (_request, reply) =>
    reply.header('content-type', deps.registry.contentType).send(await deps.registry.metrics()),
  );
}
