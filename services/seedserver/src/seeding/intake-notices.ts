/**
 * While a blob comes in, tells the agents following it that the seed server is still at it
 * when nothing else would (`seed-intake` in `@shoal/proto`): an agent holding every piece the
 * seed has hashed hears nothing else, and a silence as long as its stall timeout sends it to
 * the origin, onto the link the seed is reading through. Every `intervalMs` it looks:
 *
 * - before the blob's first byte (the origin or the object gateway has not answered, or has
 *   sent headers and no body yet), a notice says how long the seed has waited: an origin
 *   slow to answer (a registry fetching the blob from its own storage first, a slow token
 *   service) would otherwise send every agent to it after their stall timeout, beside the seed;
 * - after it, a notice goes out when bytes came since the last look and no piece landed
 *   meanwhile (the piece hashes told the agents then). An intake whose pieces land more often
 *   than that sends none;
 * - while the seed asks its source again for the rest of a transfer that broke off (`resuming`:
 *   the origin's transfer cut, the object gateway's read given up for the origin), and no byte
 *   has come since, a notice says how long it has waited on that, with the bytes it holds.
 *
 * Core NATS, not stored. A wait is told of up to `SEED_WAIT_NOTICE_MAX_MS`: the seed's own
 * connect and header timeouts usually fail it before (and it says so, `seed-failed`), but a
 * token round trip, a redirect or a body that does not start can take longer, and its agents
 * then go to the origin after their stall timeout, as before there were notices.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import {
  encodeUnchecked,
  SEED_WAIT_NOTICE_MAX_MS,
  seedIntake,
  seedIntakeSubject,
} from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import type { Counter } from 'prom-client';

import type { SeedBlob } from './seed-blob.js';

export interface IntakeNoticeDeps {
  readonly nc: Pick<NatsConnection, 'publish'>;
  /** This seed server's peer id. */
  readonly seed: string;
  /** Notices sent, by what the seed was doing (`while`: waiting, receiving). */
  readonly notices: Counter<'while'>;
  readonly logger: Logger;
  /**
   * How often the intake is looked at, in ms (`SHOAL_SEED_INTAKE_NOTICE_MS`): well inside the
   * agents' stall timeout, so one lost notice does not cost a download its place.
   */
  readonly intervalMs: number;
  /** A monotonic clock, in ms (default `performance.now`; tests drive it). */
  readonly now?: () => number;
}

/** The blob being taken in, once its source answered. */
interface Intake {
  readonly blob: SeedBlob;
  /** The blob's bytes taken in so far. */
  readonly received: () => number;
}

export class IntakeNotices {
  readonly #deps: IntakeNoticeDeps;
  readonly #digest: string;
  readonly #now: () => number;
  /** When the seed asked its source for the blob (ms). */
  readonly #askedAt: number;
  readonly #timer: NodeJS.Timeout;
  #intake: Intake | undefined;
  #lastReady = 0;
  #lastReceived = 0;
  /**
   * The byte a broken transfer is asked again from, and since when (ms), until one comes;
   * `unreachable` once a request for it could not reach the source.
   */
  #resume: { readonly at: number; readonly since: number; unreachable: boolean } | undefined;

  /** Starts looking at once, the seed waiting on its source for the blob `digest`. */
  constructor(deps: IntakeNoticeDeps, digest: string) {
    this.#deps = deps;
    this.#digest = digest;
    this.#now = deps.now ?? (() => performance.now());
    this.#askedAt = this.#now();
    this.#timer = setInterval(() => this.#look(), deps.intervalMs);
    // A seed run ends with its own work; these looks never keep the process up.
    this.#timer.unref();
  }

  /** The source answered: from here on, `blob` takes in `received()` bytes. */
  follow(blob: SeedBlob, received: () => number): void {
    this.#intake = { blob, received };
    this.#lastReady = blob.ready;
    this.#lastReceived = received();
  }

  /**
   * The transfer broke off at byte `at` and the seed asks its source again from there: the
   * agents hear of it at once (the seed may have been silent up to its source's idle timeout
   * already, most of their stall timeout), and until a byte past it comes, the looks tell of
   * that wait. Asked again from the same byte (a resume request that failed), the wait goes on
   * from its start; `unreachable`: the last request for it could not reach the source
   * (refused, no route, no connection in time), and until one does, the agents hear no more
   * of the wait: a registry that vanished is theirs to find out about at their stall timeout,
   * as before there were notices, rather than after every resume request the seed makes.
   */
  resuming(at: number, unreachable = false): void {
    if (this.#resume?.at === at) {
      this.#resume.unreachable = unreachable;
      return;
    }
    this.#resume = { at, since: this.#now(), unreachable };
    if (this.#intake !== undefined && !unreachable) {
      this.#tellWait(this.#resume.since, this.#intake.received());
    }
  }

  /** The intake ended (verified or failed): no more notices. */
  stop(): void {
    clearInterval(this.#timer);
  }

  #look(): void {
    const intake = this.#intake;
    const received = intake?.received() ?? 0;
    if (received === 0) {
      // No byte yet: the agents hear how long the seed has waited on its source, up to the
      // longest wait they count (unless a request for it could not reach the source).
      if (this.#resume?.unreachable !== true) {
        this.#tellWait(this.#askedAt, received);
      }
      return;
    }
    if (this.#resume !== undefined && received > this.#resume.at) {
      // Bytes past the break: the transfer goes on.
      this.#resume = undefined;
    }
    const ready = intake?.blob.ready ?? 0;
    const grew = received > this.#lastReceived;
    const landed = ready !== this.#lastReady;
    this.#lastReady = ready;
    this.#lastReceived = received;
    if (this.#resume !== undefined && !grew) {
      // Asking the source again for the rest: the agents hear how long, as before the first
      // byte (unless the source could not be reached).
      if (!this.#resume.unreachable) {
        this.#tellWait(this.#resume.since, received);
      }
      return;
    }
    if (intake === undefined || !grew || landed) {
      // Nothing came (agents are right to wait toward their stall timeout), or pieces landed
      // and their hashes told the agents already.
      return;
    }
    this.#publish('receiving', { size: intake.blob.size, received });
  }

  /** A notice of the wait since `since` (ms), with `received` bytes held, up to the cap. */
  #tellWait(since: number, received: number): void {
    const waitingMs = Math.max(0, Math.round(this.#now() - since));
    if (waitingMs <= SEED_WAIT_NOTICE_MAX_MS) {
      const size = this.#intake?.blob.size;
      this.#publish('waiting', { ...(size === undefined ? {} : { size }), received, waitingMs });
    }
  }

  #publish(
    doing: 'waiting' | 'receiving',
    state: { readonly size?: number; readonly received: number; readonly waitingMs?: number },
  ): void {
    const digest = this.#digest;
    try {
      this.#deps.nc.publish(
        seedIntakeSubject(digest),
        // Made of this process's own values: the blob's digest and size, checked before the
        // ingest, its own count of bytes received (at most the size) and its own clock.
        encodeUnchecked(seedIntake, {
          type: 'seed-intake',
          blob: digest,
          seed: this.#deps.seed,
          ...state,
        }),
      );
      this.#deps.notices.inc({ while: doing });
    } catch (error) {
      // NATS closed or away: the next look tries again; agents meanwhile see a silence.
      this.#deps.logger.debug({ blob: digest, err: error }, 'intake notice not sent');
    }
  }
}
