/**
 * Fetches a blob from its origin registry with the client's credentials, streaming it into a
 * download in order. This is the whole path when the agent runs without a swarm, and the
 * swarm's last resort.
 */
import { PieceBuffers } from '@shoal/pieces';
import type { Digest } from '@shoal/proto';
import type { Logger, RateLimiter } from '@shoal/runtime';

import type { FsContentStore } from '../cache/content-store.js';
import type { DownloadTable, Flight } from '../cache/download-table.js';
import {
  BlobDownload,
  fillInOrder,
  sameSource,
  type DownloadState,
  type OriginSource,
} from '../cache/download.js';
import { ByteTally } from '../provenance/ledger.js';
import {
  ResumeRefusedError,
  resumingBody,
  type OpenedBlob,
  type UpstreamRegistry,
} from '@shoal/registry';
import type { RegistryRequests } from './registry-requests.js';

/** What a blob fetch is for: the blob, where it lives, and whose credentials to use. */
export interface BlobTarget {
  readonly registry: UpstreamRegistry;
  readonly name: string;
  readonly digest: Digest;
  /** The client's Authorization header, forwarded as is. */
  readonly authorization: string | undefined;
  /** A download limit for this fetch on top of the agent's own (preheat pulls have one). */
  readonly limit?: RateLimiter;
}

/** Starts a blob fetch; `signal` aborts on shutdown. */
export interface BlobFetcher {
  start(target: BlobTarget, signal: AbortSignal): Promise<Flight>;
}

export interface OriginFetcherDeps {
  readonly store: FsContentStore;
  readonly downloads: DownloadTable;
  readonly requests: RegistryRequests;
  /** Bytes received from the origin. */
  readonly onBytes: (bytes: number) => void;
  /** A fetch ended: its blob, where it was asked for, and what came in. */
  readonly onSettled?: (target: BlobTarget, tally: ByteTally, state: DownloadState) => void;
  /** The origin's transfer broke off at byte `at` and is asked again from there. */
  readonly onResume?: (target: BlobTarget, at: number, cause: Error) => void;
  /**
   * The read moved to another reader's source: a registry answered 401 or 403 to the one
   * reading (`refused`), or a source moved to failed otherwise (`failed`).
   */
  readonly onSourceMoved?: (reason: 'refused' | 'failed') => void;
  /** Where a refused resume, and what each other reader's source answered then, are told. */
  readonly logger?: Logger;
}

/**
 * Free blocks kept for the downloads' reuse, in bytes: each download from the origin holds up
 * to 2 MiB for its readers and the write being gathered, and the reader's 1 MiB blocks are
 * copied into blocks of this pool; a few downloads at once (an image's layers) fit.
 */
const POOLED_BLOCK_BYTES = 16 * 1024 * 1024;

export class OriginFetcher implements BlobFetcher {
  readonly #deps: OriginFetcherDeps;
  readonly #pool = new PieceBuffers(POOLED_BLOCK_BYTES);

  constructor(deps: OriginFetcherDeps) {
    this.#deps = deps;
  }

  /**
   * Starts the blob's GET with the block reader: the body arrives in reused blocks, each copied
   * into a buffer of the pool that the download owns, so the bytes received allocate nothing.
   */
  async start(target: BlobTarget, signal: AbortSignal): Promise<Flight> {
    const { store, downloads } = this.#deps;
    const opened = await this.#deps.requests.openBlob({
      registry: target.registry,
      name: target.name,
      digest: target.digest,
      authorization: target.authorization,
      signal,
    });
    if (opened.status !== 200) {
      return {
        kind: 'answer',
        answer: { status: opened.status, headers: opened.headers, body: opened.answer },
      };
    }
    const running = downloads.running(target.digest);
    if (running !== undefined) {
      // Another client's fetch got there first (after an answer that was not ours).
      opened.cancel(new Error('another fetch of the blob is running'));
      return { kind: 'download', download: running };
    }
    const download = new BlobDownload(target.digest, await store.createTemp(), this.#pool);
    if (opened.size !== undefined) {
      download.setSize(opened.size);
    }
    this.#fill(target, download, this.#body(target, download, opened, signal));
    return { kind: 'download', download };
  }

  /**
   * `opened`'s body, resumed from where it stopped when the transfer breaks off. When the
   * registry refuses a resume (the starting client's token expired mid-transfer), the rest is
   * read from that byte with the credentials of the other clients reading the download then,
   * each at its own registry and each once, newest first; when none is left, or none answers
   * with the rest, the body ends with the last failure.
   */
  #body(
    target: BlobTarget,
    download: BlobDownload,
    opened: OpenedBlob,
    signal: AbortSignal,
  ): AsyncGenerator<Buffer> {
    const own: OriginSource = {
      registry: target.registry,
      name: target.name,
      authorization: target.authorization,
    };
    /** The source reading now, and every one tried. */
    let source = own;
    const tried = [own];
    const logger = this.#deps.logger;
    return resumingBody(opened, {
      signal,
      reopen: (at) => this.#open(target, own, at, signal),
      onResume: (at, cause) => this.#deps.onResume?.(target, at, cause),
      nextSource: (why) => {
        const fields = { digest: target.digest.toString(), registry: source.registry.host };
        if (why instanceof ResumeRefusedError) {
          logger?.warn(
            { ...fields, at: why.at, err: why },
            "the origin refused to resume a blob's transfer with a client's credential; " +
              "asking for the rest with another reader's, if one is left",
          );
        } else {
          logger?.info(
            { ...fields, err: why },
            "another reader's source did not answer with the rest of the blob; trying the next",
          );
        }
        // The readers now: one that left meanwhile no longer offers its credential.
        const next = download.sources.find((s) => !tried.some((t) => sameSource(t, s)));
        if (next === undefined) {
          return undefined;
        }
        tried.push(next);
        source = next;
        this.#deps.onSourceMoved?.(why instanceof ResumeRefusedError ? 'refused' : 'failed');
        return (at) => this.#open(target, next, at, signal);
      },
    }).blocks;
  }

  /**
   * The blob from byte `from` on, at `source`'s registry with its credential. Its clients
   * have had their answer's headers: a rate limit other requests met does not refuse it.
   */
  #open(
    target: BlobTarget,
    source: OriginSource,
    from: number,
    signal: AbortSignal,
  ): Promise<OpenedBlob> {
    return this.#deps.requests.openBlob({
      registry: source.registry,
      name: source.name,
      digest: target.digest,
      authorization: source.authorization,
      signal,
      from,
      started: true,
    });
  }

  /** Fills `download` from `body` in the background, counting the bytes as the origin's. */
  #fill(target: BlobTarget, download: BlobDownload, body: AsyncIterable<Uint8Array>): void {
    const tally = new ByteTally();
    void fillInOrder(
      download,
      body,
      this.#deps.store,
      (bytes) => {
        tally.add('origin', bytes);
        this.#deps.onBytes(bytes);
      },
      this.#pool,
    ).then((state) => this.#deps.onSettled?.(target, tally, state));
  }
}

/** `/v2/<name>/blobs/<digest>` */
export function blobPath(target: Pick<BlobTarget, 'name' | 'digest'>): string {
  return `/v2/${target.name}/blobs/${target.digest.toString()}`;
}
