/** The seed server's HTTP side: pieces for agents, and the ops endpoints. */
import { parseDigest } from '@shoal/proto';
import {
  pieceAuthPreHandler,
  registerOpsRoutes,
  withServerSpan,
  type Logger,
  type OpsRouteDeps,
  type PieceTokenVerifier,
  type RateLimiter,
} from '@shoal/runtime';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

import type { SeedMetrics } from '../metrics.js';
import type { SeedBlob } from '../seeding/seed-blob.js';

export interface RouteDeps extends OpsRouteDeps {
  /** The local copy of a blob, complete or being seeded. */
  readonly blob: (digest: string) => SeedBlob | undefined;
  readonly metrics: SeedMetrics;
  /** Copies of one piece served per window before agents are sent to peers (0: no limit). */
  readonly fanout: { readonly copies: number; readonly windowMs: number };
  /** The seed's upload budget, shared by every piece it serves. */
  readonly uploadLimit: RateLimiter;
  /** Checks hand-out tokens; undefined when piece authentication is off. */
  readonly verifier: PieceTokenVerifier | undefined;
  readonly logger: Logger;
}

export function registerRoutes(app: FastifyInstance, deps: RouteDeps): void {
  const { metrics } = deps;
  const rations = new PieceRations(deps.fanout.copies, deps.fanout.windowMs);
  // Members only: no byte, not even whether a piece is held, before the token checks out.
  const preHandler = pieceAuthPreHandler({
    verifier: deps.verifier,
    refused: (reason) => metrics.pieceAuthRefused.inc({ reason }),
    logger: deps.logger,
  });
  app.get<PieceRoute>('/pieces/:algorithm/:hex/:index', { preHandler }, (request, reply) =>
    // A SERVER span in the trace of the agent asking (from its `traceparent`).
    withServerSpan(
      'piece serve',
      request,
      reply,
      { 'shoal.piece_path': request.url.slice(0, 256) },
      () => servePiece(request, reply),
    ),
  );
  registerOpsRoutes(app, deps);

  async function servePiece(request: PieceRequest, reply: FastifyReply): Promise<FastifyReply> {
    const { algorithm, hex, index } = request.params;
    let digest: string;
    try {
      digest = parseDigest(`${algorithm}:${hex}`).toString();
    } catch {
      metrics.pieceRequests.inc({ result: 'invalid' });
      return reply.code(400).send({ error: 'not a digest' });
    }
    const piece = /^\d{1,9}$/.test(index) ? Number(index) : -1;
    const blob = deps.blob(digest);
    if (blob !== undefined && piece >= 0 && piece < blob.count && !rations.allow(digest, piece)) {
      metrics.pieceRequests.inc({ result: 'rationed' });
      return reply
        .code(429)
        .header('retry-after', '1')
        .send({ error: 'get this piece from a peer' });
    }
    const bytes = piece < 0 ? undefined : await blob?.readPiece(piece);
    if (bytes === undefined) {
      metrics.pieceRequests.inc({ result: 'missing' });
      return reply.code(404).send({ error: 'piece not held' });
    }
    await deps.uploadLimit.take(bytes.length);
    metrics.pieceRequests.inc({ result: 'served' });
    metrics.servedBytes.inc(bytes.length);
    return reply.header('content-type', 'application/octet-stream').send(bytes);
  }
}

interface PieceRoute {
  Params: { algorithm: string; hex: string; index: string };
}
type PieceRequest = FastifyRequest<PieceRoute>;

/**
 * Counts copies of each piece served in the current window. Entries are kept per blob and
 * dropped when their window has passed, so memory follows the pieces served recently.
 */
class PieceRations {
  readonly #copies: number;
  readonly #windowMs: number;
  readonly #served = new Map<string, { count: number; since: number }>();

  constructor(copies: number, windowMs: number) {
    this.#copies = copies;
    this.#windowMs = windowMs;
  }

  allow(digest: string, piece: number): boolean {
    if (this.#copies === 0) {
      return true;
    }
    const now = Date.now();
    if (this.#served.size > 100_000) {
      for (const [key, entry] of this.#served) {
        if (now - entry.since > this.#windowMs) {
          this.#served.delete(key);
        }
      }
    }
    const key = `${digest}/${piece}`;
    const entry = this.#served.get(key);
    if (entry === undefined || now - entry.since > this.#windowMs) {
      this.#served.set(key, { count: 1, since: now });
      return true;
    }
    if (entry.count >= this.#copies) {
      return false;
    }
    entry.count += 1;
    return true;
  }
}
