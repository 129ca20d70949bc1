/**
 * What the simulator's worker processes and its main process tell each other, and the small
 * arithmetic on the figures (percentiles, sums) and on piece sets. Pure: no NATS, no processes.
 */
import type { PieceRanges } from '@shoal/proto';

/** A message count and the payload bytes those messages carried. */
export interface Tally {
  msgs: number;
  bytes: number;
}

/** Message kinds a virtual agent publishes. */
export const PUBLISHED_KINDS = ['piece-want', 'piece-have', 'peer-gone', 'presence'] as const;
/** Message kinds a virtual agent receives. */
export const RECEIVED_KINDS = ['handout', 'piece-hashes', 'puback', 'preheat-task'] as const;

export type PublishedKind = (typeof PUBLISHED_KINDS)[number];
export type ReceivedKind = (typeof RECEIVED_KINDS)[number];

/** One blob the swarm downloads. */
export interface SimBlob {
  readonly digest: string;
  readonly pieces: number;
}

/** What a worker process needs to run its share of the virtual agents. */
/** How virtual agents read piece hashes (see `WorkerConfig.hashReads`). */
export type HashReads = 'consumer' | 'direct';
/**
 * When virtual agents publish wants and haves: `paced` as the agent does (`@shoal/proto`'s
 * `WantPacer` and `haveDue`), `fixed` as agents did before (every interval, for the whole
 * download).
 */
export type Pacing = 'paced' | 'fixed';

export interface WorkerConfig {
  /** Position of this worker among all of them (0-based). */
  readonly worker: number;
  readonly workers: number;
  /** NATS client URLs this worker connects to (its connections take them in turn). */
  readonly natsUrls: readonly string[];
  /** NATS connections this worker opens; its agents are spread over them. */
  readonly connections: number;
  /** Prefix of the connections' names, so the server's /connz can pick them out. */
  readonly connectionName: string;
  /** Global indexes `[first, end)` of the agents this worker runs. */
  readonly firstAgent: number;
  readonly endAgent: number;
  readonly totalAgents: number;
  readonly blobs: readonly SimBlob[];
  readonly registry: string;
  readonly repository: string;
  /** Pieces per second one agent downloads, over all its blobs together. */
  readonly downloadPiecesPerS: number;
  /** Pieces per second one agent uploads to all askers together. */
  readonly uploadPiecesPerS: number;
  /** Pieces per second the seed server uploads to the whole swarm. */
  readonly seedPiecesPerS: number;
  /** The agent's want interval (`SHOAL_AGENT_WANT_INTERVAL_MS`), in ms. */
  readonly wantIntervalMs: number;
  /** The agent's have batching interval (`SHOAL_AGENT_HAVE_INTERVAL_MS`), in ms. */
  readonly haveIntervalMs: number;
  /** The agent's stall timeout (`SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS`), in ms; 0: never. */
  readonly stallTimeoutMs: number;
  /** Peers asked for per want (the agent asks for 16). */
  readonly wantLimit: number;
  /** Agents join evenly over this long after the common start, in ms. */
  readonly rampMs: number;
  /** Fraction of agents that leave (peer-gone) mid-download and rejoin from scratch. */
  readonly churn: number;
  /** True: each agent also holds its preheat durable consumer and refreshes its presence. */
  readonly preheat: boolean;
  /**
   * How an agent reads a blob's piece hashes: `consumer`, a JetStream consumer per download
   * (as the agent does); `direct`, a core subscription to the blob's hash subject plus direct
   * gets of the stored batches (`next_by_subj`), with no consumer.
   */
  readonly hashReads: HashReads;
  /** When wants and haves go out (see `Pacing`). */
  readonly pacing: Pacing;
  /** How often an agent refreshes its presence entry, in ms (the agent's default is 10 000). */
  readonly presenceIntervalMs: number;
}

/** Main process to worker. */
export type ToWorker =
  | { readonly type: 'start'; readonly config: WorkerConfig }
  | { readonly type: 'go'; readonly startAt: number }
  | { readonly type: 'finish'; readonly graceMs: number };

