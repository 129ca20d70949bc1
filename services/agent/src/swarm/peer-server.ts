/**
 * Serves pieces to peers: from downloads in progress (only pieces already verified) and from
 * the cache. Uploads go through the upload rate limit. A leecher does not run it.
 */
import {
  askingPeerId,
  pieceHandler,
  PIECE_ROUTE,
  type PieceBuffers,
  type PieceRequest,
  type PieceRoute,
  type PieceSource,
} from '@shoal/pieces';
import { parseDigest, pieceBounds, pieceCount, pieceSizeFor, type Digest } from '@shoal/proto';
import { pieceAuthPreHandler, withCallerServerSpan, type PieceTokenVerifier } from '@shoal/runtime';
import type { FastifyInstance } from 'fastify';

import type { FsContentStore } from '../cache/content-store.js';
import type { AgentMetrics } from '../metrics.js';
import type { Logger, RateLimiter } from '@shoal/runtime';
import type { SwarmFetch } from './swarm-fetch.js';

export interface PeerRouteDeps {
  readonly store: FsContentStore;
  /** The swarm fetch of a blob in progress, if any. */
  readonly active: (digest: string) => SwarmFetch | undefined;
  readonly uploadLimit: RateLimiter;
  /** Buffers for the pieces read to be sent; each goes back once its response has finished. */
  readonly pool: PieceBuffers;
  readonly metrics: AgentMetrics;
  /** Checks hand-out tokens; undefined when piece authentication is off. */
  readonly verifier: PieceTokenVerifier | undefined;
  /** Mutual TLS: pieces only over connections that showed a client certificate of the CA. */
  readonly requireClientCert: boolean;
  readonly logger: Logger;
  /** Test fault: flip a byte of every piece served. */
  readonly corruptPieces: boolean;
  /**
   * Upload slots: pieces served at once in all (`max`) and to one peer (`perPeer`), and the
   * longest answer in ms from taking a slot to the last byte (`timeoutMs`; past it the
   * connection is closed and the slot freed).
   */
  readonly uploads: {
    readonly max: number;
    readonly perPeer: number;
    readonly timeoutMs: number;
  };
}

export function registerPeerRoutes(app: FastifyInstance, deps: PeerRouteDeps): void {
  const serve = pieceHandler({
    source: (digest) => peerSource(deps, parseDigest(digest)),
    buffers: deps.pool,
    uploadLimit: deps.uploadLimit,
    uploads: deps.uploads,
    // The peer header was checked against the hand-out token when authentication is on.
    peerOf: requestingPeer,
    corrupt: deps.corruptPieces,
    onResult: (result, bytes) => {
      if (result === 'busy' || result === 'peer-busy') {
        deps.metrics.uploadsRefused.inc({ reason: result });
      } else if (result === 'served') {
        deps.metrics.uploadedBytes.inc(bytes);
      }
    },
    onCut: () => deps.metrics.uploadsCut.inc(),
  });
  // Members only: no byte, not even whether a piece is held, before the token checks out.
  const preHandler = pieceAuthPreHandler({
    verifier: deps.verifier,
    requireClientCert: deps.requireClientCert,
    refused: (reason) => deps.metrics.pieceAuthRefused.inc({ reason }),
    logger: deps.logger,
  });
  app.get<PieceRoute>(PIECE_ROUTE, { preHandler }, (request, reply) =>
    // A SERVER span in the trace of the agent asking (from its `traceparent`), for the
    // requests it traces (the first few to each source of a download, see `SwarmFetch`).
    withCallerServerSpan(
      'piece serve',
      request,
      reply,
      { 'shoal.piece_path': request.url.slice(0, 256) },
      () => serve(request, reply),
    ),
  );
}

/** Who asks: the peer id it sends (token-checked when authentication is on), else its address. */
function requestingPeer(request: PieceRequest): string {
  const id = askingPeerId(request);
  return id !== undefined ? `id:${id}` : `ip:${request.ip}`;
}

/**
 * A blob this agent holds in any form: the download in progress (only pieces already
 * verified are read) or the cache (each read pins the entry while it runs).
 */
function peerSource(deps: PeerRouteDeps, digest: Digest): PieceSource | undefined {
  const fetch = deps.active(digest.toString());
  const layout = fetch?.layout;
  const activeSize = fetch?.download.size;
  const size =
    layout !== undefined && activeSize !== undefined ? activeSize : deps.store.sizeOf(digest);
  if (size === undefined) {
    return undefined;
  }
  const pieceSize = layout?.pieceSize ?? pieceSizeFor(size);
  return {
    pieceLength: (index) => {
      if (index >= pieceCount(size, pieceSize)) {
        return undefined;
      }
      const { start, end } = pieceBounds(index, size, pieceSize);
      return end - start;
    },
    readPiece: async (index, buffer) => {
      // The piece's length is the buffer's, from the same layout.
      const alloc = (length: number): Buffer =>
        length <= buffer.length ? buffer.subarray(0, length) : Buffer.allocUnsafe(length);
      const fromDownload = await fetch?.readPiece(index, alloc);
      return fromDownload ?? deps.store.readPiece(digest, index, alloc);
    },
    acquire: () => true,
    release: () => undefined,
  };
}
