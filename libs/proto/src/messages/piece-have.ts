/**
 * `piece-have`: an agent (or the seed server) tells the swarm which pieces of a blob it can
 * serve. Sent in batches at an interval, never per piece, so an agent's message rate does not
 * grow with the size of the swarm.
 */
import { z } from 'zod';

import { digestSubjectTokens, digestText, peerInfo, pieceRanges } from './common.js';

export const pieceHave = z.strictObject({
  type: z.literal('piece-have'),
  blob: digestText,
  peer: peerInfo,
  /** All pieces the peer holds now (not a delta), so a lost message costs nothing. */
  pieces: pieceRanges,
  /** True when the peer holds the whole verified blob. */
  complete: z.boolean(),
  /** True for the seed server: hand-outs use seeds last when peers can serve. */
  seed: z.boolean().default(false),
});
export type PieceHave = z.infer<typeof pieceHave>;

/**
 * Subject of one peer's have events for one blob. The stream keeps the latest message per
 * subject, so replaying it yields exactly the current swarm.
 */
export const pieceHaveSubject = (blob: string, peer: string): string =>
  `shoal.swarm.v1.have.${digestSubjectTokens(blob)}.${peer}`;

/** Subjects of every have event (all blobs, all peers). */
export const PIECE_HAVE_SUBJECTS = 'shoal.swarm.v1.have.>';
