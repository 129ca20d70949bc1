/**
 * How far each other replica's clock is from this one's, learnt from the send times their
 * heartbeats carry. A forwarded want's deadline is a time on its forwarder's clock; read
 * through this, an owner whose clock runs ahead does not drop wants it had time to answer, and
 * one whose clock runs behind does not answer after its forwarder gave up, with no assumption
 * that NTP keeps the replicas close. Pure: the clock is passed in.
 */

/**
 * Samples kept per replica (a heartbeat each): the estimate follows a clock that was stepped
 * within this many heartbeats.
 */
const SAMPLES_KEPT = 16;

export class ClockOffsets {
  /** Replica id -> the latest samples of (this clock at receipt − its clock at sending). */
  readonly #samples = new Map<string, number[]>();

  /** A message `id` stamped `sentMs` on its clock arrived at `receivedMs` on this one. */
  sample(id: string, sentMs: number, receivedMs: number): void {
    let samples = this.#samples.get(id);
    if (samples === undefined) {
      samples = [];
      this.#samples.set(id, samples);
    }
    samples.push(receivedMs - sentMs);
    if (samples.length > SAMPLES_KEPT) {
      samples.shift();
    }
  }

  /**
   * This clock's reading minus `id`'s, or undefined before its first sample. Each sample is
   * the offset plus the message's time in transit (NATS, a paused sender or receiver), never
   * less: the smallest is the closest, a few ms over the offset at most on a healthy network.
   */
  offsetMs(id: string): number | undefined {
    const samples = this.#samples.get(id);
    return samples === undefined ? undefined : Math.min(...samples);
  }

  /** `remoteMs`, a time on `id`'s clock, on this replica's clock (unchanged while unknown). */
  toLocal(id: string, remoteMs: number): number {
    return remoteMs + (this.offsetMs(id) ?? 0);
  }

  /** `id` left the live set: its samples go (it may come back with its clock reset). */
  forget(id: string): void {
    this.#samples.delete(id);
  }

  /** The replicas with samples. */
  ids(): IterableIterator<string> {
    return this.#samples.keys();
  }
}
