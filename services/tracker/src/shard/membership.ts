/**
 * Tracker replicas hear each other: each publishes a heartbeat on its own core-NATS subject
 * (`tracker-replica`) and follows the others', and the live set decides which replica owns
 * which blob (`ReplicaSet`). A replica announces itself only once its view is whole, so the
 * others never hand it blobs it cannot answer for yet; one that stops says so, and one that
 * dies drops out after a few missed heartbeats (or at once, when a forwarded want finds
 * nobody listening on its subject).
 */
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import {
  decodeMessage,
  encodeMessage,
  TRACKER_REPLICA_SUBJECTS,
  trackerReplica,
  trackerReplicaSubject,
} from '@shoal/proto';
import type { Logger } from '@shoal/runtime';

import { LogGate } from '../log-gate.js';
import type { TrackerMetrics } from '../metrics.js';
import type { BlobShard } from './shard.js';

/**
 * Missed heartbeats after which a replica counts as gone: generous, because a replica on a
 * starved machine beats late, and a dead one is found sooner anyway (a forwarded want finds
 * nobody listening; a stopped one does not answer and its wants are answered by others).
 */
export const HEARTBEATS_MISSED = 10;

export interface MembershipDeps {
  readonly nc: NatsConnection;
  readonly shard: BlobShard;
  /** Between two heartbeats, in ms. */
  readonly heartbeatMs: number;
  readonly metrics: TrackerMetrics;
  readonly logger: Logger;
  readonly now: () => number;
  /**
   * Called after blobs moved away (`BlobShard.rebalance`, `releaseBorrowed`): their askers
   * go to the new owners.
   */
  readonly onRebalance?: () => void;
}

export class ReplicaMembership {
  readonly #deps: MembershipDeps;
  #subscription: Subscription | undefined;
  #sweep: NodeJS.Timeout | undefined;
  #beat: NodeJS.Timeout | undefined;
  readonly #invalidLog = new LogGate(10_000);

  constructor(deps: MembershipDeps) {
    this.#deps = deps;
    deps.metrics.shardReplicas.set(deps.shard.replicas.members.length);
  }

  /** Follows the other replicas' heartbeats (before the replay, so the split is known). */
  listen(): void {
    const { nc, shard, heartbeatMs, metrics, logger, now } = this.#deps;
    this.#subscription = nc.subscribe(TRACKER_REPLICA_SUBJECTS, {
      callback: (error, msg) => {
        if (error !== null) {
          return;
        }
        const decoded = decodeMessage(trackerReplica, msg.data);
        if (!decoded.ok || msg.subject !== trackerReplicaSubject(decoded.value.id)) {
          const reason = decoded.ok ? 'subject-mismatch' : 'invalid';
          metrics.eventsRejected.inc({ type: 'tracker-replica', reason });
          // A misconfigured sender beats every interval: one line per 10 s says it.
          const held = this.#invalidLog.pass(now());
          if (held !== undefined) {
            logger.warn(
              { subject: msg.subject, reason, ...(held > 0 ? { alikeHeld: held } : {}) },
              'invalid tracker heartbeat skipped',
            );
          }
          return;
        }
        const { id, leaving } = decoded.value;
        this.#changed(leaving ? shard.replicas.drop(id) : shard.replicas.heard(id, now()));
      },
    });
    this.#sweep = setInterval(() => {
      this.#changed(shard.replicas.sweep(now()));
      // Borrowed blobs whose owner answers again (no want borrowed them for a while) go
      // back, with their askers; checked every beat, it costs a look at a few blobs.
      if (shard.releaseBorrowed(now()) > 0) {
        this.#deps.onRebalance?.();
      }
    }, heartbeatMs);
    this.#sweep.unref();
  }

  /** Starts beating: the other replicas give this one its share of the blobs. */
  announce(): void {
    this.#publish(false);
    this.#beat = setInterval(() => this.#publish(false), this.#deps.heartbeatMs);
    this.#beat.unref();
  }

  /** Takes `id` out of the live set until its next heartbeat (nobody answers for it). */
  drop(id: string): void {
    this.#changed(this.#deps.shard.replicas.drop(id));
  }

  /** Says this replica is leaving, so the others take its blobs now; stops following. */
  async leave(): Promise<void> {
    clearInterval(this.#beat);
    clearInterval(this.#sweep);
    if (this.#beat !== undefined) {
      this.#publish(true);
      // Its blobs go to the others now, and with them its waiting and followed askers
      // (forwarded after the leaving heartbeat, so the new owners know they own them).
      this.#deps.shard.replicas.leave();
      this.#deps.shard.rebalance();
      this.#deps.onRebalance?.();
      await this.#deps.nc.flush().catch(() => undefined);
    }
    this.#subscription?.unsubscribe();
  }

  #publish(leaving: boolean): void {
    const { nc, shard, logger } = this.#deps;
    const self = shard.replicas.self;
    try {
      nc.publish(
        trackerReplicaSubject(self),
        encodeMessage(trackerReplica, { type: 'tracker-replica', id: self, leaving }),
      );
    } catch (error) {
      // Only a closing connection refuses a publish; the next beat tries again.
      logger.debug({ err: error }, 'tracker heartbeat not published');
    }
  }

  #changed(changed: boolean): void {
    if (changed) {
      this.#deps.shard.rebalance();
      this.#deps.metrics.shardReplicas.set(this.#deps.shard.replicas.members.length);
      this.#deps.onRebalance?.();
    }
  }
}
