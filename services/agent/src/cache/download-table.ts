/**
 * One upstream fetch per blob, however many requests want it at once (single flight).
 *
 * The first request for a digest leads: it asks the upstream with its own credentials. When
 * the upstream answers 200, a download starts and every request that arrives meanwhile reads
 * from it. When the upstream answers anything else (401 for missing credentials, 404), that
 * answer belongs to the leader alone; a follower then asks the upstream with its own
 * credentials. Downloads run to completion even if their first client goes away, so a retry
 * finds the blob cached; shutdown aborts them.
 */
import type { Digest } from '@shoal/proto';

import type { UpstreamResponse } from '../upstream/client.js';
import { headerValue } from '../upstream/client.js';
import type { FsContentStore } from './content-store.js';
import { BlobDownload, type DownloadState } from './download.js';

export type Flight =
  | { readonly kind: 'download'; readonly download: BlobDownload }
  | { readonly kind: 'answer'; readonly response: UpstreamResponse };

export interface DownloadHooks {
  /** Bytes received from the upstream. */
  onBytes(bytes: number): void;
  /** A download began. */
  onStarted(download: BlobDownload): void;
  /** A download ended, verified or failed. */
  onSettled(download: BlobDownload, state: DownloadState): void;
}

export class DownloadTable {
  readonly #store: FsContentStore;
  readonly #hooks: DownloadHooks;
  readonly #flights = new Map<string, Promise<Flight>>();
  readonly #running = new Set<BlobDownload>();
  readonly #abort = new AbortController();

  constructor(store: FsContentStore, hooks: DownloadHooks) {
    this.#store = store;
    this.#hooks = hooks;
  }

  /** Downloads in progress. */
  get active(): number {
    return this.#running.size;
  }

  /**
   * Joins the download of `digest`, or starts it with `fetch` (given a signal that aborts on
   * shutdown). Resolves with the download, or with the upstream's non-200 answer to `fetch`.
   */
  async join(
    digest: Digest,
    fetch: (signal: AbortSignal) => Promise<UpstreamResponse>,
  ): Promise<Flight> {
    const pending = this.#flights.get(digest.toString());
    if (pending !== undefined) {
      const flight = await pending.catch(() => undefined);
      if (flight?.kind === 'download') {
        return flight;
      }
    }
    return this.#lead(digest, fetch);
  }

  #lead(
    digest: Digest,
    fetch: (signal: AbortSignal) => Promise<UpstreamResponse>,
  ): Promise<Flight> {
    const key = digest.toString();
    const flight = (async (): Promise<Flight> => {
      const response = await fetch(this.#abort.signal);
      if (response.status !== 200) {
        return { kind: 'answer', response };
      }
      const length = headerValue(response.headers, 'content-length');
      const size = length === undefined ? undefined : Number(length);
      const download = new BlobDownload(digest, size, await this.#store.createTemp());
      this.#running.add(download);
      this.#hooks.onStarted(download);
      void download
        .run(response.body, this.#store, (n) => this.#hooks.onBytes(n))
        .then((state) => {
          this.#running.delete(download);
          if (this.#flights.get(key) === flight) {
            this.#flights.delete(key);
          }
          this.#hooks.onSettled(download, state);
        });
      return { kind: 'download', download };
    })();
    this.#flights.set(key, flight);
    flight.then(
      (result) => {
        if (result.kind === 'answer' && this.#flights.get(key) === flight) {
          this.#flights.delete(key);
        }
      },
      () => {
        if (this.#flights.get(key) === flight) {
          this.#flights.delete(key);
        }
      },
    );
    return flight;
  }

  /** Aborts every download and waits for them to settle. */
  async close(): Promise<void> {
    this.#abort.abort();
    await Promise.all([...this.#running].map((d) => d.settled));
  }
}
