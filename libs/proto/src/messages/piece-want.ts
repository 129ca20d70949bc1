/**
 * `piece-want`: an agent joins a blob's swarm and asks for peers. The tracker answers with a
 * `handout` on the asker's hand-out subject.
 */
import { z } from 'zod';

import {
  digestSubjectTokens,
  digestText,
  peerInfo,
  pieceRanges,
  registryHost,
  repositoryName,
} from './common.js';

export const pieceWant = z.strictObject({
  type: z.literal('piece-want'),
  blob: digestText,
  peer: peerInfo,
  /** Pieces the asker already holds; the tracker prefers peers holding the others. */
  have: pieceRanges,
  /** Registry and repository the blob belongs to, so the seed server can fetch it. */
  registry: registryHost,
  repository: repositoryName,
  /** Most peers the asker wants back. */
  limit: z.int().min(1).max(64).default(8),
});
export type PieceWant = z.infer<typeof pieceWant>;

/** Subject of a blob's want events. */
export const pieceWantSubject = (blob: string): string =>
  `shoal.swarm.v1.want.${digestSubjectTokens(blob)}`;

/** Subjects of every want event. */
export const PIECE_WANT_SUBJECTS = 'shoal.swarm.v1.want.>';
