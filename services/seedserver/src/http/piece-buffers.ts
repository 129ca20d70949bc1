/**
 * Piece-sized buffers reused from one response to the next, so that serving a piece reads it
 * into memory that is already mapped instead of allocating (and faulting in) a fresh one.
 * Sizes are powers of two, as piece sizes are; at most `maxIdleBytes` wait idle.
 */
export class PieceBuffers {
  readonly #maxIdleBytes: number;
  readonly #idle = new Map<number, Buffer[]>();
  #idleBytes = 0;

  /** `maxIdleBytes`: the most memory kept between responses, in bytes. */
  constructor(maxIdleBytes: number) {
    this.#maxIdleBytes = maxIdleBytes;
  }

  /** A buffer of at least `length` bytes (its contents are whatever was there). */
  take(length: number): Buffer {
    const size = bucketSize(length);
    const buffer = this.#idle.get(size)?.pop();
    if (buffer !== undefined) {
      this.#idleBytes -= size;
      return buffer;
    }
    return Buffer.allocUnsafeSlow(size);
  }

  /** Gives a buffer from `take` back once nothing reads it any more (the response is gone). */
  give(buffer: Buffer): void {
    const size = buffer.length;
    if (size !== bucketSize(size) || this.#idleBytes + size > this.#maxIdleBytes) {
      return;
    }
    let list = this.#idle.get(size);
    if (list === undefined) {
      list = [];
      this.#idle.set(size, list);
    }
    list.push(buffer);
    this.#idleBytes += size;
  }
}

/** The smallest power of two that holds `length`, at least 64 KiB. */
function bucketSize(length: number): number {
  let size = 64 * 1024;
  while (size < length) {
    size *= 2;
  }
  return size;
}
