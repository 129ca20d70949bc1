/** File helpers for assertions. */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { promisify } from 'node:util';

import { makeTempDir, type Teardown } from '@shoal/testkit';

/** sha256 digest of a file, streamed. */
export async function fileDigest(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) {
    hash.update(chunk as Buffer);
  }
  return `sha256:${hash.digest('hex')}`;
}

export const MiB = 1024 * 1024;

const run = promisify(execFile);

/**
 * Mounts a tmpfs of `bytes` (a real filesystem that really fills) on a fresh directory; the
 * teardown unmounts it. Needs root.
 */
export async function smallDisk(teardown: Teardown, bytes: number): Promise<string> {
  const dir = await makeTempDir('small-disk');
  await run('mount', ['-t', 'tmpfs', '-o', `size=${bytes}`, 'tmpfs', dir.path]);
  teardown.add('small disk', async () => {
    await run('umount', ['-l', dir.path]);
    await dir.remove();
  });
  return dir.path;
}
