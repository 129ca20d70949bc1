/**
 * A blob transfer from the origin that breaks off (a reset, a load balancer's time limit, the
 * idle timeout) is asked again from the byte it stopped at, rather than failing the fetch or
 * starting it over from zero: the agent's origin fetch and the seed server's ingest read the
 * blob through this.
 */
import type { OpenedBlob } from './blob-reader.js';

/**
 * Times in a row a transfer is asked again without having brought `RESUME_PROGRESS_BYTES`
 * since: one that keeps making progress is resumed however often it breaks (a request per MiB
 * at worst, and the origin sends the blob about once); past this the body fails with the
 * transfer's own error.
 */
export const ORIGIN_RESUMES = 5;

/**
 * Bytes a broken transfer must have brought for its break not to count against
 * `ORIGIN_RESUMES`: an origin that breaks off after a few KiB each time is given up on after a
 * few requests, not asked a thousand times.
 */
export const RESUME_PROGRESS_BYTES = 1024 * 1024;

export interface ResumeOptions {
  /** The blob from byte `from` on (`BlobReader.open` with `from`), with the same credentials. */
  readonly reopen: (from: number) => Promise<OpenedBlob>;
  /** The fetch was stopped: a failure then is not resumed. */
  readonly signal: AbortSignal;
  /** The transfer broke off at byte `at` and is asked again from there. */
  readonly onResume?: (at: number, cause: Error) => void;
}

/** A blob's body that resumes itself: its blocks, and a way to stop whichever transfer runs. */
export interface ResumingBody {
  readonly blocks: AsyncGenerator<Buffer>;
  /** Stops the transfer running now; the blocks then end with `reason`, never resumed. */
  cancel(reason: Error): void;
}

/**
 * The blocks of `opened` (a 200 with its size), and when the transfer breaks off before the
 * size, those of a range request from the byte it stopped at (the whole blob again when no
 * byte had come), up to `ORIGIN_RESUMES` times in a row without `RESUME_PROGRESS_BYTES` of
 * progress. An answer other
 * than the expected 206 from that byte (or 200) ends the body with the transfer's own error.
 * Blocks are lent as `opened`'s are; what the bytes are is for the caller to check.
 */
export function resumingBody(opened: OpenedBlob, options: ResumeOptions): ResumingBody {
  let current = opened;
  let cancelled: Error | undefined;
  // Read through a call: `cancel` sets it while a reopen is awaited, which narrowing misses.
  const stopped = (): Error | undefined => cancelled;
  async function* blocks(): AsyncGenerator<Buffer> {
    let received = 0;
    let resumedAt = 0;
    let stalls = 0;
    for (;;) {
      try {
        for await (const block of current.blocks) {
          received += block.length;
          yield block;
        }
        return;
      } catch (error) {
        const cause = error instanceof Error ? error : new Error(String(error));
        stalls = received - resumedAt >= RESUME_PROGRESS_BYTES ? 1 : stalls + 1;
        resumedAt = received;
        if (
          stopped() !== undefined ||
          options.signal.aborted ||
          stalls > ORIGIN_RESUMES ||
          opened.size === undefined ||
          received >= opened.size
        ) {
          throw cause;
        }
        options.onResume?.(received, cause);
        const next = await options.reopen(received);
        const resumed =
          received === 0
            ? next.status === 200
            : next.status === 206 && rangeStart(next.headers['content-range']) === received;
        const reason = stopped();
        if (!resumed || reason !== undefined) {
          next.cancel(reason ?? cause);
          throw reason ?? cause;
        }
        current = next;
      }
    }
  }
  return {
    blocks: blocks(),
    cancel: (reason) => {
      cancelled = reason;
      current.cancel(reason);
    },
  };
}

/** The first byte a `Content-Range: bytes <first>-<last>/<size>` names, or undefined. */
function rangeStart(header: string | string[] | undefined): number | undefined {
  const match =
    typeof header === 'string' ? /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(header.trim()) : null;
  return match?.[1] === undefined ? undefined : Number(match[1]);
}
