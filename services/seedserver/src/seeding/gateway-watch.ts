/**
 * Gives up a read of the object gateway that keeps the seed server waiting: for its answer,
 * or for the next bytes of its body. A gateway connection can stay open with nothing on it (a
 * MinIO pod frozen, a load balancer holding on to a dead backend's connection), and the S3
 * client's own idle timeout (30 s) is three times the agents' stall timeout: through such a
 * silence the agents, which hear of every piece the seed hashes, hear nothing and read the blob
 * from the registry themselves. Given up, the read fails like a broken one: the seed reads the
 * rest from the origin and tells the agents it is waiting on that.
 *
 * Only the time spent waiting on the gateway counts, not the time the ingest spends on a chunk
 * (a slow cache disk is not a quiet gateway); and whatever the number of chunks, the watch
 * sets at most one timer per `idleMs`.
 */
import type { Readable } from 'node:stream';

export class GatewayWatch {
  readonly #idleMs: number;
  readonly #now: () => number;
  readonly #controller = new AbortController();
  /** Since when (ms) the seed waits on the gateway; undefined while it does not. */
  #since: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  #body: Readable | undefined;
  #quiet: Error | undefined;
  /** Takes the caller's abort over to this watch's signal, until `stop`. */
  #unlink: () => void = () => undefined;
  #linked = false;

  /**
   * `idleMs`: the longest wait (Infinity: none, the watch only passes the caller's signal on);
   * `now`: a monotonic clock in ms (default `performance.now`; tests drive it).
   */
  constructor(idleMs: number, now: () => number = () => performance.now()) {
    this.#idleMs = idleMs;
    this.#now = now;
  }

  /** Why the read was given up, once it was. */
  get quiet(): Error | undefined {
    return this.#quiet;
  }

  /**
   * A signal that fires with `signal` (until `stop`), and when the gateway keeps the seed
   * waiting too long. Linked by hand, not with `AbortSignal.any`: the caller's signal lives as
   * long as the process, and every read would leave it a listener.
   */
  signal(signal: AbortSignal): AbortSignal {
    if (this.#linked) {
      throw new Error('a gateway watch follows one signal');
    }
    this.#linked = true;
    const controller = this.#controller;
    if (signal.aborted) {
      controller.abort(signal.reason);
    } else {
      const onAbort = (): void => controller.abort(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      this.#unlink = () => signal.removeEventListener('abort', onAbort);
    }
    return controller.signal;
  }

  /**
   * Throws why the read was given up, once it was (destroying `body`, an answer that came
   * after: a store that does not heed the signal).
   */
  throwIfQuiet(body?: Readable): void {
    if (this.#quiet !== undefined) {
      body?.destroy();
      throw this.#quiet;
    }
  }

  /** The seed asks the gateway and waits: it must answer within `idleMs`. */
  waiting(): void {
    this.#since = this.#now();
    if (this.#timer === undefined && this.#quiet === undefined && Number.isFinite(this.#idleMs)) {
      this.#arm(this.#idleMs);
    }
  }

  /** The gateway answered (headers, or a chunk of the body). */
  answered(): void {
    this.#since = undefined;
  }

  /**
   * The body's chunks, each awaited under the watch: a wait past `idleMs` destroys the body
   * and ends the chunks with the reason. The watch stops with them.
   */
  async *read(body: Readable): AsyncGenerator<Buffer> {
    this.#body = body;
    const chunks = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
    try {
      for (;;) {
        this.waiting();
        let next: IteratorResult<Buffer>;
        try {
          next = await chunks.next();
        } catch (error) {
          throw this.#quiet ?? error;
        }
        this.answered();
        if (next.done === true) {
          return;
        }
        yield next.value;
      }
    } finally {
      this.stop();
      body.destroy();
    }
  }

  /** No more waits to watch; the caller's signal is let go. */
  stop(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#since = undefined;
    this.#unlink();
  }

  #arm(ms: number): void {
    this.#timer = setTimeout(() => this.#look(), ms);
    this.#timer.unref();
  }

  #look(): void {
    this.#timer = undefined;
    const since = this.#since;
    if (since === undefined) {
      // Not waiting now: the next wait sets the timer again.
      return;
    }
    const waited = this.#now() - since;
    if (waited < this.#idleMs) {
      this.#arm(this.#idleMs - waited);
      return;
    }
    this.#quiet = new GatewayQuietError(
      `the object gateway sent nothing for ${String(Math.round(waited))} ms (SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS)`,
    );
    this.#controller.abort(this.#quiet);
    this.#body?.destroy(this.#quiet);
  }
}

/** The object gateway kept the seed waiting past `SHOAL_SEED_GATEWAY_IDLE_TIMEOUT_MS`. */
export class GatewayQuietError extends Error {
  override readonly name = 'GatewayQuietError';
}
