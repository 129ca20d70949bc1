/**
 * Serves pieces to peers: from downloads in progress (only pieces already verified) and from
 * the cache. Uploads go through the upload rate limit. A leecher does not run it.
 */
import { parseDigest, type Digest } from '@shoal/proto';
import type { FastifyInstance } from 'fastify';

import type { FsContentStore } from '../cache/content-store.js';
import type { AgentMetrics } from '../metrics.js';
import type { RateLimiter } from '@shoal/runtime';
import type { SwarmFetch } from './swarm-fetch.js';

export interface PeerRouteDeps {
  readonly store: FsContentStore;
  /** The swarm fetch of a blob in progress, if any. */
  readonly active: (digest: string) => SwarmFetch | undefined;
  readonly uploadLimit: RateLimiter;
  readonly metrics: AgentMetrics;
  /** Test fault: flip a byte of every piece served. */
  readonly corruptPieces: boolean;
}

export function registerPeerRoutes(app: FastifyInstance, deps: PeerRouteDeps): void {
  app.get<{ Params: { algorithm: string; hex: string; index: string } }>(
    '/pieces/:algorithm/:hex/:index',
    async (request, reply) => {
      const { algorithm, hex, index } = request.params;
      let digest: Digest;
      try {
        digest = parseDigest(`${algorithm}:${hex}`);
      } catch {
        return reply.code(400).send({ error: 'not a digest' });
      }
      const piece = /^\d{1,9}$/.test(index) ? Number(index) : -1;
      const bytes = piece < 0 ? undefined : await readPiece(deps, digest, piece);
      if (bytes === undefined) {
        return reply.code(404).send({ error: 'piece not held' });
      }
      await deps.uploadLimit.take(bytes.length);
      if (deps.corruptPieces && bytes.length > 0) {
        bytes[0] = (bytes[0] ?? 0) ^ 0xff;
      }
      deps.metrics.uploadedBytes.inc(bytes.length);
      return reply.header('content-type', 'application/octet-stream').send(bytes);
    },
  );
}

async function readPiece(
  deps: PeerRouteDeps,
  digest: Digest,
  index: number,
): Promise<Buffer | undefined> {
  const fromDownload = await deps.active(digest.toString())?.readPiece(index);
  return fromDownload ?? deps.store.readPiece(digest, index);
}
