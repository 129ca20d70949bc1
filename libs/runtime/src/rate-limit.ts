/** A token bucket in bytes per second; a rate of 0 means unlimited. */
export class RateLimiter {
  #rate: number;
  #tokens: number;
  #last = performance.now();
  #queue: Promise<void> = Promise.resolve();
  readonly #onWait: (ms: number) => void;

  constructor(bytesPerSecond: number, onWait: (ms: number) => void = () => undefined) {
    this.#rate = bytesPerSecond;
    this.#tokens = bytesPerSecond;
    this.#onWait = onWait;
  }

  /** Changes the rate at run time (0: unlimited). */
  setRate(bytesPerSecond: number): void {
    this.#rate = bytesPerSecond;
    this.#tokens = Math.min(this.#tokens, bytesPerSecond);
  }

  /** Waits until `bytes` may pass. Callers are served in order. */
  take(bytes: number): Promise<void> {
    if (this.#rate === 0) {
      return Promise.resolve();
    }
    this.#queue = this.#queue.then(async () => {
      const now = performance.now();
      this.#tokens = Math.min(this.#rate, this.#tokens + ((now - this.#last) / 1000) * this.#rate);
      this.#last = now;
      this.#tokens -= bytes;
      if (this.#tokens < 0) {
        const waitMs = (-this.#tokens / this.#rate) * 1000;
        this.#onWait(waitMs);
        await new Promise((resolve) => setTimeout(resolve, waitMs));
      }
    });
    return this.#queue;
  }
}
