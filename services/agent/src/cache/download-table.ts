/**
 * One fetch per blob, however many requests want it at once (single flight).
 *
 * The first request for a digest leads: it starts the fetch (from the swarm, or from the
 * upstream with its own credentials). Every request that arrives while the download runs
 * reads from it. When the upstream answers the leader with anything but the blob (401 for
 * missing credentials, 404), that answer belongs to the leader alone; a follower then starts
 * its own fetch with its own credentials. Downloads run to completion even if their first
 * client goes away, so a retry finds the blob cached; shutdown aborts them.
 */
import type { Digest } from '@shoal/proto';

import type { UpstreamAnswer } from '@shoal/registry';
import type { BlobDownload, DownloadState } from './download.js';

export type Flight =
  | { readonly kind: 'download'; readonly download: BlobDownload }
  | { readonly kind: 'answer'; readonly answer: UpstreamAnswer };

/** Starts a fetch; `signal` aborts on shutdown. */
export type FlightStarter = (signal: AbortSignal) => Promise<Flight>;

export interface DownloadHooks {
  /** A download began. */
  onStarted(download: BlobDownload): void;
  /** A download ended, verified or failed. */
  onSettled(download: BlobDownload, state: DownloadState): void;
}

export class DownloadTable {
  readonly #hooks: DownloadHooks;
  readonly #flights = new Map<string, Promise<Flight>>();
  readonly #running = new Map<string, BlobDownload>();
  readonly #abort = new AbortController();

  constructor(hooks: DownloadHooks) {
    this.#hooks = hooks;
  }

  /** Downloads in progress. */
  get active(): number {
    return this.#running.size;
  }

  /** The download of `digest` in progress, if any. */
  running(digest: Digest): BlobDownload | undefined {
    return this.#running.get(digest.toString());
  }

  /** Joins the download of `digest`, or starts one with `start`. */
  async join(digest: Digest, start: FlightStarter): Promise<Flight> {
    const key = digest.toString();
    // Look again after every wait: a follower whose leader got an answer (not the blob) must
    // not lead when another follower already does.
    for (;;) {
      const running = this.#running.get(key);
      if (running !== undefined) {
        return { kind: 'download', download: running };
      }
      const pending = this.#flights.get(key);
      if (pending === undefined) {
        return this.#lead(key, start);
      }
      const flight = await pending.catch(() => undefined);
      if (flight?.kind === 'download') {
        return flight;
      }
      if (this.#flights.get(key) === pending) {
        // The leader's own answer, still being forgotten: lead now.
        return this.#lead(key, start);
      }
    }
  }

  #lead(key: string, start: FlightStarter): Promise<Flight> {
    const flight = start(this.#abort.signal).then((result) => {
      if (result.kind === 'download') {
        this.#track(key, result.download);
      }
      return result;
    });
    this.#flights.set(key, flight);
    const forget = (): void => {
      if (this.#flights.get(key) === flight) {
        this.#flights.delete(key);
      }
    };
    flight.then(forget, forget);
    return flight;
  }

  #track(key: string, download: BlobDownload): void {
    if (this.#running.get(key) === download) {
      return;
    }
    this.#running.set(key, download);
    this.#hooks.onStarted(download);
    void download.settled.then((state) => {
      if (this.#running.get(key) === download) {
        this.#running.delete(key);
      }
      this.#hooks.onSettled(download, state);
    });
  }

  /** Aborts every download and waits for them to settle. */
  async close(): Promise<void> {
    this.#abort.abort();
    await Promise.all([...this.#running.values()].map((d) => d.settled));
  }
}
