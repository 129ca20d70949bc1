/**
 * `piece-hashes`: the seed server publishes the hash of each piece of a blob as soon as that
 * piece has arrived from the origin (cut-through), in batches. Agents verify every piece they
 * fetch against these hashes; only the seed server may publish them (NATS permissions).
 */
import { z } from 'zod';

import { MAX_BLOB_BYTES, pieceSizeFor } from '../pieces.js';
import { digestSubjectTokens, digestText } from './common.js';

/** A piece's hash as every message carries it: lowercase hex sha256. */
export const PIECE_HASH_PATTERN = /^[a-f0-9]{64}$/;

/** Whether `value` is a piece hash in the form messages carry (`PIECE_HASH_PATTERN`). */
export function isPieceHash(value: unknown): value is string {
  return typeof value === 'string' && PIECE_HASH_PATTERN.test(value);
}

export const pieceHashes = z
  .strictObject({
    type: z.literal('piece-hashes'),
    blob: digestText,
    /** Blob size in bytes (at most MAX_BLOB_BYTES). */
    size: z.int().nonnegative().max(MAX_BLOB_BYTES),
    /** Piece size in bytes; every piece but the last is exactly this long. */
    pieceSize: z.int().positive(),
    /** Index of the first piece whose hash this batch carries. */
    first: z.int().nonnegative(),
    /** Lowercase hex sha256 of each piece, for pieces `first`, `first + 1`, ... */
    hashes: z.array(z.string().regex(PIECE_HASH_PATTERN)).min(1).max(1024),
  })
  // The layout follows from the size alone, so no batch can impose another one on agents.
  .refine((m) => m.pieceSize === pieceSizeFor(m.size), {
    message: 'the piece size is not the one the blob size calls for',
  })
  .refine((m) => m.first + m.hashes.length <= Math.max(1, Math.ceil(m.size / m.pieceSize)), {
    message: 'more hashes than the blob has pieces',
  });
export type PieceHashes = z.infer<typeof pieceHashes>;

/** Subject of a blob's piece hashes. */
export const pieceHashesSubject = (blob: string): string =>
  `shoal.pieces.v1.hashes.${digestSubjectTokens(blob)}`;

/** Every blob's piece-hash subject: what agents may read and only the seed server may publish. */
export const PIECE_HASHES_SUBJECTS = 'shoal.pieces.v1.hashes.>';
