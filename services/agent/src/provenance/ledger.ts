/**
 * Where a blob's bytes came from: for every blob this agent fetched or served from its cache,
 * how many bytes came from peers, the seed server, the origin or the cache, which peers sent
 * them, how long it took and the trace it belongs to. One log line per blob per pull says it
 * as it happens (`blob pulled`), and `shoal-why IMAGE` asks the agent afterwards. Bounded:
 * the most recent entries are kept, the oldest go.
 */

import { traceFields, type Logger } from '@shoal/runtime';

/** Where bytes came from; the same names as `fetched_bytes_total{source}`. */
export type ByteSource = 'peer' | 'seed' | 'origin' | 'cache';

export interface BlobRecord {
  readonly digest: string;
  /** `registry/repository` the blob was asked for under. */
  readonly image: string;
  readonly bytes: Readonly<Record<ByteSource, number>>;
  /** Peer ids that sent pieces (the seed server under its own id). */
  readonly peers: readonly string[];
  /** From the start of the fetch (or the request, for a cache hit) to its end, in ms. */
  readonly durationMs: number;
  /** `verified`, `failed`, or `cache` for a hit. */
  readonly outcome: 'verified' | 'failed' | 'cache';
  /** When it ended, ms since the epoch. */
  readonly at: number;
  /** The pull's trace, when tracing is on. */
  readonly traceId: string | undefined;
}

/** Counts one fetch's bytes by source as they arrive. */
export class ByteTally {
  readonly #bytes: Record<ByteSource, number> = { peer: 0, seed: 0, origin: 0, cache: 0 };
  readonly #peers = new Set<string>();
  readonly startedAt = Date.now();

  add(source: ByteSource, bytes: number, peer?: string): void {
    this.#bytes[source] += bytes;
    if (peer !== undefined) {
      this.#peers.add(peer);
    }
  }

  get bytes(): Readonly<Record<ByteSource, number>> {
    return { ...this.#bytes };
  }

  get peers(): string[] {
    return [...this.#peers].sort();
  }
}

/** Entries kept (about 300 bytes each). */
const DEFAULT_ENTRIES = 4096;

export class BlobLedger {
  readonly #entries = new Map<string, BlobRecord>();
  readonly #max: number;

  constructor(maxEntries = DEFAULT_ENTRIES) {
    this.#max = maxEntries;
  }

  /** Records `record`, replacing an older one of the same blob. */
  record(record: BlobRecord): void {
    this.#entries.delete(record.digest);
    this.#entries.set(record.digest, record);
    while (this.#entries.size > this.#max) {
      const oldest = this.#entries.keys().next().value;
      if (oldest === undefined) {
        break;
      }
      this.#entries.delete(oldest);
    }
  }

  /** The latest record of `digest`, if any is kept. */
  get(digest: string): BlobRecord | undefined {
    return this.#entries.get(digest);
  }
}

/**
 * The log line of one blob's pull, and its entry in the ledger. Called inside the pull's
 * trace context, so the line carries its `trace_id`.
 */
export function reportBlob(
  ledger: BlobLedger,
  logger: Logger,
  pull: {
    readonly digest: string;
    readonly image: string;
    readonly tally: ByteTally;
    readonly outcome: BlobRecord['outcome'];
  },
): void {
  const { trace_id: traceId } = traceFields();
  const record: BlobRecord = {
    digest: pull.digest,
    image: pull.image,
    bytes: pull.tally.bytes,
    peers: pull.tally.peers,
    durationMs: Date.now() - pull.tally.startedAt,
    outcome: pull.outcome,
    at: Date.now(),
    traceId,
  };
  ledger.record(record);
  logger.info(
    {
      image: record.image,
      digest: record.digest,
      bytes: record.bytes,
      peers: record.peers,
      ms: record.durationMs,
      outcome: record.outcome,
    },
    'blob pulled',
  );
}
