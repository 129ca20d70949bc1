/**
 * `seed-intake`: the seed server is still taking a blob in, though no piece of it has landed
 * lately. An agent that holds every piece the seed has hashed hears nothing else while the
 * origin sends the next piece slowly (a registry across a slow link, a large piece, many
 * layers at once), and would take that silence for a stalled swarm and read the rest from the
 * origin: on the very link the seed is reading through, so the seed slowed and more agents
 * gave up (every node reading the image from the registry). The notice tells them how many of
 * the blob's bytes the seed holds now; bytes that keep coming keep their downloads in the
 * swarm, at the pieces' rate floor, as bytes from a peer do.
 *
 * Before the blob's first byte the notice says instead how long the seed has waited on its
 * source (`waitingMs`): an origin slow to answer would otherwise send every agent to it after
 * their stall timeout. So it does while the seed asks its source again for the rest of a
 * transfer that broke off (`waitingMs` with the bytes it holds). A wait is told of up to
 * `SEED_WAIT_NOTICE_MAX_MS` (the seed's connect and header timeouts usually end it before).
 *
 * Core NATS on a subject outside every stream (nothing is stored: a notice matters only while
 * it is new), sent only while the seed waits, or while bytes come in and no piece has landed
 * for a while, so an intake whose pieces land often sends none.
 */
import { z } from 'zod';

import { MAX_BLOB_BYTES } from '../pieces.js';
import { digestSubjectTokens, digestText, peerId } from './common.js';

export const seedIntake = z
  .strictObject({
    type: z.literal('seed-intake'),
    blob: digestText,
    /** The seed server taking the blob in (its peer id). */
    seed: peerId,
    /** Blob size in bytes; absent while the seed's source has not answered. */
    size: z.int().nonnegative().max(MAX_BLOB_BYTES).optional(),
    /** Bytes of the blob the seed has received so far, in order from its start. */
    received: z.int().nonnegative(),
    /**
     * Present while the seed waits on its source (the origin, or the object gateway): for the
     * blob's first byte, or (`received` past 0) for the rest of a transfer that broke off, in
     * ms so far.
     */
    waitingMs: z.int().nonnegative().optional(),
  })
  .refine((m) => m.size === undefined || m.received <= m.size, {
    message: 'more bytes received than the blob has',
  })
  .refine((m) => m.size !== undefined || (m.waitingMs !== undefined && m.received === 0), {
    message: 'only a wait for the first byte may come without the blob size',
  });
export type SeedIntake = z.infer<typeof seedIntake>;

/**
 * The longest wait on its source a seed server tells of, in ms: past it the seed sends no more
 * notices of that wait (it has usually given the blob up by then: its connect and header
 * timeouts are 10 s and 30 s per request by default), and agents count none that tell of more.
 * Their downloads then go to the origin after their stall timeout.
 */
export const SEED_WAIT_NOTICE_MAX_MS = 60_000;

/** Subject of a blob's intake notices (outside `shoal.pieces.v1.>`: not stored). */
export const seedIntakeSubject = (blob: string): string =>
  `shoal.intake.v1.${digestSubjectTokens(blob)}`;

/** Every blob's intake subject: what agents may read and only the seed server may publish. */
export const SEED_INTAKE_SUBJECTS = 'shoal.intake.v1.>';
