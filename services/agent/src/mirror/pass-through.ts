/**
 * A blob sent from the origin's answer straight to the client, without the cache: what the
 * mirror does when the disk has no room for a download. The invariant of every other path
 * holds: the whole blob is hashed on the way, and the last byte of the response is withheld
 * until the digest matches; on a mismatch (or a short or long body) the cursor throws and the
 * response is cut, never completed.
 *
 * A range is served from a whole-blob fetch: the bytes before it are hashed and dropped, the
 * bytes after it hashed, so that a range answer is verified like a whole one.
 */
import { Readable } from 'node:stream';

import { DigestHasher, type Digest } from '@shoal/proto';

import { ContentMismatchError, type ByteCursor } from '../cache/download.js';
import type { ByteRange } from './range.js';

/**
 * An origin body in lent blocks (the block reader's `OpenedBlob`): each block is valid only
 * until the next is asked for.
 */
export interface LentBody {
  readonly blocks: AsyncIterator<Buffer>;
  cancel(reason: Error): void;
}

/**
 * A cursor over `body` (the origin's 200 answer for `digest`, `size` bytes: a stream, or lent
 * blocks) that yields the bytes of `range` (or all of them) and verifies the whole blob before
 * yielding the last. A chunk is used only until the next one is asked for, so lent blocks are
 * safe.
 */
export function passThroughCursor(
  body: Readable | LentBody,
  digest: Digest,
  size: number,
  range: ByteRange | undefined,
): ByteCursor {
  const hasher = new DigestHasher(digest.algorithm);
  const chunks =
    body instanceof Readable
      ? (body[Symbol.asyncIterator]() as AsyncIterator<Buffer>)
      : body.blocks;
  const end = range === undefined ? size : range.end + 1;
  /** Blob offset of the next byte to give the client. */
  let position = range?.start ?? 0;
  /** Bytes of the blob received from the origin (and hashed). */
  let received = 0;
  /** Received bytes not yet given, starting at `position`. */
  let pending: Buffer | undefined;
  let verified = false;

  const receive = async (): Promise<boolean> => {
    const next = await chunks.next();
    if (next.done === true) {
      return false;
    }
    const chunk = next.value;
    const chunkStart = received;
    received += chunk.length;
    if (received > size) {
      throw new ContentMismatchError(
        'SIZE_MISMATCH',
        502,
        `the origin sent more than the ${size} bytes of ${digest.toString()}`,
      );
    }
    hasher.update(chunk);
    // Keep the part of the chunk the client still needs. A chunk is asked for only when the
    // pending bytes are used up (or, to verify, past the response's end), so it replaces them.
    const from = Math.max(position, chunkStart) - chunkStart;
    const to = Math.min(end, received) - chunkStart;
    if (to > from) {
      pending = chunk.subarray(from, to);
    }
    return true;
  };

  const verify = async (): Promise<void> => {
    while (await receive()) {
      // Hash the rest of the blob.
    }
    if (received !== size) {
      throw new ContentMismatchError(
        'SIZE_MISMATCH',
        502,
        `the origin sent ${received} of the ${size} bytes of ${digest.toString()}`,
      );
    }
    const actual = hasher.digest();
    if (actual.toString() !== digest.toString()) {
      throw new ContentMismatchError(
        'DIGEST_MISMATCH',
        502,
        `the origin sent content with digest ${actual.toString()} for ${digest.toString()}`,
      );
    }
    verified = true;
  };

  return {
    read: async (buffer) => {
      if (position >= end) {
        // Only an empty blob gets here unverified: it still has to be the blob asked for.
        if (size === 0 && !verified) {
          await verify();
        }
        return 0;
      }
      while (pending === undefined || pending.length === 0) {
        if (!(await receive())) {
          throw new ContentMismatchError(
            'SIZE_MISMATCH',
            502,
            `the origin sent ${received} of the ${size} bytes of ${digest.toString()}`,
          );
        }
      }
      // Everything but the response's last byte may go before the blob has verified.
      let length = Math.min(buffer.length, pending.length, end - 1 - position);
      if (length === 0) {
        // The last byte is kept aside: verifying asks for the rest of the blob, and a lent
        // block holding it may be filled again meanwhile.
        const last = Buffer.from(pending.subarray(0, 1));
        await verify();
        pending = last;
        length = 1;
      }
      pending.copy(buffer, 0, 0, length);
      pending = pending.subarray(length);
      position += length;
      return length;
    },
    close: () => {
      if (body instanceof Readable) {
        body.destroy();
      } else {
        body.cancel(new Error('the pass-through ended'));
      }
    },
  };
}
