/**
 * Disk room, as the agent's cache and the seed server's cache both look at it: the free space
 * under a directory (statfs), and whether an error says the disk is full.
 */
import { statfs } from 'node:fs/promises';

/** Error codes that mean "no room to write". */
const DISK_FULL_CODES = new Set(['ENOSPC', 'EDQUOT']);

/** Whether `error`, or an error in its chain of causes, says the disk is full. */
export function isDiskFull(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 8; depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== undefined && DISK_FULL_CODES.has(code)) {
      return true;
    }
    e = e.cause;
  }
  return false;
}

/** Free space of the filesystem holding `dir`, in bytes, as an unprivileged writer sees it. */
export async function freeDiskBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  // bavail: blocks available to an unprivileged writer, which is what a cache should count on.
  return s.bavail * s.bsize;
}
