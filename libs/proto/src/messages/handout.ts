/** `handout`: the tracker's answer to a want: whom to fetch pieces from, best first. */
import { z } from 'zod';

import { digestText, peerInfo, pieceRanges } from './common.js';

export const handout = z.strictObject({
  type: z.literal('handout'),
  blob: digestText,
  peers: z
    .array(
      z.strictObject({
        peer: peerInfo,
        /** Pieces the tracker last saw this peer holding. */
        pieces: pieceRanges,
        complete: z.boolean(),
        seed: z.boolean(),
      }),
    )
    .max(64),
});
export type Handout = z.infer<typeof handout>;

/** Core-NATS subject where a peer receives its hand-outs. */
export const handoutSubject = (peer: string): string => `shoal.handout.v1.${peer}`;
