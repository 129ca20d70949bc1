/**
 * `pieces-verified`: the seed server's signed word that a blob's piece hashes are those of
 * bytes that matched the blob's digest. Published on a subject of its own per blob
 * (`piecesVerifiedSubject`) once the whole blob the seed read from the origin hashed to its
 * digest, and again whenever the seed publishes the blob's hashes anew. `hashes` is the
 * sha256 of the piece hashes as published, in order: the lowercase hex of each, concatenated
 * (64 characters a piece). `sig` is an Ed25519 signature by the seed server's record key
 * (`SHOAL_SEED_RECORD_KEY_FILE`) over the other fields (`recordSignedText`).
 *
 * An agent that holds the seed's public key, and whose every piece verified against a list
 * with that very sha256, holds the bytes the seed verified, so it may release the last byte
 * without hashing the whole blob itself (the trust argument: docs/architecture.md, "The seed's
 * signed record"). The signature, not NATS permissions, is what the agent trusts: whoever can
 * publish on the subject (a misconfigured account, a tampered stream) cannot make a record
 * the agent accepts. Without the key, with a list that differs in any piece, or with a piece
 * that verified against nothing, the agent hashes the blob itself, as before.
 */
import { createHash, sign, verify, type KeyObject } from 'node:crypto';

import { z } from 'zod';

import { MAX_BLOB_BYTES, pieceSizeFor } from '../pieces.js';
import { digestSubjectTokens, digestText } from './common.js';
import { PIECE_HASH_PATTERN } from './piece-hashes.js';

export const piecesVerified = z
  .strictObject({
    type: z.literal('pieces-verified'),
    blob: digestText,
    /** Blob size in bytes, as the piece hashes say it. */
    size: z.int().nonnegative().max(MAX_BLOB_BYTES),
    /** Piece size in bytes, as the piece hashes say it. */
    pieceSize: z.int().positive(),
    /** Lowercase hex sha256 of the piece hashes' hex, concatenated in piece order. */
    hashes: z.string().regex(PIECE_HASH_PATTERN),
    /** Ed25519 signature of `recordSignedText`, base64url without padding (64 bytes). */
    sig: z.string().regex(/^[A-Za-z0-9_-]{86}$/),
  })
  .refine((m) => m.pieceSize === pieceSizeFor(m.size), {
    message: 'the piece size is not the one the blob size calls for',
  });
export type PiecesVerified = z.infer<typeof piecesVerified>;

/** A record's fields without its signature. */
export type PiecesVerifiedClaims = Omit<PiecesVerified, 'sig'>;

/** Subject of a blob's `pieces-verified` record: one subject per blob, the last one counts. */
export const piecesVerifiedSubject = (blob: string): string =>
  `shoal.pieces.v1.verified.${digestSubjectTokens(blob)}`;

/** Every blob's record subject: what agents may read and only the seed server may publish. */
export const PIECES_VERIFIED_SUBJECTS = 'shoal.pieces.v1.verified.>';

/** The `hashes` field of a `pieces-verified` record for this list of piece hashes. */
export function pieceListDigest(hashes: readonly string[]): string {
  const hash = createHash('sha256');
  for (const piece of hashes) {
    hash.update(piece, 'latin1');
  }
  return hash.digest('hex');
}

/**
 * The text a record's signature covers: a fixed label (so no other signed Shoal text can pass
 * for a record) and each field on a line of its own.
 */
export function recordSignedText(claims: PiecesVerifiedClaims): Buffer {
  return Buffer.from(
    [
      'shoal pieces-verified v1',
      claims.blob,
      String(claims.size),
      String(claims.pieceSize),
      claims.hashes,
    ].join('\n'),
    'utf8',
  );
}

/** Signs a record with the seed server's Ed25519 record key. */
export function signPiecesVerified(key: KeyObject, claims: PiecesVerifiedClaims): PiecesVerified {
  const sig = sign(null, recordSignedText(claims), key).toString('base64url');
  return { ...claims, type: 'pieces-verified', sig };
}

/** True when one of `keys` (several during a rotation) signed `record`. */
export function verifyPiecesVerified(record: PiecesVerified, keys: readonly KeyObject[]): boolean {
  const signature = Buffer.from(record.sig, 'base64url');
  const text = recordSignedText(record);
  return keys.some((key) => verify(null, text, key, signature));
}
