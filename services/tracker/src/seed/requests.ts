/**
 * Seed requests: when nobody in a blob's swarm holds or is fetching the whole blob, the
 * tracker asks the seed server to bring it in. The message id is the blob's, so JetStream
 * drops the copies that simultaneous wants (on any replica) produce within its duplicate
 * window.
 */
import type { JetStreamClient } from '@nats-io/jetstream';
import { RequestError, type MsgHdrs } from '@nats-io/transport-node';
import { encodeMessage, parseDigest, seedRequest, seedRequestSubject } from '@shoal/proto';
import type { PieceWant } from '@shoal/proto';

/** What became of a seed request. */
export type SeedRequestOutcome =
  /** Stored in SHOAL_SEED. */
  | 'published'
  /** JetStream already held a request for this blob within the duplicate window. */
  | 'duplicate'
  /**
   * No stream takes seed requests (no seed server is deployed, as in a `leecher`-only
   * cluster or a test): nothing to ask, and not the want's fault.
   */
  | 'no-stream';

/**
 * The message id of a blob's seed request, `seed-<algorithm>-<hex>`, or
 * `seed-<algorithm>-<hex>-w<seq>` once a seed withdrew the blob (evicted it, or a run failed)
 * at stream sequence `withdrawal`: the request that brings it back must not be dropped as a
 * duplicate of the one that first brought it in, while the wants that follow one withdrawal
 * still make one request between them.
 */
export function seedRequestId(blob: string, withdrawal?: number): string {
  const digest = parseDigest(blob);
  const id = `seed-${digest.algorithm}-${digest.hex}`;
  return withdrawal === undefined ? id : `${id}-w${String(withdrawal)}`;
}

export interface SeedRequesterOptions {
  /** How long to wait for JetStream's acknowledgement, in ms. */
  readonly timeoutMs: number;
}

export class SeedRequester {
  readonly #js: JetStreamClient;
  readonly #timeoutMs: number;

  constructor(js: JetStreamClient, options: SeedRequesterOptions) {
    this.#js = js;
    this.#timeoutMs = options.timeoutMs;
  }

  /**
   * Publishes a seed request for the wanted blob (`withdrawal`: see `seedRequestId`). Throws
   * on failures worth retrying (a timeout, a lost connection); a missing stream is an
   * outcome, not an error.
   */
  async request(
    want: PieceWant,
    headers?: MsgHdrs,
    withdrawal?: number,
  ): Promise<SeedRequestOutcome> {
    const payload = encodeMessage(seedRequest, {
      type: 'seed-request',
      blob: want.blob,
      registry: want.registry,
      repository: want.repository,
      reason: { kind: 'want' },
    });
    try {
      const ack = await this.#js.publish(seedRequestSubject(want.blob), payload, {
        msgID: seedRequestId(want.blob, withdrawal),
        timeout: this.#timeoutMs,
        ...(headers === undefined ? {} : { headers }),
      });
      return ack.duplicate ? 'duplicate' : 'published';
    } catch (error) {
      if (isNoStream(error)) {
        return 'no-stream';
      }
      throw error;
    }
  }
}

/**
 * True when nobody answered the publish: no stream listens on the subject. nats.js wraps that
 * "no responders" answer in an error saying JetStream is not enabled, but the want being
 * answered came through JetStream, so it is the stream that is missing.
 */
function isNoStream(error: unknown): boolean {
  return (
    error instanceof Error && error.cause instanceof RequestError && error.cause.isNoResponders()
  );
}
