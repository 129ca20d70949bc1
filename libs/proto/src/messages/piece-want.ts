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

/**
 * Subject of one peer's want for a blob. The asker's peer id is in it so that per-node NATS
 * permissions can keep an agent from asking in another's name (the tracker answers the peer
 * named in the body, and checks that it is the one in the subject).
 */
export const pieceWantSubject = (blob: string, peer: string): string =>
  `shoal.swarm.v1.want.${digestSubjectTokens(blob)}.${peer}`;

/**
 * The subject agents before per-node identity used, without the peer; the tracker still
 * answers it (NATS permissions refuse it to agents that run with per-node identity).
 */
export const legacyPieceWantSubject = (blob: string): string =>
  `shoal.swarm.v1.want.${digestSubjectTokens(blob)}`;

/** Subjects of every want event. */
export const PIECE_WANT_SUBJECTS = 'shoal.swarm.v1.want.>';
