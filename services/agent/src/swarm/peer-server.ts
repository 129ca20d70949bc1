/**
 * Serves pieces to peers: from downloads in progress (only pieces already verified) and from
 * the cache. Uploads go through the upload rate limit. A leecher does not run it.
 */
import type { PieceBuffers } from '@shoal/pieces';
import {
  parseDigest,
  PIECE_PEER_HEADER,
  pieceBounds,
  pieceCount,
  pieceSizeFor,
  type Digest,
} from '@shoal/proto';
import { pieceAuthPreHandler, withServerSpan, type PieceTokenVerifier } from '@shoal/runtime';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

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

interface PieceRoute {
  Params: { algorithm: string; hex: string; index: string };
}
type PieceRequest = FastifyRequest<PieceRoute>;

export function registerPeerRoutes(app: FastifyInstance, deps: PeerRouteDeps): void {
  let uploads = 0;
  /** Uploads in flight by peer; a peer is dropped from the map when it has none. */
  const byPeer = new Map<string, number>();
  const serve = async (request: PieceRequest, reply: FastifyReply): Promise<FastifyReply> => {
    const { algorithm, hex, index } = request.params;
    let digest: Digest;
    try {
      digest = parseDigest(`${algorithm}:${hex}`);
    } catch {
      return reply.code(400).send({ error: 'not a digest' });
    }
    const piece = /^\d{1,9}$/.test(index) ? Number(index) : -1;
    const length = piece < 0 ? undefined : pieceLength(deps, digest, piece);
    if (length === undefined) {
      return reply.code(404).send({ error: 'piece not held' });
    }
    // Bounded: past the caps peers are asked to come back (they try another holder meanwhile).
    // The peer header was checked against the hand-out token when authentication is on.
    const peer = requestingPeer(request);
    const peerUploads = byPeer.get(peer) ?? 0;
    if (uploads >= deps.uploads.max || peerUploads >= deps.uploads.perPeer) {
      const reason = uploads >= deps.uploads.max ? 'busy' : 'peer-busy';
      deps.metrics.uploadsRefused.inc({ reason });
      return reply.code(429).header('retry-after', '1').send({ error: reason });
    }
    // Counted until the response is gone, so the caps bound the pieces held in memory.
    uploads += 1;
    byPeer.set(peer, peerUploads + 1);
    const deadline = setTimeout(() => {
      request.raw.socket.destroy();
    }, deps.uploads.timeoutMs);
    reply.raw.once('close', () => {
      clearTimeout(deadline);
      uploads -= 1;
      const left = (byPeer.get(peer) ?? 1) - 1;
      if (left > 0) {
        byPeer.set(peer, left);
      } else {
        byPeer.delete(peer);
      }
    });
    // Wait for the budget before reading, so a queued request holds no piece in memory,
    // and drop requests whose peer gave up meanwhile.
    await deps.uploadLimit.take(length);
    if (request.raw.destroyed) {
      return reply;
    }
    const bytes = await readPiece(deps, digest, piece);
    if (bytes === undefined) {
      return reply.code(404).send({ error: 'piece not held' });
    }
    if (deps.corruptPieces && bytes.length > 0) {
      bytes[0] = (bytes[0] ?? 0) ^ 0xff;
    }
    // Once written out the buffer is free again (not on a cut response: the socket may still hold it).
    reply.raw.once('finish', () => deps.pool.give(bytes));
    deps.metrics.uploadedBytes.inc(bytes.length);
    return reply.header('content-type', 'application/octet-stream').send(bytes);
  };
  // Members only: no byte, not even whether a piece is held, before the token checks out.
  const preHandler = pieceAuthPreHandler({
    verifier: deps.verifier,
    requireClientCert: deps.requireClientCert,
    refused: (reason) => deps.metrics.pieceAuthRefused.inc({ reason }),
    logger: deps.logger,
  });
  app.get<PieceRoute>('/pieces/:algorithm/:hex/:index', { preHandler }, (request, reply) =>
    // A SERVER span in the trace of the agent asking (from its `traceparent`).
    withServerSpan(
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
  const header = request.headers[PIECE_PEER_HEADER];
  return typeof header === 'string' && header !== ''
    ? `id:${header.slice(0, 64)}`
    : `ip:${request.ip}`;
}

async function readPiece(
  deps: PeerRouteDeps,
  digest: Digest,
  index: number,
): Promise<Buffer | undefined> {
  const alloc = (size: number): Buffer => deps.pool.take(size);
  const fromDownload = await deps.active(digest.toString())?.readPiece(index, alloc);
  return fromDownload ?? deps.store.readPiece(digest, index, alloc);
}

/** The length of a piece this agent holds the layout of, or undefined for none. */
function pieceLength(deps: PeerRouteDeps, digest: Digest, index: number): number | undefined {
  const fetch = deps.active(digest.toString());
  const layout = fetch?.layout;
  const activeSize = fetch?.download.size;
  const size =
    layout !== undefined && activeSize !== undefined ? activeSize : deps.store.sizeOf(digest);
  if (size === undefined) {
    return undefined;
  }
  const pieceSize = layout?.pieceSize ?? pieceSizeFor(size);
  if (index >= pieceCount(size, pieceSize)) {
    return undefined;
  }
  const { start, end } = pieceBounds(index, size, pieceSize);
  return end - start;
}
