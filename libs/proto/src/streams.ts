/**
 * Every JetStream stream and KV bucket Shoal uses. Each is created idempotently at start-up
 * by the service named as its owner; others only bind to it.
 */

/** Retention as JetStream names it: `limits` keeps by age/size, `workqueue` deletes on ack. */
export type Retention = 'limits' | 'workqueue';

/** A stream declaration, independent of the NATS client's types. */
export interface StreamSpec {
  readonly name: string;
  readonly subjects: readonly string[];
  readonly retention: Retention;
  /** Age after which messages are dropped, in milliseconds; 0 keeps them. */
  readonly maxAgeMs: number;
  /** Window in which a repeated message id is dropped, in milliseconds. */
  readonly duplicateWindowMs: number;
  /** Messages kept per subject (-1: no limit). 1 keeps only each subject's latest state. */
  readonly maxMsgsPerSubject: number;
  readonly owner: 'agent' | 'tracker' | 'seedserver' | 'watcher';
  readonly description: string;
}

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;

export const STREAMS = {
  swarm: {
    name: 'SHOAL_SWARM',
    subjects: ['shoal.swarm.v1.have.>', 'shoal.swarm.v1.gone.>'],
    retention: 'limits',
    maxAgeMs: 2 * HOUR_MS,
    duplicateWindowMs: 2 * MINUTE_MS,
    maxMsgsPerSubject: 1,
    owner: 'tracker',
    description:
      'latest piece-have per (blob, peer) and peer-gone per peer; a tracker rebuilds its view by replaying it',
  },
  wants: {
    name: 'SHOAL_WANTS',
    subjects: ['shoal.swarm.v1.want.>'],
    retention: 'workqueue',
    maxAgeMs: 2 * MINUTE_MS,
    duplicateWindowMs: MINUTE_MS,
    maxMsgsPerSubject: -1,
    owner: 'tracker',
    description: 'piece-want events, each answered by one tracker replica',
  },
  pieces: {
    name: 'SHOAL_PIECES',
    subjects: ['shoal.pieces.v1.>'],
    retention: 'limits',
    maxAgeMs: 24 * HOUR_MS,
    duplicateWindowMs: 2 * MINUTE_MS,
    maxMsgsPerSubject: -1,
    owner: 'seedserver',
    description: 'piece hashes published by the seed server',
  },
  seed: {
    name: 'SHOAL_SEED',
    subjects: ['shoal.seed.v1.>'],
    retention: 'workqueue',
    maxAgeMs: HOUR_MS,
    duplicateWindowMs: 2 * MINUTE_MS,
    maxMsgsPerSubject: -1,
    owner: 'seedserver',
    description: 'seed requests, one consumer group of seed-server replicas',
  },
  preheat: {
    name: 'SHOAL_PREHEAT',
    subjects: ['shoal.preheat.v1.command'],
    retention: 'workqueue',
    maxAgeMs: 24 * HOUR_MS,
    duplicateWindowMs: 10 * MINUTE_MS,
    maxMsgsPerSubject: -1,
    owner: 'watcher',
    description: 'preheat commands; a restart loses none',
  },
  preheatEvents: {
    name: 'SHOAL_PREHEAT_EVENTS',
    subjects: ['shoal.preheat.v1.progress.>', 'shoal.preheat.v1.report.>'],
    retention: 'limits',
    maxAgeMs: 7 * 24 * HOUR_MS,
    duplicateWindowMs: 2 * MINUTE_MS,
    maxMsgsPerSubject: -1,
    owner: 'watcher',
    description: 'preheat progress events, and the per-blob reports of seeds and agents',
  },
  preheatNodes: {
    name: 'SHOAL_PREHEAT_NODES',
    subjects: ['shoal.preheat.v1.nodes'],
    retention: 'limits',
    maxAgeMs: 24 * HOUR_MS,
    duplicateWindowMs: 10 * MINUTE_MS,
    maxMsgsPerSubject: -1,
    owner: 'watcher',
    description: 'node preheat tasks; every agent reads them with its own durable consumer',
  },
} as const satisfies Record<string, StreamSpec>;

/** A KV bucket declaration. */
export interface KvSpec {
  readonly bucket: string;
  /** Entries expire after this long, in milliseconds; 0 keeps them. Locks rely on it. */
  readonly ttlMs: number;
  readonly owner: StreamSpec['owner'];
  readonly description: string;
}

export const KV_BUCKETS = {
  seedLocks: {
    bucket: 'shoal_seed_locks',
    ttlMs: MINUTE_MS,
    owner: 'seedserver',
    description: 'one origin fetch per blob across seed-server replicas',
  },
  watcherLeader: {
    bucket: 'shoal_watcher_leader',
    ttlMs: 30_000,
    owner: 'watcher',
    description: 'which watcher replica runs scheduled preheat',
  },
  preheatJobs: {
    bucket: 'shoal_preheat_jobs',
    ttlMs: 7 * 24 * HOUR_MS,
    owner: 'watcher',
    description: 'preheat job status by id',
  },
  agents: {
    bucket: 'shoal_agents',
    ttlMs: 30_000,
    owner: 'agent',
    description: 'live agents and their labels, refreshed by each agent; read by the watcher',
  },
} as const satisfies Record<string, KvSpec>;
