/**
 * Sends a blob body with a few reused buffers. Each buffer goes back to the pool only when
 * the socket has taken its bytes (the write callback), so a response holds at most
 * `POOL_BUFFERS` x `BUFFER_BYTES` of memory however large the blob, and makes no garbage for
 * the collector to catch up with.
 */
import { markSpan } from '@shoal/runtime';
import type { FastifyReply } from 'fastify';

import type { ByteCursor } from '../cache/download.js';

/** Two: one on its way to the socket while the next is read. */
const POOL_BUFFERS = 2;
/**
 * One read (or copy of bytes in flight) per 512 KiB: each read is a thread-pool round trip,
 * which costs the same for 64 KiB as for 1 MiB, so reads are large; and a response holds two
 * of these, so they are not larger: four clients streaming at once cost 4 MiB of the agent's
 * 100 MiB memory budget, not 8.
 */
const BUFFER_BYTES = 512 * 1024;

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
  for (let i = 0; i < POOL_BUFFERS; i++) {
    pool.push(Buffer.allocUnsafe(BUFFER_BYTES));
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
