/** The tracker's HTTP listener: health, readiness and metrics, and the read-only swarm view. */
import type { FastifyInstance } from 'fastify';
import { registerOpsRoutes, type OpsRouteDeps } from '@shoal/runtime';

import type { SwarmSnapshot } from '../swarm/view.js';

export interface OpsDeps extends OpsRouteDeps {
  /** The swarm view, shown read-only on the admin routes. */
  readonly view: SwarmSnapshot;
}

export function registerTrackerRoutes(app: FastifyInstance, deps: OpsDeps): void {
  registerOpsRoutes(app, deps);
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
}
