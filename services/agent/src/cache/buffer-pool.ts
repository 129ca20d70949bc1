/**
 * Piece-sized buffers used again instead of allocated anew. Every fresh buffer is external
 * memory to V8, and allocating one per piece (a GiB of them per GiB received) makes V8 run a
 * full collection every few tens of MiB ("external memory pressure"): that, not the copying,
 * was most of the agent's CPU per byte. Buffers come back once nothing reads them any more.
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  readonly #maxBytes: number;
  #bytes = 0;
  /** A buffer was taken since the last `trimIdle`. */
  #used = false;

  /** Keeps at most `maxBytes` of free buffers; more are left to the collector. */
  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** Bytes of free buffers held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A buffer of exactly `size` bytes, with arbitrary content. */
  take(size: number): Buffer {
    this.#used = true;
    const buffer = this.#free.get(size)?.pop();
    if (buffer === undefined) {
      // Not from Node's shared small-buffer slab: a buffer of its own, so it can come back.
      return Buffer.allocUnsafeSlow(size);
    }
    this.#bytes -= size;
    return buffer;
  }

  /**
   * Lets go of free buffers past `bytes` when none was taken since the previous call: a pool
   * large enough for a burst of downloads does not keep that memory while the agent is idle.
   * Call it on a timer.
   */
  trimIdle(bytes: number): void {
    if (this.#used) {
      this.#used = false;
      return;
    }
    for (const [size, list] of this.#free) {
      while (this.#bytes > bytes && list.pop() !== undefined) {
        this.#bytes -= size;
      }
    }
  }

  /** Returns a buffer from `take`; the caller must not touch it afterwards. */
  give(buffer: Buffer): void {
    const size = buffer.length;
    if (size === 0 || buffer.byteOffset !== 0 || buffer.buffer.byteLength !== size) {
      return;
    }
    if (this.#bytes + size > this.#maxBytes) {
      return;
    }
    let list = this.#free.get(size);
    if (list === undefined) {
      list = [];
      this.#free.set(size, list);
    }
    list.push(buffer);
    this.#bytes += size;
  }
}
