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
  /**
   * Bytes the stream may hold; past it the oldest messages go. Sized for 10,000 nodes (see
   * the README's "JetStream limits"); with R3 every server holds a copy.
   */
  readonly maxBytes: number;
  /** Messages the stream may hold; past it the oldest go. */
  readonly maxMsgs: number;
  /** Largest message the server accepts on the stream's subjects, in bytes. */
  readonly maxMsgSize: number;
  /**
   * Consumers the stream may have (-1: no limit). Applied when the stream is created; JetStream
   * does not change it on an existing stream.
   */
  readonly maxConsumers: number;
  /**
   * Whether any server holding the stream answers JetStream direct gets
   * (`$JS.API.DIRECT.GET.<stream>`, nats-server 2.9 and later): reads of single messages by
   * sequence or subject without a consumer. Changed on an existing stream at start-up.
   */
  readonly allowDirect?: boolean;
  /** The trusted service that declares it; never an agent (agents only bind). */
  readonly owner: 'tracker' | 'seedserver' | 'watcher';
  readonly description: string;
}

const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

export const STREAMS = {
  swarm: {
    name: 'SHOAL_SWARM',
    subjects: ['shoal.swarm.v1.have.>', 'shoal.swarm.v1.gone.>'],
    retention: 'limits',
    maxAgeMs: 2 * HOUR_MS,
    duplicateWindowMs: 2 * MINUTE_MS,
    maxMsgsPerSubject: 1,
    // One have per (blob, peer): 10,000 nodes x ~100 blobs each, a few hundred bytes apiece.
    maxBytes: 2 * GiB,
    maxMsgs: 4_000_000,
    maxMsgSize: 128 * KiB,
    maxConsumers: 64,
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
    // Wants live seconds: one per blob in progress per node per want interval.
    maxBytes: 256 * MiB,
    maxMsgs: 1_000_000,
    maxMsgSize: 128 * KiB,
    maxConsumers: 16,
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
    // A blob's hashes are ~70 bytes per piece: a day of 10,000 distinct 1 GiB blobs fits.
    maxBytes: 1 * GiB,
    maxMsgs: 1_000_000,
    maxMsgSize: 128 * KiB,
    // Agents read a blob's stored hashes with direct gets (and hear new ones on the subject
    // while the seed still hashes): no consumer per download. Agents of before direct gets
    // open a consumer of their own per blob, hence no limit.
    maxConsumers: -1,
    allowDirect: true,
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
    maxBytes: 64 * MiB,
    maxMsgs: 100_000,
    maxMsgSize: 16 * KiB,
    maxConsumers: 16,
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
    maxBytes: 64 * MiB,
    maxMsgs: 100_000,
    maxMsgSize: 16 * KiB,
    maxConsumers: 16,
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
    maxBytes: 512 * MiB,
    maxMsgs: 2_000_000,
    maxMsgSize: 64 * KiB,
    maxConsumers: 1_000,
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
    maxBytes: 64 * MiB,
    maxMsgs: 100_000,
    maxMsgSize: 512 * KiB,
    // One durable consumer per agent.
    maxConsumers: 20_000,
    owner: 'watcher',
    description: 'node preheat tasks; every agent reads them with its own durable consumer',
  },
} as const satisfies Record<string, StreamSpec>;

/** A KV bucket declaration. */
export interface KvSpec {
  readonly bucket: string;
  /** Entries expire after this long, in milliseconds; 0 keeps them. Locks rely on it. */
  readonly ttlMs: number;
  /** Bytes the bucket may hold. */
  readonly maxBytes: number;
  /** Largest value accepted, in bytes. */
  readonly maxValueSize: number;
  readonly owner: StreamSpec['owner'];
  readonly description: string;
  /**
   * False for a bucket many writers share: a `Nats-Rollup: all` header on one writer's put
   * would purge every other writer's entry, so the server must refuse it.
   */
  readonly allowRollup?: false;
}

export const KV_BUCKETS = {
  seedLocks: {
    bucket: 'shoal_seed_locks',
    ttlMs: MINUTE_MS,
    maxBytes: 64 * MiB,
    maxValueSize: 1 * KiB,
    owner: 'seedserver',
    description: 'one origin fetch per blob across seed-server replicas',
  },
  watcherLeader: {
    bucket: 'shoal_watcher_leader',
    ttlMs: 30_000,
    maxBytes: 1 * MiB,
    maxValueSize: 1 * KiB,
    owner: 'watcher',
    description: 'which watcher replica runs scheduled preheat',
  },
  preheatJobs: {
    bucket: 'shoal_preheat_jobs',
    ttlMs: 7 * 24 * HOUR_MS,
    maxBytes: 256 * MiB,
    maxValueSize: 64 * KiB,
    owner: 'watcher',
    description: 'preheat job status by id',
  },
  agents: {
    bucket: 'shoal_agents',
    ttlMs: 30_000,
    // One small entry per live agent.
    maxBytes: 64 * MiB,
    maxValueSize: 4 * KiB,
    // Declared by the watcher, never by agents: whoever creates a stream chooses its subjects
    // and republish rules, so an agent allowed to create it could have its puts republished
    // onto subjects it may not publish to (piece hashes, other peers' events).
    owner: 'watcher',
    // Every agent writes here: one agent's rollup put would purge all other agents' entries.
    allowRollup: false,
    description:
      'live agents and their labels, refreshed by each agent; declared and read by the watcher',
  },
} as const satisfies Record<string, KvSpec>;
