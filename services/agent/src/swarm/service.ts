/**
 * The agent's swarm: the blob fetcher that joins a blob's swarm instead of going to the
 * origin, the piece server peers fetch from, and the announcements of what the cache holds.
 */
import type { KeyObject } from 'node:crypto';

import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import type { PieceBuffers } from '@shoal/pieces';
import { pieceCount, pieceSizeFor, type Digest, type PeerInfo } from '@shoal/proto';
import { runInContext, startSpan, type Logger } from '@shoal/runtime';

import type { FsContentStore } from '../cache/content-store.js';
import type { Flight } from '../cache/download-table.js';
import { BlobDownload } from '../cache/download.js';
import type { AgentMetrics } from '../metrics.js';
import { reportBlob, type BlobLedger } from '../provenance/ledger.js';
import type { BlobFetcher, BlobTarget } from '../upstream/origin-fetcher.js';
import type { RegistryRequests } from '../upstream/registry-requests.js';
import { SwarmClient } from './client.js';
import { watchLimits, type TransferLimits } from './limits.js';
import type { SwarmConfig } from './config.js';
import { PieceClient } from './piece-client.js';
import type { RawTlsOptions } from '@shoal/runtime/raw-http';
import { SwarmFetch } from './swarm-fetch.js';

/** How often everything cached is announced again, so the swarm stream never forgets it, in ms. */
const REANNOUNCE_INTERVAL_MS = 10 * 60_000;

export interface SwarmServiceDeps {
  readonly nc: NatsConnection;
  readonly js: JetStreamClient;
  readonly jsm: JetStreamManager;
  readonly self: PeerInfo;
  readonly config: SwarmConfig;
  readonly store: FsContentStore;
  readonly requests: RegistryRequests;
  readonly metrics: AgentMetrics;
  readonly logger: Logger;
  /** The agent's upload and download budgets. */
  readonly limits: TransferLimits;
  /** Piece buffers, shared with the peer server. */
  readonly pool: PieceBuffers;
  /** Where each blob's bytes came from. */
  readonly ledger: BlobLedger;
  /** How the piece client reaches https:// peers and seed servers (default: the system's CAs). */
  readonly pieceTls?: RawTlsOptions;
  /** The seed servers' record public keys (none: every blob is hashed here). */
  readonly recordKeys?: readonly KeyObject[];
}

export class SwarmService implements BlobFetcher {
  readonly client: SwarmClient;
  readonly #deps: SwarmServiceDeps;
  readonly #pieces: PieceClient;
  readonly #active = new Map<string, SwarmFetch>();
  readonly #uploads: boolean;
  #reannounce: NodeJS.Timeout | undefined;
  #limits: { stop(): void } | undefined;

  constructor(deps: SwarmServiceDeps) {
    const { config, metrics } = deps;
    this.#deps = deps;
    this.#uploads = config.SHOAL_AGENT_MODE !== 'leecher';
    this.client = new SwarmClient({
      nc: deps.nc,
      js: deps.js,
      jsm: deps.jsm,
      self: deps.self,
      uploads: this.#uploads,
      haveIntervalMs: config.SHOAL_AGENT_HAVE_INTERVAL_MS,
      logger: deps.logger,
      metrics,
      ...(deps.recordKeys === undefined ? {} : { recordKeys: deps.recordKeys }),
    });
    this.#pieces = new PieceClient(
      {
        idleTimeoutMs: config.SHOAL_AGENT_PIECE_IDLE_TIMEOUT_MS,
        minRateBytes: config.SHOAL_AGENT_PIECE_MIN_RATE_BYTES,
        connectTimeoutMs: config.SHOAL_AGENT_PIECE_CONNECT_TIMEOUT_MS,
        silenceMinMs: config.SHOAL_AGENT_PIECE_SILENCE_MIN_MS,
      },
      deps.pieceTls,
    );
  }

  /** Whether this agent serves pieces (not a leecher). */
  get uploads(): boolean {
    return this.#uploads;
  }

  /** Starts receiving hand-outs and announces what the cache already holds. */
  open(): void {
    const { config } = this.#deps;
    if (config.SHOAL_AGENT_LIMITS_FILE !== undefined) {
      const watch = watchLimits(
        config.SHOAL_AGENT_LIMITS_FILE,
        {
          upload: this.#deps.limits.upload,
          download: this.#deps.limits.download,
          defaults: {
            upload: config.SHOAL_AGENT_UPLOAD_RATE_BYTES,
            download: config.SHOAL_AGENT_DOWNLOAD_RATE_BYTES,
          },
          onRejected: (reason) => this.#deps.metrics.limitsFileRejected.inc({ reason }),
        },
        this.#deps.logger,
      );
      void watch.check();
      this.#limits = watch;
    }
    this.client.start();
    this.#announceCache();
    this.#reannounce = setInterval(() => this.#announceCache(), REANNOUNCE_INTERVAL_MS);
    this.#reannounce.unref();
  }

  /** The swarm fetch of `digest` in progress, if any: the peer server serves its verified pieces. */
  activeFetch(digest: string): SwarmFetch | undefined {
    return this.#active.get(digest);
  }

  /** A cached blob left the cache: peers must not ask for it any more. */
  forget(digest: Digest): void {
    this.client.announce(digest.toString(), [], false);
  }

  /** BlobFetcher: joins the blob's swarm; the download fills as pieces verify. */
  async start(target: BlobTarget, signal: AbortSignal): Promise<Flight> {
    const { config, store, requests, metrics, logger } = this.#deps;
    const download = new BlobDownload(target.digest, await store.createTemp(), this.#deps.pool);
    const fetch = new SwarmFetch(download, target, {
      client: this.client,
      pieces: this.#pieces,
      store,
      pool: this.#deps.pool,
      requests,
      downloadLimit: this.#deps.limits.download,
      metrics,
      logger,
      settings: {
        concurrency: Math.max(1, config.SHOAL_AGENT_PIECE_CONCURRENCY),
        stallTimeoutMs: config.SHOAL_AGENT_SWARM_STALL_TIMEOUT_MS,
        minRateBytes: config.SHOAL_AGENT_PIECE_MIN_RATE_BYTES,
        wantIntervalMs: config.SHOAL_AGENT_WANT_INTERVAL_MS,
      },
    });
    const key = target.digest.toString();
    this.#active.set(key, fetch);
    // A child of the request that started it; wants and piece requests are its children.
    const traced = startSpan('swarm download', {
      attributes: {
        'oci.registry': target.registry.host,
        'oci.repository': target.name,
        'oci.digest': key,
      },
    });
    void runInContext(traced.context, () => fetch.run(signal)).finally(() => {
      runInContext(traced.context, () =>
        reportBlob(this.#deps.ledger, logger, {
          digest: key,
          image: `${target.registry.host}/${target.name}`,
          tally: fetch.tally,
          outcome: download.state === 'verified' ? 'verified' : 'failed',
        }),
      );
      traced.span.setAttributes(fetch.summary());
      traced.span.end();
      if (this.#active.get(key) === fetch) {
        this.#active.delete(key);
      }
    });
    return { kind: 'download', download };
  }

  #announceCache(): void {
    if (!this.#uploads) {
      return;
    }
    for (const { digest, size } of this.#deps.store.entries()) {
      const count = pieceCount(size, pieceSizeFor(size));
      this.client.announce(digest.toString(), [[0, count]], true);
    }
  }

  async close(): Promise<void> {
    if (this.#reannounce !== undefined) {
      clearInterval(this.#reannounce);
    }
    this.#limits?.stop();
    await this.client.close();
    this.#pieces.close();
  }
}
