/**
 * Reads one blob's piece hashes without a JetStream consumer: once per blob per node.
 *
 * The agent first subscribes (core NATS) to the blob's hash subject, so a batch the seed
 * publishes from then on reaches it at once (cut-through), then reads the batches already
 * stored with JetStream direct gets (`next_by_subj` from the last sequence read, nats-server
 * 2.9 and later, `allow_direct` on SHOAL_PIECES). It stops as soon as every piece's hash is
 * known: the subscription lives only while the seed is still hashing. A complete blob's
 * hashes are kept consolidated (the seed server replaces its incremental batches with one
 * message per 1,024 pieces), so a node joining later reads them with a single request.
 *
 * Where direct gets are not available (a stream created before `allow_direct`, NATS
 * permissions of an older deployment) it falls back to what agents did before: a consumer of
 * its own on the blob's hash subject.
 */
import {
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type StreamInfo,
} from '@nats-io/jetstream';
import {
  RequestError,
  TimeoutError,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
import {
  decodeMessage,
  pieceCount,
  pieceHashes,
  pieceHashesSubject,
  seedFailed,
  STREAMS,
  type PieceHashes,
  type SeedFailed,
} from '@shoal/proto';
import { activeSpan, untilAborted, type Logger, type Span } from '@shoal/runtime';

import type { AgentMetrics } from '../metrics.js';
import { timerDelay } from './timer-delay.js';

/**
 * Without a new hash for this long while some are missing, the stored batches are read again
 * from where the last read ended, in ms: a batch published while the connection was down
 * never reaches the subscription, and the next seed run of a failed blob republishes. Each
 * read that finds nothing new doubles the wait, up to `RECHECK_MAX_MS`: a seed stuck on a
 * slow origin costs each waiting agent a get every half minute, not every second.
 */
const RECHECK_MS = 1_000;
const RECHECK_MAX_MS = 30_000;
/** Wait before a direct get that timed out (a busy server) is asked again, in ms. */
const RETRY_MS = 250;
/** How long the stream's answer to "direct gets allowed?" is trusted, in ms. */
const DIRECT_CHECK_TTL_MS = 60_000;
/**
 * How long one STREAM.INFO of SHOAL_PIECES answers every idle reader's "was the stream made
 * anew?" on this agent, in ms: thousands of agents with a few idle downloads each then cost
 * the JetStream API one request per agent per interval, not one per download per re-read.
 */
const STREAM_STATE_TTL_MS = 2_000;

export type HashPath = 'stored' | 'live' | 'consumer';

export interface HashReaderDeps {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  /** Whether SHOAL_PIECES answers direct gets (see `DirectGetCheck`). */
  readonly directGets: DirectGetCheck;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
}

/**
 * Whether SHOAL_PIECES allows direct gets, from its configuration, asked at most once a
 * minute per agent. A stream without `allow_direct` does not refuse a direct get on
 * nats-server 2.9: the request just times out, which cannot be told from a busy server.
 */
export class DirectGetCheck {
  readonly #jsm: JetStreamManager;
  #answer: { stream: Promise<PiecesStream>; atMs: number } | undefined;
  #state:
    { info: Promise<PiecesState | undefined>; askedAtMs: number; pending: boolean } | undefined;

  constructor(jsm: JetStreamManager) {
    this.#jsm = jsm;
  }

  allowed(): Promise<boolean> {
    return this.stream().then((stream) => stream.directGets);
  }

  /** What the check last learnt of the stream (at most a minute old). */
  stream(): Promise<PiecesStream> {
    const now = performance.now();
    if (this.#answer === undefined || now - this.#answer.atMs > DIRECT_CHECK_TTL_MS) {
      const stream = this.#jsm.streams.info(STREAMS.pieces.name).then(piecesStream, () => {
        // Unknown (NATS trouble): ask again next time rather than keep a guess.
        this.#answer = undefined;
        return { directGets: false, created: undefined };
      });
      this.#answer = { stream, atMs: now };
    }
    return this.#answer.stream;
  }

  /**
   * The stream's creation time and last sequence, shared by every reader of this agent: asked
   * at most once per `STREAM_STATE_TTL_MS` and once at a time, unless a reader needs an answer
   * asked after `notBeforeMs` (performance.now()). Undefined when it could not be read.
   */
  state(notBeforeMs = -Infinity): Promise<PiecesState | undefined> {
    const now = performance.now();
    const current = this.#state;
    if (
      current !== undefined &&
      current.askedAtMs >= notBeforeMs &&
      (current.pending || now - current.askedAtMs <= STREAM_STATE_TTL_MS)
    ) {
      return current.info;
    }
    const entry = {
      askedAtMs: now,
      pending: true,
      info: this.#jsm.streams.info(STREAMS.pieces.name).then(
        (info): PiecesState => {
          entry.pending = false;
          // Readers starting from now compare with this stream, not one up to a minute old.
          this.#answer = { stream: Promise.resolve(piecesStream(info)), atMs: now };
          return { created: info.created, lastSeq: info.state.last_seq, askedAtMs: now };
        },
        (): undefined => {
          entry.pending = false;
          if (this.#state === entry) {
            this.#state = undefined;
          }
          return undefined;
        },
      ),
    };
    this.#state = entry;
    return entry.info;
  }
}

