/**
 * While a blob streams in, tells the agents following it that bytes keep coming when no
 * piece has landed for a while (`seed-intake` in `@shoal/proto`): an agent holding every piece
 * the seed has hashed hears nothing else, and a silence as long as its stall timeout sends it
 * to the origin, onto the link the seed is reading through. Every `intervalMs` it looks: if no
 * piece landed since the last look and the received count grew, one notice goes out (core
 * NATS, not stored). An intake whose pieces land more often than that sends none.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { encodeUnchecked, seedIntake, seedIntakeSubject } from '@shoal/proto';
import type { Logger } from '@shoal/runtime';
import type { Counter } from 'prom-client';

import type { SeedBlob } from './seed-blob.js';

export interface IntakeNoticeDeps {
  readonly nc: Pick<NatsConnection, 'publish'>;
  /** This seed server's peer id. */
  readonly seed: string;
  readonly notices: Counter;
  readonly logger: Logger;
  /**
   * How often the intake is looked at, in ms (`SHOAL_SEED_INTAKE_NOTICE_MS`): well inside the
   * agents' stall timeout, so one lost notice does not cost a download its place.
   */
  readonly intervalMs: number;
}

export class IntakeNotices {
  readonly #deps: IntakeNoticeDeps;
  readonly #blob: SeedBlob;
  readonly #received: () => number;
  readonly #timer: NodeJS.Timeout;
  #lastReady: number;
  #lastReceived: number;

  /** Starts looking at once; `received`: the blob's bytes taken in so far. */
  constructor(deps: IntakeNoticeDeps, blob: SeedBlob, received: () => number) {
    this.#deps = deps;
    this.#blob = blob;
    this.#received = received;
    this.#lastReady = blob.ready;
    this.#lastReceived = received();
    this.#timer = setInterval(() => this.#look(), deps.intervalMs);
    // A seed run ends with its own work; these looks never keep the process up.
    this.#timer.unref();
  }

  /** The intake ended (verified or failed): no more notices. */
  stop(): void {
    clearInterval(this.#timer);
  }

  #look(): void {
    const blob = this.#blob;
    const ready = blob.ready;
    const received = this.#received();
    const grew = received > this.#lastReceived;
    const landed = ready !== this.#lastReady;
    this.#lastReady = ready;
    this.#lastReceived = received;
    if (!grew || landed) {
      // Nothing came (agents are right to wait toward their stall timeout), or pieces landed
      // and their hashes told the agents already.
      return;
    }
    const digest = blob.digest.toString();
    try {
      this.#deps.nc.publish(
        seedIntakeSubject(digest),
        // Made of this process's own values: the blob's digest and size, checked before the
        // ingest, and its own count of bytes received (at most the size).
        encodeUnchecked(seedIntake, {
          type: 'seed-intake',
          blob: digest,
          seed: this.#deps.seed,
          size: blob.size,
          received,
        }),
      );
      this.#deps.notices.inc();
    } catch (error) {
      // NATS closed or away: the next look tries again; agents meanwhile see a silence.
      this.#deps.logger.debug({ blob: digest, err: error }, 'intake notice not sent');
    }
  }
}
