/**
 * Tracker replicas hear each other: each publishes a heartbeat on its own core-NATS subject
 * (`tracker-replica`) and follows the others', and the live set decides which replica owns
 * which blob (`ReplicaSet`). A replica announces itself only once its view is whole, so the
 * others never hand it blobs it cannot answer for yet; one that stops says so, and one that
 * dies drops out after a few missed heartbeats (or at once, when a forwarded want finds
 * nobody listening on its subject).
 */
import {
  headers as natsHeaders,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
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

/**
 * Header of a heartbeat: when it was sent, in ms since the epoch on its replica's clock. A
 * header, not a field, so that replicas of an older version still read the heartbeat.
 */
const SENT_HEADER = 'Shoal-Sent-Ms';
/**
 * Clocks further apart than this are worth an operator's look (a forwarded want's deadline
 * is translated, but hand-out latencies and logs of different replicas no longer line up).
 */
const CLOCK_WARN_MS = 500;

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
  readonly #clockLog = new LogGate(60_000);
  /** Replicas in the clock offset gauge. */
  readonly #shown = new Set<string>();

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
        if (leaving) {
          this.#changed(shard.replicas.drop(id));
          this.#unshow(id);
          return;
        }
        const sentMs = Number(msg.headers?.get(SENT_HEADER));
        const nowMs = now();
        this.#changed(
          shard.replicas.heard(
            id,
            nowMs,
            Number.isFinite(sentMs) && sentMs > 0 ? sentMs : undefined,
          ),
        );
        this.#clockHeard(id, nowMs);
      },
    });
    this.#sweep = setInterval(() => {
      this.#changed(shard.replicas.sweep(now()));
      this.#clocksForgotten();
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
    this.#unshow(id);
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
    const { nc, shard, logger, now } = this.#deps;
    const self = shard.replicas.self;
    const headers = natsHeaders();
    headers.set(SENT_HEADER, String(now()));
    try {
      nc.publish(
        trackerReplicaSubject(self),
        encodeMessage(trackerReplica, { type: 'tracker-replica', id: self, leaving }),
        { headers },
      );
    } catch (error) {
      // Only a closing connection refuses a publish; the next beat tries again.
      logger.debug({ err: error }, 'tracker heartbeat not published');
    }
  }

  /** Shows how far `id`'s clock is from this one's, and says so when it is far. */
  #clockHeard(id: string, nowMs: number): void {
    const { shard, metrics, logger } = this.#deps;
    const offsetMs = shard.replicas.clocks.offsetMs(id);
    if (offsetMs === undefined) {
      return;
    }
    metrics.replicaClockOffset.set({ replica: id }, offsetMs / 1000);
    this.#shown.add(id);
    if (Math.abs(offsetMs) > CLOCK_WARN_MS) {
      const held = this.#clockLog.pass(nowMs);
      if (held !== undefined) {
        logger.warn(
          { replica: id, offsetMs, ...(held > 0 ? { alikeHeld: held } : {}) },
          "a tracker replica's clock is far from this one's; forwarded wants' deadlines are read on its clock (keep the clocks in sync)",
        );
      }
    }
  }

  /** The gauge loses the replicas that left the live set. */
  #clocksForgotten(): void {
    const live = new Set(this.#deps.shard.replicas.members);
    for (const id of this.#shown) {
      if (!live.has(id)) {
        this.#unshow(id);
      }
    }
  }

  #unshow(id: string): void {
    this.#deps.metrics.replicaClockOffset.remove({ replica: id });
    this.#shown.delete(id);
  }

  #changed(changed: boolean): void {
    if (changed) {
      this.#deps.shard.rebalance();
      this.#deps.metrics.shardReplicas.set(this.#deps.shard.replicas.members.length);
      this.#deps.onRebalance?.();
    }
  }
}
