/**
 * Piece-sized buffers used again instead of allocated anew, by the agent and the seed server.
 *
 * Every fresh buffer is external memory to V8, and allocating one per piece (a GiB of them per
 * GiB moved) makes V8 run a full collection every few tens of MiB ("external memory
 * pressure"): that, not the copying, was most of the agent's CPU per byte. Serving from a
 * buffer already mapped also spares the page faults of a fresh one.
 *
 * Buffers are cut from blocks whose sizes are powers of two (at least 64 KiB), as piece sizes
 * are, so the odd last piece of a blob reuses a block too. Only blocks this pool allocated come
 * back to it: a view of anybody else's memory (a socket's read buffer) is never handed out.
 *
 * A full pool makes room for a block given back by dropping free blocks of a size nobody has
 * taken for `STALE_TAKES` takes: after a blob of 4 MiB pieces, a blob of 1 MiB pieces would
 * otherwise find the pool full of 4 MiB blocks and allocate (map, fault in, and make V8
 * collect) every one of its own until the pool went idle: 13,000–14,500 page faults in a cold
 * 256 MiB pull after one of another piece size (bench/README.md). Sizes in use at once (the
 * layers of one image pulled together) all stay.
 */
export class PieceBuffers {
  readonly #free = new Map<number, ArrayBuffer[]>();
  /** The blocks this pool allocated (weakly: a block never given back is the collector's). */
  readonly #own = new WeakSet<ArrayBuffer>();
  readonly #maxBytes: number;
  #bytes = 0;
  /** A buffer was taken since the last `trimIdle`. */
  #used = false;
  /** Takes so far, and the count at the last take of each block size. */
  #takes = 0;
  readonly #lastTake = new Map<number, number>();

  /** Keeps at most `maxBytes` of free blocks between uses; more are left to the collector. */
  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** Bytes of free blocks held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A buffer of exactly `size` bytes, with arbitrary content. */
  take(size: number): Buffer {
    this.#used = true;
    const block = blockSize(size);
    this.#takes += 1;
    this.#lastTake.set(block, this.#takes);
    const free = this.#free.get(block)?.pop();
    if (free !== undefined) {
      this.#bytes -= block;
      this.#own.add(free);
      return Buffer.from(free, 0, size);
    }
    // Not from Node's shared small-buffer slab: a block of its own, so it can come back.
    const buffer = Buffer.allocUnsafeSlow(block);
    this.#own.add(buffer.buffer);
    return buffer.subarray(0, size);
  }

  /**
   * Returns a buffer from `take` once nothing reads it any more (a response is gone, a write
   * has landed); the caller must not touch it afterwards. Anything else is ignored.
   */
  give(buffer: Buffer): void {
    const block = buffer.buffer;
    if (buffer.byteOffset !== 0 || !(block instanceof ArrayBuffer) || !this.#own.has(block)) {
      return;
    }
    const size = block.byteLength;
    if (this.#bytes + size > this.#maxBytes) {
      this.#dropStale(this.#bytes + size - this.#maxBytes);
    }
    if (this.#bytes + size > this.#maxBytes) {
      return;
    }
    let list = this.#free.get(size);
    if (list === undefined) {
      list = [];
      this.#free.set(size, list);
    }
    // Dropped from the pool's own set while free, so a second `give` of it is a no-op.
    this.#own.delete(block);
    list.push(block);
    this.#bytes += size;
  }

  /** Drops free blocks of sizes not taken for `STALE_TAKES` takes, until `bytes` are gone. */
  #dropStale(bytes: number): void {
    let dropped = 0;
    for (const [size, list] of this.#free) {
      if (this.#takes - (this.#lastTake.get(size) ?? 0) < STALE_TAKES) {
        continue;
      }
      while (dropped < bytes && list.pop() !== undefined) {
        this.#bytes -= size;
        dropped += size;
      }
      if (dropped >= bytes) {
        return;
      }
    }
  }

  /**
   * Lets go of free blocks past `bytes` when none was taken since the previous call: a pool
   * large enough for a burst of downloads does not keep that memory while the process is
   * idle. Call it on a timer.
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
}

/**
 * Takes of other sizes after which a block size counts as no longer in use. Downloads running
 * together take their sizes in turn (4 MiB pieces beside 256 KiB ones, at the same byte rate,
 * once in 16 takes); a size left behind costs at most this many fresh blocks before its free
 * blocks make room.
 */
const STALE_TAKES = 32;

/** The smallest power of two that holds `length`, at least 64 KiB. */
function blockSize(length: number): number {
  let size = 64 * 1024;
  while (size < length) {
    size *= 2;
  }
  return size;
}
