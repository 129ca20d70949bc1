/**
 * `pieces-verified`: the seed server's word that a blob's piece hashes are those of bytes
 * that matched the blob's digest. Published on the blob's piece-hashes subject (only the seed
 * server may publish there: NATS permissions) once the whole blob read from the origin hashed
 * to its digest, after the hashes it binds. `hashes` is the sha256 of the piece hashes as
 * published, in order: the lowercase hex of each, concatenated (64 characters a piece).
 *
 * An agent whose every piece verified against a list with that very sha256 holds the bytes the
 * seed verified, so it may release the last byte without hashing the whole blob again (the
 * trust argument: docs/architecture.md, "The seed's verified record"). A list that differs in
 * any piece, a blob read from the origin by the agent itself, or no record at all: the agent
 * hashes the blob itself, as before.
 */
import { createHash } from 'node:crypto';

import { z } from 'zod';

import { MAX_BLOB_BYTES, pieceSizeFor } from '../pieces.js';
import { digestText } from './common.js';

export const piecesVerified = z
  .strictObject({
    type: z.literal('pieces-verified'),
    blob: digestText,
    /** Blob size in bytes, as the piece hashes say it. */
    size: z.int().nonnegative().max(MAX_BLOB_BYTES),
    /** Piece size in bytes, as the piece hashes say it. */
    pieceSize: z.int().positive(),
    /** Lowercase hex sha256 of the piece hashes' hex, concatenated in piece order. */
    hashes: z.string().regex(/^[a-f0-9]{64}$/),
  })
  .refine((m) => m.pieceSize === pieceSizeFor(m.size), {
    message: 'the piece size is not the one the blob size calls for',
  });
export type PiecesVerified = z.infer<typeof piecesVerified>;

/** The `hashes` field of a `pieces-verified` record for this list of piece hashes. */
export function pieceListDigest(hashes: readonly string[]): string {
  const hash = createHash('sha256');
  for (const piece of hashes) {
    hash.update(piece, 'latin1');
  }
  return hash.digest('hex');
}
