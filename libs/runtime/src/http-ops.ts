/**
 * The endpoints every Shoal service answers on its HTTP listener: `/healthz` (alive),
 * `/readyz` (503 with a reason when not ready) and `/metrics` (Prometheus).
 */
import { Server as TlsServer } from 'node:tls';

import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';

export interface OpsRouteDeps {
  readonly registry: Registry;
  /** Why the service is not ready, or undefined when it is. */
  readonly notReadyReason: () => string | undefined;
  /** More of the service's state for `/readyz`'s body (e.g. whether a control plane is joined). */
  readonly readyDetail?: () => Record<string, string>;
}

export function registerOpsRoutes(app: FastifyInstance, deps: OpsRouteDeps): void {
  app.get('/healthz', async (_request, reply) => reply.send({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    const reason = deps.notReadyReason();
    const detail = deps.readyDetail?.() ?? {};
    return reason === undefined
      ? reply.send({ status: 'ready', ...detail })
      : reply.code(503).send({ status: 'not ready', reason, ...detail });
  });
  app.get('/metrics', async (_request, reply) =>
    reply.header('content-type', deps.registry.contentType).send(await deps.registry.metrics()),
  );
}

/**
 * Listens on `listen` and returns the listener's URL (`http://host:port`, or `https://` for a
 * TLS listener; IPv6 in brackets).
 */
export async function listenOn(
  app: FastifyInstance,
  listen: { readonly host: string; readonly port: number },
): Promise<string> {
  await app.listen({ host: listen.host, port: listen.port });
  const bound = app.server.address();
  const port = typeof bound === 'object' && bound !== null ? bound.port : listen.port;
  const scheme = app.server instanceof TlsServer ? 'https' : 'http';
  return `${scheme}://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${port}`;
}
