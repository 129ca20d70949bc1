/** `peer-gone`: an agent leaves (graceful shutdown); the tracker drops it from every swarm. */
import { z } from 'zod';

import { peerId } from './common.js';

export const peerGone = z.strictObject({
  type: z.literal('peer-gone'),
  peer: peerId,
});
export type PeerGone = z.infer<typeof peerGone>;

/** Subject of a peer's departure. */
export const peerGoneSubject = (peer: string): string => `shoal.swarm.v1.gone.${peer}`;

/** Subjects of every peer-gone event. */
export const PEER_GONE_SUBJECTS = 'shoal.swarm.v1.gone.>';
