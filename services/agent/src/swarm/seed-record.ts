/**
 * Reads one blob's `pieces-verified` record: the seed server's signed word that the blob's
 * piece hashes are those of bytes that matched its digest (`@shoal/proto` pieces-verified).
 *
 * Subscribes (core NATS) to the blob's record subject first, so a record the seed publishes
 * from then on (a cold pull: once the seed has read the whole blob) reaches it at once, then
 * reads the one stored (a blob the seed verified earlier) with a direct get. Delivers the first
 * record whose signature one of `keys` checks, and stops; a record without a good signature is
 * counted, logged and ignored, whoever could publish it. Costs one subscription and one direct
 * get per download, and one message per blob.
 */
import type { KeyObject } from 'node:crypto';

import type { JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import {
  decodeMessage,
  piecesVerified,
  piecesVerifiedSubject,
  STREAMS,
  verifyPiecesVerified,
  type PiecesVerified,
} from '@shoal/proto';
import { untilAborted, type Logger } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import type { DirectGetCheck } from './hash-reader.js';

/** How long the direct get of a stored record may take, in ms. */
const RECORD_GET_TIMEOUT_MS = 2_000;

/**
 * Whether this process has warned of a record no key signed: once at warn (a key missing from
 * the agent's file, a rotation done out of order), then at debug; the counter counts each.
 */
let warnedUnsigned = false;

export interface SeedRecordDeps {
  readonly nc: NatsConnection;
  readonly jsm: JetStreamManager;
  readonly directGets: DirectGetCheck;
  /** The seed servers' record public keys (several during a rotation). */
  readonly keys: readonly KeyObject[];
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
}

/**
 * Calls `onRecord` once with `blob`'s record when a signed one is heard, before `signal`
 * aborts. Resolves when delivered or aborted; never rejects (without a record the download
 * hashes the blob itself, as it always could).
 */
export async function followSeedRecord(
  deps: SeedRecordDeps,
  blob: string,
  signal: AbortSignal,
  onRecord: (record: PiecesVerified) => void,
): Promise<void> {
  if (signal.aborted) {
    return;
  }
  const done = new AbortController();
  const stop = AbortSignal.any([signal, done.signal]);
  /** Checks a message's bytes; true once a record was delivered. */
  const take = (data: Uint8Array, path: 'live' | 'stored'): boolean => {
    if (done.signal.aborted) {
      return true;
    }
    const decoded = decodeMessage(piecesVerified, data);
    if (!decoded.ok || decoded.value.blob !== blob) {
      deps.metrics.eventsRejected.inc({ type: 'pieces-verified' });
      deps.logger.warn({ blob, path }, 'an invalid pieces-verified record; ignored');
      return false;
    }
    if (!verifyPiecesVerified(decoded.value, deps.keys)) {
      deps.metrics.eventsRejected.inc({ type: 'pieces-verified' });
      deps.logger[warnedUnsigned ? 'debug' : 'warn'](
        { blob, path },
        'a pieces-verified record no key in SHOAL_AGENT_SEED_RECORD_PUBLIC_KEYS_FILE signed; ignored (such blobs are hashed here; later ones are logged at debug)',
      );
      warnedUnsigned = true;
      return false;
    }
    deps.metrics.eventsReceived.inc({ type: 'pieces-verified' });
    done.abort();
    onRecord(decoded.value);
    return true;
  };
  let subscription: ReturnType<NatsConnection['subscribe']> | undefined;
  try {
    subscription = deps.nc.subscribe(piecesVerifiedSubject(blob), {
      callback: (error, message) => {
        if (error === null) {
          take(message.data, 'live');
        }
      },
    });
    const onAbort = (): void => subscription?.unsubscribe();
    stop.addEventListener('abort', onAbort, { once: true });
    if (await untilAborted(deps.directGets.allowed(), stop).catch(() => false)) {
      const stored = await untilAborted(
        deps.jsm.direct.getMessage(STREAMS.pieces.name, {
          last_by_subj: piecesVerifiedSubject(blob),
        }),
        AbortSignal.any([stop, AbortSignal.timeout(RECORD_GET_TIMEOUT_MS)]),
      ).catch((error: unknown) => {
        if (!stop.aborted) {
          deps.logger.debug({ blob, err: error }, 'no stored pieces-verified record read');
        }
        return null;
      });
      if (stored !== null) {
        take(stored.data, 'stored');
      }
    }
    // Live from here on, until a record came or the download ends.
    await new Promise<void>((resolve) => {
      if (stop.aborted) {
        resolve();
      } else {
        stop.addEventListener('abort', () => resolve(), { once: true });
      }
    });
  } catch (error) {
    deps.logger.debug({ blob, err: error }, 'the pieces-verified record could not be followed');
  } finally {
    subscription?.unsubscribe();
    done.abort();
  }
}