/** Worker to main process. */
export type FromWorker =
  | { readonly type: 'ready' }
  | { readonly type: 'progress'; readonly done: number; readonly of: number }
  | { readonly type: 'report'; readonly report: WorkerReport }
  | { readonly type: 'failed'; readonly error: string };

/** Everything a worker measured, sent once at the end. */
export interface WorkerReport {
  readonly published: Record<PublishedKind, Tally>;
  readonly received: Record<ReceivedKind, Tally>;
  /** Want publish to the next hand-out for its blob, in ms, one per answered want. */
  readonly latenciesMs: number[];
  readonly wants: number;
  /** Wants whose publish JetStream did not acknowledge. */
  readonly wantPublishFailures: number;
  /**
   * Hand-outs that arrived with no want of their blob outstanding: the answer to a want an
   * earlier hand-out already answered (wants queued first-in first-out each get one), a want
   * answered twice (a replica died between hand-out and ack), or one whose publish timed out
   * but was stored.
   */
  readonly extraHandouts: number;
  /** Wants answered by the same hand-out as an earlier want of the same agent and blob. */
  readonly answeredTogether: number;
  /** Wants still without a hand-out when the worker finished: lost. */
  readonly unanswered: number;
  /** Agent-blob downloads that reached every piece. */
  readonly completed: number;
  /** Agent-blob downloads started (a churned agent starts its blobs again). */
  readonly started: number;
  /** Join (or rejoin) to last piece, in ms, per completed agent-blob download. */
  readonly downloadMs: number[];
  /** Latest completion, in ms since the epoch (0: none). */
  readonly lastCompletionAt: number;
  /** Agents that left and rejoined. */
  readonly churned: number;
  /** Piece-hash consumers opened (one per agent-blob download, as the agent does). */
  readonly hashConsumers: number;
  /** Downloads that stalled and read the rest from the origin. */
  readonly fallbacks: number;
  /** Pieces those downloads read from the origin. */
  readonly originPieces: number;
  /** The worker's own CPU time over its life (user + system), in seconds. */
  readonly cpuS: number;
  /** Gaps between its scheduling rounds (planned every 100 ms) while downloads ran: sum, count. */
  readonly tickGapSumMs: number;
  readonly tickGaps: number;
  /** Errors by kind, with a count (e.g. a consumer that could not be opened). */
  readonly errors: Record<string, number>;
}

/** An empty tally table for `kinds`. */
export function tallies<K extends string>(kinds: readonly K[]): Record<K, Tally> {
  return Object.fromEntries(kinds.map((k) => [k, { msgs: 0, bytes: 0 }])) as Record<K, Tally>;
}

/** The `q`-quantile (0..1) of `values` by nearest rank; NaN for none. Sorts a copy. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) {
    return Number.NaN;
  }
  const sorted = Float64Array.from(values).sort();
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}

/** Sums the tallies of several reports, kind by kind. */
export function sumTallies<K extends string>(
  kinds: readonly K[],
  parts: readonly Record<K, Tally>[],
): Record<K, Tally> {
  const total = tallies(kinds);
  for (const part of parts) {
    for (const kind of kinds) {
      total[kind].msgs += part[kind].msgs;
      total[kind].bytes += part[kind].bytes;
    }
  }
  return total;
}

/** The sum of one tally table over all kinds. */
export function totalOf(table: Readonly<Record<string, Tally>>): Tally {
  const total = { msgs: 0, bytes: 0 };
  for (const tally of Object.values(table)) {
    total.msgs += tally.msgs;
    total.bytes += tally.bytes;
  }
  return total;
}

/** The held pieces as the sorted, disjoint ranges the messages carry. */
export function heldRanges(held: Uint8Array): PieceRanges {
  const ranges: PieceRanges = [];
  let start = -1;
  for (let i = 0; i <= held.length; i++) {
    const has = i < held.length && held[i] === 1;
    if (has && start < 0) {
      start = i;
    } else if (!has && start >= 0) {
      ranges.push([start, i]);
      start = -1;
    }
  }
  return ranges;
}