function piecesStream(info: StreamInfo): PiecesStream {
  return {
    // Absent (undefined, whatever the type says) from servers before 2.9: not allowed.
    directGets: (info.config.allow_direct as boolean | undefined) === true,
    created: info.created,
  };
}

/** SHOAL_PIECES as `DirectGetCheck` saw it. */
export interface PiecesStream {
  readonly directGets: boolean;
  /** When the stream was created (its info's `created`); undefined when it could not be read. */
  readonly created: string | undefined;
}

/** SHOAL_PIECES's identity and extent, as `DirectGetCheck.state` saw it. */
export interface PiecesState {
  readonly created: string;
  readonly lastSeq: number;
  /** When the STREAM.INFO was sent (performance.now()). */
  readonly askedAtMs: number;
}

/** Direct gets cannot work here (the stream does not allow them, or NATS permissions). */
class DirectUnavailable extends Error {
  override readonly name = 'DirectUnavailable';
}

/**
 * Calls `onBatch` with each valid batch of `blob`'s piece hashes until every piece's hash has
 * been delivered or `signal` aborts. A batch may come twice (stored and live); `onBatch` must
 * take a repeat as a no-op. A seed server's `seed-failed` notice on the subject goes to
 * `onSeedFailed` (the reading goes on: a later run publishes hashes again). Resolves when
 * done; rejects when neither path can read the hashes.
 */
export async function readPieceHashes(
  deps: HashReaderDeps,
  blob: string,
  signal: AbortSignal,
  onBatch: (batch: PieceHashes, path: HashPath) => void,
  onSeedFailed: (notice: SeedFailed) => void = () => undefined,
): Promise<void> {
  const reader = new HashReader(deps, blob, signal, onBatch, onSeedFailed);
  try {
    await reader.direct();
  } catch (error) {
    if (!(error instanceof DirectUnavailable)) {
      throw error;
    }
    deps.logger.debug(
      { blob, err: error },
      'piece hashes by direct get unavailable; reading them with a consumer',
    );
    await reader.consumer();
  }
}

class HashReader {
  readonly #deps: HashReaderDeps;
  readonly #blob: string;
  readonly #subject: string;
  readonly #signal: AbortSignal;
  readonly #onBatch: (batch: PieceHashes, path: HashPath) => void;
  readonly #onSeedFailed: (notice: SeedFailed) => void;
  /** Pieces whose hash was delivered. */
  readonly #known = new Set<number>();
  /** Pieces of the blob, once a batch said its size. */
  #count: number | undefined;
  /** Last stream sequence read by a direct get. */
  #seq = 0;
  /** When `#seq` was read (performance.now()): a stream state asked before may not know it. */
  #seqReadAtMs = 0;
  /**
   * When the stream read from was created, to tell it from one made anew (a NATS server back
   * with an empty store, or the stream deleted and declared again), whose sequence starts
   * over below `#seq`.
   */
  #streamCreated: string | undefined;
  /** When a new hash last arrived, or the stored ones were last read (performance.now()). */
  #progressAt = performance.now();
  /** How long without a new hash before the stored batches are read again, in ms. */
  #recheckMs = RECHECK_MS;
  #wake: (() => void) | undefined;
  /** The download's span: batches heard on the subscription come outside its context. */
  readonly #span: Span | undefined = activeSpan();

  constructor(
    deps: HashReaderDeps,
    blob: string,
    signal: AbortSignal,
    onBatch: (batch: PieceHashes, path: HashPath) => void,
    onSeedFailed: (notice: SeedFailed) => void,
  ) {
    this.#deps = deps;
    this.#blob = blob;
    this.#subject = pieceHashesSubject(blob);
    this.#signal = signal;
    this.#onBatch = onBatch;
    this.#onSeedFailed = onSeedFailed;
  }

