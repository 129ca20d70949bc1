/**
 * Serves pieces to peers: from downloads in progress (only pieces already verified) and from
 * the cache. Uploads go through the upload rate limit. A leecher does not run it.
 */
import {
  pieceHandler,
  PIECE_ROUTE,
  type PieceBuffers,
  type PieceRequest,
  type PieceRoute,
  type PieceSource,
} from '@shoal/pieces';
import {
  parseDigest,
  PIECE_PEER_HEADER,
  pieceBounds,
  pieceCount,
  pieceSizeFor,
  type Digest,
} from '@shoal/proto';
import { pieceAuthPreHandler, withServerSpan, type PieceTokenVerifier } from '@shoal/runtime';
import type { FastifyInstance } from 'fastify';

import type { FsContentStore, OpenedContent } from '../cache/content-store.js';
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

/**
 * How long a cached blob's file stays open after its last piece was read, in ms: peers ask for
 * a blob's pieces one after another, and opening and closing the file for each piece cost two
 * thread-pool round trips more per answer than the read itself.
 */
export const CACHE_FILE_IDLE_MS = 1000;

export function registerPeerRoutes(app: FastifyInstance, deps: PeerRouteDeps): void {
  const files = new OpenCacheFiles(deps.store, CACHE_FILE_IDLE_MS);
  app.addHook('onClose', async () => {
    await files.close();
  });
  const serve = pieceHandler({
    source: (digest) => peerSource(deps, files, parseDigest(digest)),
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
  });
  // Members only: no byte, not even whether a piece is held, before the token checks out.
  const preHandler = pieceAuthPreHandler({
    verifier: deps.verifier,
    requireClientCert: deps.requireClientCert,
    refused: (reason) => deps.metrics.pieceAuthRefused.inc({ reason }),
    logger: deps.logger,
  });
  app.get<PieceRoute>(PIECE_ROUTE, { preHandler }, (request, reply) =>
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

/**
 * A blob this agent holds in any form: the download in progress (only pieces already
 * verified are read) or the cache (each read pins the entry while it runs).
 */
function peerSource(
  deps: PeerRouteDeps,
  files: OpenCacheFiles,
  digest: Digest,
): PieceSource | undefined {
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
      return fromDownload ?? files.readPiece(digest, index, alloc);
    },
    acquire: () => true,
    release: () => undefined,
  };
}

/** A cache file kept open between piece reads. */
interface KeptFile {
  /** The open file (pinned in the store: not evicted while open), or undefined: not cached. */
  readonly opened: Promise<OpenedContent | undefined>;
  /** Reads under way. */
  reads: number;
  /** Closes the file once it has been idle `idleMs`. */
  timer: NodeJS.Timeout | undefined;
}

/**
 * Cached blobs' files, kept open while peers read their pieces and for `idleMs` after the last
 * read: one `pread` per piece instead of open, read and close. An open file pins its blob in
 * the store, so eviction waits at most `idleMs` for a blob nobody reads any more.
 */
export class OpenCacheFiles {
  readonly #store: FsContentStore;
  readonly #idleMs: number;
  readonly #files = new Map<string, KeptFile>();

  constructor(store: FsContentStore, idleMs: number) {
    this.#store = store;
    this.#idleMs = idleMs;
  }

  /** Files open now (for tests). */
  get size(): number {
    return this.#files.size;
  }

  /**
   * Piece `index` of a cached blob (the layout follows from its size) into a buffer from
   * `alloc`, or undefined when the blob is not cached or has no such piece.
   */
  async readPiece(
    digest: Digest,
    index: number,
    alloc: (size: number) => Buffer,
  ): Promise<Buffer | undefined> {
    const key = digest.toString();
    let file = this.#files.get(key);
    if (file === undefined) {
      const opened = this.#store.open(digest);
      const kept: KeptFile = { opened, reads: 0, timer: undefined };
      file = kept;
      this.#files.set(key, kept);
      // Not cached (yet), or not openable: asked again next time, not remembered.
      const forget = (): void => {
        if (this.#files.get(key) === kept) {
          this.#files.delete(key);
        }
      };
      opened.then((content) => content === undefined && forget(), forget);
    }
    clearTimeout(file.timer);
    file.timer = undefined;
    file.reads += 1;
    try {
      const opened = await file.opened;
      if (opened === undefined) {
        return undefined;
      }
      const pieceSize = pieceSizeFor(opened.size);
      if (index >= pieceCount(opened.size, pieceSize)) {
        return undefined;
      }
      const { start, end } = pieceBounds(index, opened.size, pieceSize);
      const buffer = alloc(end - start);
      let done = 0;
      while (done < buffer.length) {
        const { bytesRead } = await opened.handle.read(
          buffer,
          done,
          buffer.length - done,
          start + done,
        );
        if (bytesRead === 0) {
          return undefined;
        }
        done += bytesRead;
      }
      return buffer;
    } finally {
      file.reads -= 1;
      this.#parkIfIdle(key, file);
    }
  }

  /** Closes every file (the peer server is closing). */
  async close(): Promise<void> {
    const files = [...this.#files.values()];
    this.#files.clear();
    for (const file of files) {
      clearTimeout(file.timer);
    }
    await Promise.all(files.map((file) => release(file)));
  }

  /** Once nobody reads the file, closes it after `idleMs` unless a read comes first. */
  #parkIfIdle(key: string, file: KeptFile): void {
    if (file.reads > 0 || file.timer !== undefined || this.#files.get(key) !== file) {
      return;
    }
    file.timer = setTimeout(() => {
      if (file.reads === 0 && this.#files.get(key) === file) {
        this.#files.delete(key);
        void release(file);
      }
    }, this.#idleMs);
    // An idle file never keeps the process alive.
    file.timer.unref();
  }
}

/** Closes a kept file and unpins its blob; a file that did not open has nothing to release. */
async function release(file: KeptFile): Promise<void> {
  const opened = await file.opened.catch(() => undefined);
  await opened?.release().catch(() => undefined);
}
