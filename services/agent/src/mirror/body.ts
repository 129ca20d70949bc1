/**
 * Sends a blob body with a few reused buffers. Each buffer goes back to the pool only when
 * the socket has taken its bytes (the write callback), so a response holds at most its
 * buffers' bytes of memory however large the blob, and makes no garbage for the collector to
 * catch up with. Buffers are no larger than the body: a 1 KiB config costs 1 KiB.
 */
import { markSpan } from '@shoal/runtime';
import type { FastifyReply } from 'fastify';

import type { ByteCursor } from '../cache/download.js';

/** How a body is read: the size of each read and how many buffers a response cycles through. */
export interface PumpShape {
  /** Largest read, in bytes. */
  readonly bufferBytes: number;
  /** Buffers per response: one on its way to the socket while the next is read. */
  readonly buffers: number;
}

/**
 * Bytes in flight (a download, the origin): one read (or copy of bytes in flight) per 512 KiB.
 * Each read is a thread-pool round trip, which costs the same for 64 KiB as for 1 MiB, so
 * reads are large; and these responses are the ones many clients stream at once while pieces
 * also sit in memory, so they are not larger: four clients cost 4 MiB of the agent's 100 MiB
 * memory budget, not 16.
 */
export const STREAM_PUMP: PumpShape = { bufferBytes: 512 * 1024, buffers: 2 };

/**
 * A cache hit: the whole body is on disk, so each read is 1 MiB, half as many thread-pool round
 * trips (and main-thread wake-ups) per byte as in flight. On a busy node each wake-up may wait
 * for a core. Served to a client reading at 150 MB/s, the agent spent 0.44 CPU s/GiB with 1 MiB
 * reads, 0.48 with 512 KiB, 0.68 with 128 KiB and the same 0.44 with 2 MiB (whose buffers
 * would cost twice the memory): see bench/README.md. A response holds 2 MiB at most, and only
 * while it is being sent.
 */
export const CACHE_PUMP: PumpShape = { bufferBytes: 1024 * 1024, buffers: 2 };

/**
 * Writes `status`, the headers set on `reply`, and the cursor's bytes, then ends the response.
 * If the cursor fails the response is destroyed (cut, never completed). Takes the response
 * over from fastify (`hijack`): the caller's response hooks do not run for it.
 */
export async function pumpBody(
  reply: FastifyReply,
  status: number,
  cursor: ByteCursor,
  onBytes: (bytes: number) => void,
  /** Bytes the body has (its Content-Length): no buffer is larger, and no more are made than it fills. */
  bodyBytes: number,
  shape: PumpShape = STREAM_PUMP,
): Promise<void> {
  const res = reply.raw;
  reply.hijack();
  const headers: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(reply.getHeaders())) {
    if (value !== undefined) {
      headers[name] = typeof value === 'number' ? String(value) : value;
    }
  }
  res.writeHead(status, headers);
  const pool: Buffer[] = [];
  const bufferBytes = Math.max(1, Math.min(shape.bufferBytes, bodyBytes));
  const buffers = Math.min(shape.buffers, Math.max(1, Math.ceil(bodyBytes / bufferBytes)));
  for (let i = 0; i < buffers; i++) {
    pool.push(Buffer.allocUnsafe(bufferBytes));
  }
  let wake: (() => void) | undefined;
  const release = (buffer: Buffer): void => {
    pool.push(buffer);
    wake?.();
    wake = undefined;
  };
  const onClose = (): void => {
    wake?.();
    wake = undefined;
    // The client left: a read waiting for bytes that may be long in coming (a stalled swarm)
    // ends now, and the cursor lets go of what it holds (its download, its reader's source).
    cursor.close();
  };
  res.once('close', onClose);
  let first = true;
  try {
    for (;;) {
      let buffer = pool.pop();
      while (buffer === undefined) {
        if (res.destroyed) {
          return;
        }
        await new Promise<void>((resolve) => {
          wake = resolve;
        });
        buffer = pool.pop();
      }
      if (res.destroyed) {
        return;
      }
      const bytes = await cursor.read(buffer);
      if (bytes === 0) {
        break;
      }
      if (first) {
        // The moment the client's wait for bytes ends: a phase of the pull's timeline.
        markSpan('first body bytes sent');
        first = false;
      }
      onBytes(bytes);
      const chunk = buffer;
      res.write(chunk.subarray(0, bytes), () => release(chunk));
    }
    res.end();
  } catch (error) {
    // Bytes already went out: the only honest answer left is to cut the response.
    res.destroy(error instanceof Error ? error : new Error(String(error)));
  } finally {
    res.off('close', onClose);
    cursor.close();
  }
}
