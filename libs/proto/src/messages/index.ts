/**
 * The v1 message table. Every message carries a `type` tag; `messageSchemas` maps each tag to
 * its schema so a consumer can validate anything it receives in one place.
 */
import { z } from 'zod';

import { agentPresence } from './agent-presence.js';
import { handout } from './handout.js';
import { peerGone } from './peer-gone.js';
import { pieceHashes } from './piece-hashes.js';
import { pieceHave } from './piece-have.js';
import { pieceWant } from './piece-want.js';
import { piecesVerified } from './pieces-verified.js';
import { preheatCommand } from './preheat-command.js';
import { preheatNodes } from './preheat-nodes.js';
import { preheatProgress } from './preheat-progress.js';
import { preheatReport } from './preheat-report.js';
import { seedFailed } from './seed-failed.js';
import { seedIntake } from './seed-intake.js';
import { seedRequest } from './seed-request.js';
import { trackerReplica } from './tracker-replica.js';
import { wantForwarded } from './want-forwarded.js';

export const messageSchemas = {
  'piece-hashes': pieceHashes,
  'piece-have': pieceHave,
  'piece-want': pieceWant,
  'peer-gone': peerGone,
  handout,
  'seed-request': seedRequest,
  'seed-failed': seedFailed,
  'seed-intake': seedIntake,
  'pieces-verified': piecesVerified,
  preheat: preheatCommand,
  'preheat-progress': preheatProgress,
  'preheat-report': preheatReport,
  'preheat-nodes': preheatNodes,
  'agent-presence': agentPresence,
  'tracker-replica': trackerReplica,
  'want-forwarded': wantForwarded,
} as const;

export type MessageType = keyof typeof messageSchemas;
export type Message = { [K in MessageType]: z.infer<(typeof messageSchemas)[K]> }[MessageType];

/** The major version every v1 subject carries. */
export const PROTOCOL_VERSION = 1;

/** The outcome of decoding bytes received from NATS. */
export type Decoded<T> = { ok: true; value: T } | { ok: false; error: string };

/** Decodes and validates a JSON message against one schema; never throws on bad input. */
export function decodeMessage<S extends z.ZodType>(
  schema: S,
  bytes: Uint8Array,
): Decoded<z.infer<S>> {
  let json: unknown;
  try {
    // A view of the received bytes, not a copy of them (`Buffer.from(bytes)` copies).
    json = JSON.parse(
      Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'),
    );
  } catch (error) {
    return { ok: false, error: `not JSON: ${(error as Error).message}` };
  }
  const result = schema.safeParse(json);
  if (!result.success) {
    return { ok: false, error: z.prettifyError(result.error) };
  }
  return { ok: true, value: result.data };
}

/** Encodes a message after validating it, so a bug cannot put an invalid message on the wire. */
export function encodeMessage<S extends z.ZodType>(schema: S, message: z.input<S>): Uint8Array {
  return Buffer.from(JSON.stringify(schema.parse(message)), 'utf8');
}

/**
 * Encodes a message without validating it, for a hot path whose message is made only of
 * values this process made or validated on the way in: the tracker's hand-outs (peers and
 * piece sets from decoded haves, the limit of a decoded want), the seed server's piece hashes
 * and haves (digests it computed, or a manifest checked at load), an agent's haves (its own
 * piece set). There validation cost 2 to 5 times the encoding (a hand-out naming 16 peers
 * with 32 ranges each: about 180 µs against 35 µs) on every message. Every receiver
 * validates what it decodes, so a bug here makes a message that is refused, never one that
 * is trusted; the tests decode what these paths send against the schema.
 */
export function encodeUnchecked<S extends z.ZodType>(
  // For the type of `message` only.
  _schema: S,
  message: z.output<S>,
): Uint8Array {
  return Buffer.from(JSON.stringify(message), 'utf8');
}
