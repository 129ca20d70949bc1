/**
 * The endpoints every Shoal service answers on its HTTP listener: `/healthz` (alive),
 * `/readyz` (503 with a reason when not ready) and `/metrics` (Prometheus).
 */
import { Server as TlsServer } from 'node:tls';

import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
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
  return `${scheme}://${urlHost(listen.host)}:${port}`;
}

/** The host part of a URL for address `host` (IPv6 in brackets). */
export function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

export interface DrainOptions {
  /** How long requests in flight may still finish, in ms. */
  readonly drainMs: number;
  /**
   * How long `cut` and the listeners' close may take after the drain deadline before the
   * caller's shutdown goes on without them, in ms (default: a quarter of `drainMs`).
   */
  readonly cutMs?: number;
  /** Ends the work behind the requests still in flight at the deadline (aborts their sources). */
  readonly cut: () => Promise<void>;
  readonly logger: Logger;
  /** What is still in flight, for the log line at the deadline. */
  readonly inFlight?: () => Record<string, number>;
}

/**
 * Closes `apps` (they stop accepting at once and answer 503 on connections kept alive) and
 * lets requests in flight finish for `drainMs`; past it, every connection left is destroyed,
 * so that a response cut short is seen by its client as broken (a body shorter than its
 * Content-Length), never as complete, and `cut` ends their work. Resolves once every app is
 * closed, or `cutMs` after the drain deadline, and never rejects (a failed close is logged):
 * the caller's shutdown (leaving the swarm) goes on in time, rather than its whole budget
 * going to one long response, a cut that hangs or a close that fails.
 */
export async function drainOrCut(
  apps: readonly FastifyInstance[],
  options: DrainOptions,
): Promise<void> {
  const { logger } = options;
  const closed = Promise.allSettled(apps.map((app) => app.close())).then((results) => {
    for (const result of results) {
      if (result.status === 'rejected') {
        logger.warn({ err: result.reason }, 'a listener failed to close; shutdown goes on');
      }
    }
  });
  if (await settlesWithin(closed, options.drainMs)) {
    return;
  }
  logger.warn(
    { drainMs: options.drainMs, ...options.inFlight?.() },
    'requests still in flight at the drain deadline: cut (clients resume elsewhere)',
  );
  // Connections first: whatever the cut does, no client is left waiting on this process.
  for (const app of apps) {
    app.server.closeAllConnections();
  }
  const cut = options.cut().catch((error: unknown) => {
    logger.warn({ err: error }, 'cutting the work in flight failed');
  });
  const cutMs = options.cutMs ?? Math.floor(options.drainMs / 4);
  if (!(await settlesWithin(Promise.all([cut, closed]), cutMs))) {
    logger.warn({ cutMs }, 'the cut did not finish in time; shutdown goes on');
  }
}

/** Whether `promise` settles within `ms` (it is left to settle on its own otherwise). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true), deadline]);
  } finally {
    clearTimeout(timer);
  }
}
