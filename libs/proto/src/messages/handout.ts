/** `handout`: the tracker's answer to a want: whom to fetch pieces from, best first. */
import { z } from 'zod';

import { MAX_HANDOUT_TOKEN_LENGTH } from '../handout-token.js';
import { digestText, peerInfo, pieceRanges } from './common.js';

export const handout = z.strictObject({
  type: z.literal('handout'),
  blob: digestText,
  peers: z
    .array(
      z.strictObject({
        peer: peerInfo,
        /**
         * Pieces the tracker last saw this peer holding: for a peer still downloading, only
         * those the asker lacked when it asked (what it can fetch there).
         */
        pieces: pieceRanges,
        complete: z.boolean(),
        seed: z.boolean(),
      }),
    )
    .max(64),
  /**
   * The asker's hand-out token for this blob (see `handout-token.ts`), presented on every
   * piece request. Absent only from a tracker that runs with piece authentication off.
   */
  token: z
    .string()
    .max(MAX_HANDOUT_TOKEN_LENGTH)
    .regex(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/)
    .optional(),
});
export type Handout = z.infer<typeof handout>;

/** Core-NATS subject where a peer receives its hand-outs. */
export const handoutSubject = (peer: string): string => `shoal.handout.v1.${peer}`;