  #isDone(): boolean {
    return this.#signal.aborted || (this.#count !== undefined && this.#known.size >= this.#count);
  }

  /** Subscription first, then the stored batches; until done. */
  async direct(): Promise<void> {
    let failure: Error | undefined;
    let subscription: Subscription;
    try {
      subscription = this.#deps.nc.subscribe(this.#subject, {
        callback: (error, msg) => {
          if (error !== null) {
            // A permissions violation ends the subscription: the consumer takes over.
            failure = error;
            this.#wake?.();
            return;
          }
          this.#deliver(msg.data, 'live');
        },
      });
    } catch (error) {
      throw new DirectUnavailable('cannot subscribe to the hash subject', { cause: error });
    }
    const onAbort = (): void => this.#wake?.();
    this.#signal.addEventListener('abort', onAbort, { once: true });
    try {
      // Subscribed first (before the caller's first want goes out), asked second: the
      // subscription does not depend on the stream's setting, and the batches it hears
      // meanwhile count either way.
      const stream = await this.#deps.directGets.stream();
      if (!stream.directGets) {
        throw new DirectUnavailable(`${STREAMS.pieces.name} does not allow direct gets`);
      }
      this.#streamCreated = stream.created;
      await this.#readStored();
      while (!this.#isDone()) {
        if (failure !== undefined) {
          throw new DirectUnavailable('the hash subscription was refused', { cause: failure });
        }
        const idle = performance.now() - this.#progressAt;
        if (idle >= this.#recheckMs) {
          const known = this.#known.size;
          await this.#readStored();
          if (this.#known.size === known && (await this.#streamMadeAnew())) {
            // Read again from its first message; batches already known are no-ops.
            this.#seq = 0;
            await this.#readStored();
          }
          if (this.#known.size === known) {
            this.#recheckMs = Math.min(RECHECK_MAX_MS, this.#recheckMs * 2);
          }
          this.#progressAt = performance.now();
          continue;
        }
        await this.#sleep(this.#recheckMs - idle);
      }
    } finally {
      this.#signal.removeEventListener('abort', onAbort);
      subscription.unsubscribe();
    }
  }

  /**
   * Whether the stream now is not the one read from (see `#streamCreated`): asked only when a
   * re-read found nothing new, so a download the seed feeds costs no extra request, and
   * answered by the agent's shared `DirectGetCheck.state`.
   */
  async #streamMadeAnew(): Promise<boolean> {
    if (this.#seq === 0) {
      return false;
    }
    let state = await this.#streamState();
    if (state !== undefined && this.#differs(state) && state.askedAtMs < this.#seqReadAtMs) {
      // Asked before this reader's last read: a message newer than its last sequence is no
      // sign of a new stream. One asked since settles it.
      state = await this.#streamState(this.#seqReadAtMs);
    }
    if (state === undefined) {
      // Unknown (NATS trouble, the stream not declared again yet): asked at the next re-read.
      return false;
    }
    const anew = this.#differs(state);
    this.#streamCreated = state.created;
    if (anew) {
      this.#deps.metrics.streamsMadeAnew.inc({ reader: 'piece-hashes' });
      this.#deps.logger.warn(
        { blob: this.#blob, lastRead: this.#seq, lastSeq: state.lastSeq },
        'the piece-hash stream was made anew; reading it from its first message',
      );
    }
    return anew;
  }

  #differs(state: PiecesState): boolean {
    return (
      (this.#streamCreated !== undefined && state.created !== this.#streamCreated) ||
      state.lastSeq < this.#seq
    );
  }

  async #streamState(notBeforeMs?: number): Promise<PiecesState | undefined> {
    try {
      return await untilAborted(this.#deps.directGets.state(notBeforeMs), this.#signal);
    } catch (error) {
      this.#deps.logger.debug({ blob: this.#blob, err: error }, 'piece-hash stream check ended');
      return undefined;
    }
  }

  /**
   * What agents did before direct gets: a consumer of the blob's hash subject from the start.
   * It ends when the stream or the consumer goes (`abort_on_missing_resource`: nats.js would
   * otherwise re-create it after the last sequence delivered, past the end of a stream made
   * anew) and is opened again from the first message; batches already known are no-ops.
   */
  async consumer(): Promise<void> {
    while (!this.#isDone()) {
      try {
        await this.#consumeOnce();
      } catch (error) {
        if (this.#signal.aborted) {
          return;
        }
        this.#deps.logger.debug({ blob: this.#blob, err: error }, 'piece-hash consumer ended');
      }
      if (!this.#isDone()) {
        await this.#sleep(RECHECK_MS);
      }
    }
  }

  async #consumeOnce(): Promise<void> {
    const consumer = await this.#deps.js.consumers.get(STREAMS.pieces.name, {
      filter_subjects: this.#subject,
      deliver_policy: DeliverPolicy.All,
    });
    const messages = await consumer.consume({ abort_on_missing_resource: true });
    const stop = (): void => void messages.close();
    this.#signal.addEventListener('abort', stop, { once: true });
    if (this.#signal.aborted) {
      stop();
    }
    try {
      for await (const msg of messages) {
        this.#deliver(msg.data, 'consumer');
        if (this.#isDone()) {
          stop();
        }
      }
    } finally {
      this.#signal.removeEventListener('abort', stop);
    }
  }

  /** Reads the stored batches after the last one read, until none is left or done. */
  async #readStored(): Promise<void> {
    const { jsm } = this.#deps;
    while (!this.#isDone()) {
      let stored;
      try {
        stored = await untilAborted(
          jsm.direct.getMessage(STREAMS.pieces.name, {
            seq: this.#seq + 1,
            next_by_subj: this.#subject,
          }),
          this.#signal,
        );
      } catch (error) {
        if (this.#signal.aborted) {
          return;
        }
        if (!isTransient(error)) {
          throw new DirectUnavailable('direct get refused', { cause: error });
        }
        // A busy server: ask again from the same place a moment later.
        this.#deps.logger.debug({ blob: this.#blob, err: error }, 'piece-hash direct get retried');
        await this.#sleep(RETRY_MS);
        continue;
      }
      if (stored === null) {
        return;
      }
      this.#seq = stored.seq;
      this.#seqReadAtMs = performance.now();
      this.#deliver(stored.data, 'stored');
    }
  }

  #deliver(data: Uint8Array, path: HashPath): void {
    const { metrics, logger } = this.#deps;
    const decoded = decodeMessage(pieceHashes, data);
    if (!decoded.ok) {
      const failed = decodeMessage(seedFailed, data);
      if (failed.ok && failed.value.blob === this.#blob) {
        metrics.eventsReceived.inc({ type: 'seed-failed' });
        this.#span?.addEvent('seed failed', {
          'shoal.seed': failed.value.seed,
          'shoal.reason': failed.value.reason,
          'shoal.path': path,
        });
        this.#onSeedFailed(failed.value);
        return;
      }
    }
    if (!decoded.ok || decoded.value.blob !== this.#blob) {
      metrics.eventsRejected.inc({ type: 'piece-hashes' });
      if (!decoded.ok) {
        logger.warn(
          { blob: this.#blob, error: decoded.error.slice(0, 512) },
          'invalid piece hashes dropped',
        );
      }
      return;
    }
    const batch = decoded.value;
    metrics.eventsReceived.inc({ type: 'piece-hashes' });
    metrics.pieceHashReads.inc({ path });
    this.#count ??= pieceCount(batch.size, batch.pieceSize);
    let added = false;
    for (let i = 0; i < batch.hashes.length; i++) {
      if (!this.#known.has(batch.first + i)) {
        this.#known.add(batch.first + i);
        added = true;
      }
    }
    if (!added) {
      return;
    }
    this.#progressAt = performance.now();
    this.#recheckMs = RECHECK_MS;
    this.#span?.addEvent('piece hashes received', {
      'shoal.first': batch.first,
      'shoal.count': batch.hashes.length,
      'shoal.path': path,
    });
    this.#onBatch(batch, path);
    if (this.#isDone()) {
      this.#wake?.();
    }
  }

  /** Waits `ms`, or less when a batch completes the hashes, a subscription fails or the signal aborts. */
  #sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, timerDelay(ms));
      this.#wake = done;
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
    }).then(() => {
      this.#wake = undefined;
    });
  }
}

/** A failure worth asking again: the server was too busy to answer in time. */
function isTransient(error: unknown): boolean {
  return (
    error instanceof TimeoutError ||
    (error instanceof RequestError && error.cause instanceof TimeoutError)
  );
}
