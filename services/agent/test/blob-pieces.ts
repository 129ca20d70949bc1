/**
 * A blob served as pieces for the swarm fetch tests: a real piece server (the agent's own
 * `pieceHandler`) holding every piece of a blob in memory, and the seed server's piece hashes
 * for it, published on a real JetStream.
 */
import { createHash } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

import type { JetStreamClient } from '@nats-io/jetstream';
import fastify, { type FastifyInstance } from 'fastify';

import {
  PIECE_ROUTE,
  PieceBuffers,
  pieceHandler,
  type PieceServerOptions,
  type PieceRoute,
} from '@shoal/pieces';
import {
  encodeMessage,
  pieceBounds,
  pieceCount,
  pieceHashes,
  pieceHashesSubject,
  pieceSizeFor,
} from '@shoal/proto';
import { RateLimiter } from '@shoal/runtime';

/** The blob's digest, `sha256:<hex>`. */
export function blobDigest(blob: Buffer): string {
  return `sha256:${createHash('sha256').update(blob).digest('hex')}`;
}

/**
 * A piece server on 127.0.0.1 holding every piece of `blob` (it answers whatever a hand-out
 * says it holds), with no upload limit and eight slots; `onRequest` sees each request's path
 * and headers first (the answer waits for the promise it returns, if any); `ration`, a seed's fan-out rationing (undefined: the piece is refused as
 * rationed), and `rationedHeaders` the headers of its refusals. Close it when done.
 */
export async function servePieces(
  blob: Buffer,
  onRequest?: (url: string, headers: IncomingHttpHeaders) => Promise<void> | void,
  ration?: PieceServerOptions['ration'],
  rationedHeaders?: PieceServerOptions['rationedHeaders'],
): Promise<{ url: string; server: FastifyInstance }> {
  const pieceSize = pieceSizeFor(blob.length);
  const server = fastify();
  if (onRequest !== undefined) {
    server.addHook('onRequest', async (request) => {
      await onRequest(request.url, request.headers);
    });
  }
  server.get<PieceRoute>(
    PIECE_ROUTE,
    pieceHandler({
      source: () => ({
        pieceLength: (index) => {
          if (index >= pieceCount(blob.length, pieceSize)) {
            return undefined;
          }
          const { start, end } = pieceBounds(index, blob.length, pieceSize);
          return end - start;
        },
        readPiece: (index, buffer) => {
          const { start, end } = pieceBounds(index, blob.length, pieceSize);
          blob.copy(buffer, 0, start, end);
          return Promise.resolve(buffer.subarray(0, end - start));
        },
        acquire: () => true,
        release: () => undefined,
      }),
      buffers: new PieceBuffers(4 * 1024 * 1024),
      uploadLimit: new RateLimiter(0),
      uploads: { max: 8, timeoutMs: 60_000 },
      onResult: () => undefined,
      ...(ration === undefined ? {} : { ration }),
      ...(rationedHeaders === undefined ? {} : { rationedHeaders }),
    }),
  );
  const url = await server.listen({ host: '127.0.0.1', port: 0 });
  return { url, server };
}

/**
 * Publishes the piece hashes of `blob` from piece `first` up to `end` (every one by default),
 * as the seed server does; returns the blob's piece count.
 */
export async function publishHashes(
  js: JetStreamClient,
  blob: Buffer,
  first = 0,
  end?: number,
): Promise<number> {
  const pieceSize = pieceSizeFor(blob.length);
  const count = pieceCount(blob.length, pieceSize);
  const digest = blobDigest(blob);
  await js.publish(
    pieceHashesSubject(digest),
    encodeMessage(pieceHashes, {
      type: 'piece-hashes',
      blob: digest,
      size: blob.length,
      pieceSize,
      first,
      hashes: pieceHashList(blob).slice(first, end ?? count),
    }),
  );
  return count;
}

/** The piece hashes of `blob`, in piece order, as the seed server computes them. */
export function pieceHashList(blob: Buffer): string[] {
  const pieceSize = pieceSizeFor(blob.length);
  return Array.from({ length: pieceCount(blob.length, pieceSize) }, (_, index) => {
    const { start, end } = pieceBounds(index, blob.length, pieceSize);
    return createHash('sha256').update(blob.subarray(start, end)).digest('hex');
  });
}
