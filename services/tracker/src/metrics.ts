/** The tracker's Prometheus metrics, `shoal_tracker_<thing>_<unit>`. */
import type { ServiceMetrics } from '@shoal/runtime';
import { Counter, Gauge, Histogram } from 'prom-client';

import type { SwarmView } from './swarm/view.js';

export type TrackerMetrics = ReturnType<typeof createTrackerMetrics>;

/** Event types the tracker consumes, as metric labels. */
export type EventType = 'piece-have' | 'peer-gone' | 'piece-want';

/** Why an event was refused, as metric labels. */
export type RejectReason = 'invalid' | 'subject-mismatch' | 'unknown-subject';

/** Registers the tracker's metrics; the swarm gauges read `view` when scraped. */
export function createTrackerMetrics({ registry, prefix }: ServiceMetrics, view: SwarmView) {
  const registers = [registry];
  return {
    eventsConsumed: new Counter<'type'>({
      name: `${prefix}events_consumed_total`,
      help: 'Valid events consumed, by type (piece-have, peer-gone, piece-want)',
      labelNames: ['type'],
      registers,
    }),
    eventsRejected: new Counter<'type' | 'reason'>({
      name: `${prefix}events_rejected_total`,
      help: 'Events refused, by type and reason (invalid, subject-mismatch, unknown-subject, not-a-seed)',
      labelNames: ['type', 'reason'],
      registers,
    }),
    haveOutcomes: new Counter<'outcome'>({
      name: `${prefix}swarm_haves_total`,
      help: 'Piece-have events applied to the view, by outcome (applied, superseded, peer-gone, expired, withdrawn: the peer holds nothing of the blob any more)',
      labelNames: ['outcome'],
      registers,
    }),
    swarmBlobs: new Gauge({
      name: `${prefix}swarm_blobs`,
      help: 'Blobs tracked in the swarm view',
      registers,
      collect() {
        this.set(view.blobCount);
      },
    }),
    swarmPeers: new Gauge({
      name: `${prefix}swarm_peers`,
      help: 'Distinct peers in the swarm view',
      registers,
      collect() {
        this.set(view.peerCount);
      },
    }),
    swarmEntries: new Gauge({
      name: `${prefix}swarm_entries`,
      help: '(blob, peer) entries in the swarm view',
      registers,
      collect() {
        this.set(view.entryCount);
      },
    }),
    swarmEvicted: new Counter({
      name: `${prefix}swarm_evicted_total`,
      help: 'Entries and peer departures dropped from the swarm view because it held SHOAL_TRACKER_MAX_ENTRIES (the stalest first)',
      registers,
      collect() {
        this.reset();
        this.inc(view.evictedCount);
      },
    }),
    swarmSequence: new Gauge({
      name: `${prefix}swarm_stream_sequence`,
      help: 'Last SHOAL_SWARM stream sequence applied to the view',
      registers,
      collect() {
        this.set(view.lastSeq);
      },
    }),
    swarmSize: new Histogram({
      name: `${prefix}swarm_size_peers`,
      help: 'Peers in the wanted blob’s swarm (expired ones the sweep has not removed yet included), observed for every want answered; a want looks at a sample of them',
      buckets: [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
      registers,
    }),
    handouts: new Counter({
      name: `${prefix}handouts_total`,
      help: 'Hand-outs published',
      registers,
    }),
    handoutsPushed: new Counter({
      name: `${prefix}handouts_pushed_total`,
      help: 'Hand-outs sent without a want: to askers told of no holder, when a holder appeared (reason holder), and to askers whose have showed progress (reason progress)',
      labelNames: ['reason'] as const,
      registers,
    }),
    handoutPeers: new Histogram({
      name: `${prefix}handout_peers`,
      help: 'Peers listed per hand-out',
      buckets: [0, 1, 2, 4, 8, 16, 32, 64],
      registers,
    }),
    handoutLatency: new Histogram({
      name: `${prefix}handout_latency_seconds`,
      help: 'Time from a want’s publication (JetStream timestamp) to its hand-out',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    }),
    wantsCoalesced: new Counter({
      name: `${prefix}wants_coalesced_total`,
      help: 'Wants replaced, before they were answered, by a newer want of the same asker for the same blob (acknowledged unanswered; the newer one’s hand-out answers both)',
      registers,
    }),
    wantQueue: new Gauge({
      name: `${prefix}want_queue_wants`,
      help: 'Wants pulled by this replica and waiting for their answer (at most one per blob and asker)',
      registers,
    }),
    shardReplicas: new Gauge({
      name: `${prefix}shard_replicas`,
      help: 'Live tracker replicas this one hears, itself included; blobs are split between them',
      registers,
    }),
    replicaClockOffset: new Gauge({
      name: `${prefix}replica_clock_offset_seconds`,
      help: "How far this replica's clock is ahead of another live replica's, from their heartbeats (forwarded wants' deadlines are read through it)",
      labelNames: ['replica'],
      registers,
    }),
    shardChanges: new Counter({
      name: `${prefix}shard_changes_total`,
      help: 'Changes of the live replica set (a replica joined, left or stopped answering), each moving some blobs between replicas',
      registers,
    }),
    havesSkipped: new Counter({
      name: `${prefix}haves_skipped_total`,
      help: 'Piece-have events of blobs another replica owns: kept undecoded, not applied',
      registers,
    }),
    keptHaves: new Gauge({
      name: `${prefix}kept_haves`,
      help: 'Haves of blobs another replica owns, kept undecoded to take those blobs over at once (SHOAL_TRACKER_MAX_KEPT_HAVES at most)',
      registers,
    }),
    keptHavesEvicted: new Counter({
      name: `${prefix}kept_haves_evicted_total`,
      help: 'Kept haves dropped because SHOAL_TRACKER_MAX_KEPT_HAVES were held (the stalest first)',
      registers,
    }),
    blobsAdopted: new Counter({
      name: `${prefix}shard_blobs_adopted_total`,
      help: 'Blobs taken over from another replica, their kept haves applied to the view',
      registers,
    }),
    wantsForwarded: new Counter<'outcome'>({
      name: `${prefix}wants_forwarded_total`,
      help: 'Wants pulled for a blob another replica owns and forwarded to it, by outcome (answered, retry, not-owner, no-responders, failed: the last three are answered here or delivered again)',
      labelNames: ['outcome'],
      registers,
    }),
    forwardedWantsExpired: new Counter<'stage'>({
      name: `${prefix}forwarded_wants_expired_total`,
      help: 'Wants forwarded to this replica dropped unanswered because the forwarding replica had stopped waiting for the answer, by where their deadline passed (arrival, queue, seed-request)',
      labelNames: ['stage'],
      registers,
    }),
    blobsBorrowed: new Counter({
      name: `${prefix}shard_blobs_borrowed_total`,
      help: 'Wants answered for a blob another replica owns because that owner did not answer the forward in time or refused it',
      registers,
    }),
    askersHandedOver: new Counter<'outcome'>({
      name: `${prefix}askers_handed_over_total`,
      help: 'Waiting or followed askers of blobs that moved to another replica, their latest want forwarded to the new owner, by outcome (answered, retry, not-owner, no-responders, failed)',
      labelNames: ['outcome'],
      registers,
    }),
    seedRequests: new Counter<'outcome'>({
      name: `${prefix}seed_requests_total`,
      help: 'Seed requests for wants nobody could finish, by outcome (published, duplicate, no-stream, failed)',
      labelNames: ['outcome'],
      registers,
    }),
  };
}
