/** The seed server's HTTP side: pieces for agents, and the ops endpoints. */
import { pieceHandler, PIECE_ROUTE, PieceBuffers, type PieceRoute } from '@shoal/pieces';
import { encodePieceBitmap, PIECE_RATIONED_HEADER } from '@shoal/proto';
import {
  pieceAuthPreHandler,
  registerOpsRoutes,
  withCallerServerSpan,
  type Logger,
  type OpsRouteDeps,
  type PieceTokenVerifier,
  type RateLimiter,
} from '@shoal/runtime';
import type { FastifyInstance } from 'fastify';

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
  /**
   * True while the seed's NATS connection is up. Rationing sends an agent to the peers that
   * got a piece, which it learns of from the tracker through NATS; while NATS is down no have
   * or hand-out gets through, so a refused agent would only ask again (for up to the window),
   * and every piece is served instead (the copies still count).
   */
  readonly swarmHeard: () => boolean;
  /** The seed's upload budget, shared by every piece it serves. */
  readonly uploadLimit: RateLimiter;
  /** Checks hand-out tokens; undefined when piece authentication is off. */
  readonly verifier: PieceTokenVerifier | undefined;
  /** Mutual TLS: pieces only over connections that showed a client certificate of the CA. */
  readonly requireClientCert: boolean;
  readonly logger: Logger;
  /**
   * Pieces taken at once (`max`; past it 429), and the longest answer in ms, from its
   * request to its last byte (`timeoutMs`; past it the connection is closed).
   */
  readonly uploads: {
    readonly max: number;
    readonly timeoutMs: number;
    /** Answers sent at once; the others, up to `max`, wait their turn. */
    readonly sending: number;
  };
}

export function registerRoutes(app: FastifyInstance, deps: RouteDeps): void {
  const { metrics } = deps;
  const rations = new PieceRations(deps.fanout, Date.now, (reason) =>
    metrics.rationExempt.inc({ reason }),
  );
  // Members only: no byte, not even whether a piece is held, before the token checks out.
  const preHandler = pieceAuthPreHandler({
    verifier: deps.verifier,
    requireClientCert: deps.requireClientCert,
    refused: (reason) => metrics.pieceAuthRefused.inc({ reason }),
    logger: deps.logger,
  });
  const servePiece = pieceHandler({
    source: (digest) => deps.blob(digest),
    buffers: new PieceBuffers(IDLE_PIECE_BUFFER_BYTES),
    uploadLimit: deps.uploadLimit,
    uploads: deps.uploads,
    // Counted per local copy of the blob: one evicted and seeded again starts with none (the
    // tracker asks for it again when nobody holds it whole, so the earlier copies' counts
    // would only hold its pieces back). At most one copy more per piece each time.
    // An asker is not refused for copies it cannot get the piece from: its own (asked again:
    // restarted, or its request failed on its side) and those of agents it names as ones it
    // cannot get the piece from (unreachable, or late for its download); nor one that says
    // the swarm does not hear it now (it could not learn who got the piece).
    // A copy counts from its request on, and its hold and a starved asker's exemption from
    // when it starts going out (it may wait its turn first).
    ration: (blob, index, ask) =>
      rations.take(blob, index, { mayRefuse: deps.swarmHeard(), ...ask, waits: true }),
    // With a refusal, every piece of the blob this asker would be refused now: it leaves
    // them to its peers too, rather than learn of them one refusal at a time.
    rationedHeaders: (blob, ask) => {
      const refused = rations.refusedNow(blob, { mayRefuse: deps.swarmHeard(), ...ask });
      return refused.length === 0 ? {} : { [PIECE_RATIONED_HEADER]: encodePieceBitmap(refused) };
    },
    onResult: (result, bytes) => {
      metrics.pieceRequests.inc({ result });
      if (result === 'served') {
        metrics.servedBytes.inc(bytes);
      }
    },
    onCut: () => metrics.piecesCut.inc(),
    onInFlight: (uploads, waiting) => {
      metrics.uploadsInFlight.set(uploads);
      metrics.uploadsWaiting.set(waiting);
    },
  });
  app.get<PieceRoute>(PIECE_ROUTE, { preHandler }, (request, reply) =>
    // A SERVER span in the trace of the agent asking (from its `traceparent`), for the
    // requests it traces (the first few to each source of a download, see `SwarmFetch`).
    withCallerServerSpan(
      'piece serve',
      request,
      reply,
      { 'shoal.piece_path': request.url.slice(0, 256) },
      () => servePiece(request, reply),
    ),
  );
  registerOpsRoutes(app, deps);
}
