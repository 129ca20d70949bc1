/** File helpers for assertions. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';

/** sha256 digest of a file, streamed. */
export async function fileDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) {
    hash.update(chunk as Buffer);
  }
  return `sha256:${hash.digest('hex')}`;
}

export const MiB = 1024 * 1024;
