/** The seed server's HTTP side: pieces for agents, and the ops endpoints. */
import { PieceBuffers } from '@shoal/pieces';
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
import { PieceRations, type RationSettings } from './piece-rations.js';

/** Memory kept for piece buffers between responses, in bytes. */
const IDLE_PIECE_BUFFER_BYTES = 64 * 1024 * 1024;

export interface RouteDeps extends OpsRouteDeps {
  /** The local copy of a blob, complete or being seeded. */
  readonly blob: (digest: string) => SeedBlob | undefined;
  readonly metrics: SeedMetrics;
  /** Copies of one piece counted at once before agents are sent to peers (`PieceRations`). */
  readonly fanout: RationSettings;
  /** The seed's upload budget, shared by every piece it serves. */
  readonly uploadLimit: RateLimiter;
  /** Checks hand-out tokens; undefined when piece authentication is off. */
  readonly verifier: PieceTokenVerifier | undefined;
  /** Mutual TLS: pieces only over connections that showed a client certificate of the CA. */
  readonly requireClientCert: boolean;
  readonly logger: Logger;
  /**
   * Pieces answered at once (`max`; past it 429), and the longest answer in ms, from its
   * turn to its last byte (`timeoutMs`; past it the connection is closed).
   */
  readonly uploads: { readonly max: number; readonly timeoutMs: number };
}

export function registerRoutes(app: FastifyInstance, deps: RouteDeps): void {
  const { metrics } = deps;
  const rations = new PieceRations(deps.fanout);
  // Members only: no byte, not even whether a piece is held, before the token checks out.
  const preHandler = pieceAuthPreHandler({
    verifier: deps.verifier,
    requireClientCert: deps.requireClientCert,
    refused: (reason) => metrics.pieceAuthRefused.inc({ reason }),
    logger: deps.logger,
  });
  const buffers = new PieceBuffers(IDLE_PIECE_BUFFER_BYTES);
  let uploads = 0;
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
    const length = piece < 0 ? undefined : blob?.pieceLength(piece);
    if (blob === undefined || length === undefined) {
      metrics.pieceRequests.inc({ result: 'missing' });
      return reply.code(404).send({ error: 'piece not held' });
    }
    // Bounded: past the cap agents are asked to come back and try a peer meanwhile. Checked
    // before the ration, so that a request turned away uses none of the piece's copies.
    if (uploads >= deps.uploads.max) {
      metrics.pieceRequests.inc({ result: 'busy' });
      return reply.code(429).header('retry-after', '1').send({ error: 'busy' });
    }
    const ticket = rations.take(digest, piece);
    if (ticket === undefined) {
      metrics.pieceRequests.inc({ result: 'rationed' });
      return reply
        .code(429)
        .header('retry-after', '1')
        .send({ error: 'get this piece from a peer' });
    }
    // In use until the response is gone: the cache never evicts a blob being served.
    if (!blob.acquire()) {
      ticket.end(false);
      metrics.pieceRequests.inc({ result: 'missing' });
      return reply.code(404).send({ error: 'piece not held' });
    }
    uploads += 1;
    metrics.uploadsInFlight.set(uploads);
    // Changed by the close handler and the read, each seeing the other's changes.
    const state: {
      buffer: Buffer | undefined;
      reading: boolean;
      closed: boolean;
      sending: boolean;
    } = {
      buffer: undefined,
      reading: false,
      closed: false,
      sending: false,
    };
    const deadline = setTimeout(() => {
      request.raw.socket.destroy();
    }, deps.uploads.timeoutMs);
    reply.raw.once('close', () => {
      state.closed = true;
      // The copy counts as spread only when the agent got all of it.
      ticket.end(state.sending && reply.raw.writableFinished);
      clearTimeout(deadline);
      uploads -= 1;
      metrics.uploadsInFlight.set(uploads);
      blob.release();
      // The socket has taken the bytes (or is gone): the buffer may serve the next piece,
      // unless a read into it is still running (it is given back when that ends).
      if (state.buffer !== undefined && !state.reading) {
        buffers.give(state.buffer);
      }
    });
    // The budget before the read, so a queued request holds no piece in memory; and nothing
    // read for an agent that gave up meanwhile.
    await deps.uploadLimit.take(length);
    if (request.raw.destroyed || reply.raw.destroyed) {
      metrics.pieceRequests.inc({ result: 'aborted' });
      return reply;
    }
    const into = buffers.take(length);
    state.buffer = into;
    state.reading = true;
    const bytes = await blob.readPiece(piece, into).finally(() => {
      state.reading = false;
    });
    if (state.closed) {
      buffers.give(into);
      metrics.pieceRequests.inc({ result: 'aborted' });
      return reply;
    }
    if (bytes === undefined) {
      metrics.pieceRequests.inc({ result: 'missing' });
      return reply.code(404).send({ error: 'piece not held' });
    }
    state.sending = true;
    metrics.pieceRequests.inc({ result: 'served' });
    metrics.servedBytes.inc(bytes.length);
    return reply.header('content-type', 'application/octet-stream').send(bytes);
  }
}

interface PieceRoute {
  Params: { algorithm: string; hex: string; index: string };
}
type PieceRequest = FastifyRequest<PieceRoute>;
