/**
 * A blob transfer from the origin that breaks off (a reset, a load balancer's time limit, the
 * idle timeout) is asked again from the byte it stopped at, rather than failing the fetch or
 * starting it over from zero: the agent's origin fetch and the seed server's ingest read the
 * blob through this.
 */
import { setTimeout as sleep } from 'node:timers/promises';

import { ShoalError } from '@shoal/runtime';

import type { OpenedBlob } from './blob-reader.js';
import type { UpstreamAnswer } from './client.js';

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

/**
 * Bytes an answer that ended cleanly short of what was asked for (a CDN capping its ranges)
 * must have brought for its end not to count against `ORIGIN_RESUMES`.
 */
const CAPPED_PROGRESS_BYTES = 64 * 1024;

/**
 * Answers to a resume that end the body's reading with its credential at once: the registry
 * refused it (then `nextSource`, if given, may move the read to another).
 */
const REFUSALS: ReadonlySet<number> = new Set([401, 403]);

/**
 * A resume the registry refused (401, 403): the credential that opened the transfer no longer
 * opens the blob (a token that expired mid-transfer). `answer` is the refusal as it came (its
 * body at most 64 KiB), for a caller holding other credentials to try those for the rest and,
 * should they fail too, to hand its client its registry's own answer.
 */
export class ResumeRefusedError extends ShoalError<'RESUME_REFUSED'> {
  override readonly name = 'ResumeRefusedError';
  /** Not a field: a logged error would carry the refusal's headers and body. */
  readonly #answer: UpstreamAnswer;
  /** The byte the refused resume asked from: every byte before it came. */
  readonly at: number;

  constructor(answer: UpstreamAnswer, at: number, cause: Error) {
    // An upstream failure: whoever reads the body had the answer's headers long before.
    super(
      'RESUME_REFUSED',
      502,
      `resuming at byte ${String(at)}: the origin answered ${String(answer.status)}`,
      { cause },
    );
    this.#answer = answer;
    this.at = at;
  }

  /** The refusal as it came (its body at most 64 KiB). */
  get answer(): UpstreamAnswer {
    return this.#answer;
  }
}

/** First wait before asking again after a resume request failed, in ms; it doubles each time. */
const REOPEN_BACKOFF_MS = 250;
/** The longest wait before asking again after a failed resume request, in ms. */
const MAX_REOPEN_BACKOFF_MS = 8000;

/** Asks for a blob from byte `from` on (`BlobReader.open` with `from`). */
export type Reopen = (from: number) => Promise<OpenedBlob>;

export interface ResumeOptions {
  /** The blob from byte `from` on (`BlobReader.open` with `from`), with the same credentials. */
  readonly reopen: Reopen;
  /**
   * The source reading the blob can go no further (`why`): the registry refused its resume (a
   * `ResumeRefusedError`), or, for a source this gave, its first answer failed or was not the
   * rest. Returns how to ask another source (another client's credential, at its own
   * registry) for the rest, from the byte the read stopped at, or undefined to end the body
   * with `why`; may throw, to end it with that. Absent: a refused resume ends the body.
   */
  readonly nextSource?: (why: Error) => Reopen | undefined;
  /** The fetch was stopped: a failure then is not resumed. */
  readonly signal: AbortSignal;
  /** The transfer broke off at byte `at` and is asked again from there. */
  readonly onResume?: (at: number, cause: Error) => void;
  /** A number in [0, 1) for the jitter of the waits after failed resume requests (default Math.random). */
  readonly random?: () => number;
  /**
   * `opened` answers a request from byte `byte` of a blob of `size` bytes (`BlobReader.open`'s
   * `from`: the rest of a blob another source broke off): a 206 from that byte goes on from
   * it, a 200 of the whole blob after skipping that many bytes. Default: from byte 0.
   */
  readonly from?: { readonly byte: number; readonly size: number };
  /**
   * The read ends before this byte (`BlobReader.open`'s `until`: a part of the blob, read from
   * `from.byte`, which must be given): the blocks stop there, a transfer that breaks off at or
   * past it is not asked again, one that ends short of it is, and `reopen` asks for the range
   * up to it. Default: the blob's end.
   */
  readonly until?: number;
}

/** A blob's body that resumes itself: its blocks, and a way to stop whichever transfer runs. */
export interface ResumingBody {
  readonly blocks: AsyncGenerator<Buffer>;
  /** Stops the transfer running now; the blocks then end with `reason`, never resumed. */
  cancel(reason: Error): void;
}

/**
 * The blocks of `opened` (a 200 with its size; with `until`, bytes up to that one only), and
 * when the transfer breaks off before the end, those of a range request from the byte it
 * stopped at (the whole blob again when no byte had come), up to `ORIGIN_RESUMES` times in a
 * row without `RESUME_PROGRESS_BYTES` of progress. A 206 from that byte goes on from it; a
 * 200 of the whole blob (a registry that ignores Range) goes on after skipping the bytes
 * already received. A resume request that fails (a reset, a timeout, a 5xx, a 206 from
 * another byte) counts as a break without progress and is asked again after a growing,
 * jittered wait (250 ms doubling to 8 s), within the same budget; past it the body ends with
 * the last error. A resume refused (401, 403) moves the read to `nextSource`'s source, from
 * the same byte, or ends the body at once with a `ResumeRefusedError`; a source moved to
 * whose first answer fails moves it on again. Blocks are lent as `opened`'s are; what the
 * bytes are is for the caller to check.
 */
export function resumingBody(opened: OpenedBlob, options: ResumeOptions): ResumingBody {
  const start = options.from?.byte ?? 0;
  /** The whole blob's size (a 200's Content-Length when read from its start). */
  const size = options.from?.size ?? opened.size;
  const until = options.until;
  if (until !== undefined && options.from === undefined) {
    // The answer's Content-Length would be the part's, not the blob's.
    const error = new Error('a part of a blob is read with `from`, which gives the blob’s size');
    opened.cancel(error);
    throw error;
  }
  /** Where the read ends: the range's end, or the blob's. */
  const end = until ?? size;
  let current = opened;
  let cancelled: Error | undefined;
  // Read through a call: `cancel` sets it while a reopen is awaited, which narrowing misses.
  const stopped = (): Error | undefined => cancelled;
  const aborted = (): boolean => options.signal.aborted;
  const random = options.random ?? Math.random;
  // Ends a wait between resume requests at once when the body is cancelled.
  const cancelling = new AbortController();
  const waitSignal = AbortSignal.any([options.signal, cancelling.signal]);
  /** Bytes still to skip at the head of `current` (a 200 answering a resume). */
  let skip = 0;
  /** How the rest is asked for: `options.reopen`, or the source `nextSource` moved to. */
  let reopen = options.reopen;

  /** Bytes of `next` (the answer to a resume from `from`) to skip; undefined: not usable. */
  const usable = (next: OpenedBlob, from: number): number | undefined => {
    // A range is asked for from a byte past 0, or up to `until`.
    if (next.status === 206 && (from > 0 || options.until !== undefined)) {
      const range = contentRange(next.headers['content-range']);
      const sameBlob = range?.size === undefined || size === undefined || range.size === size;
      return range?.first === from && sameBlob ? 0 : undefined;
    }
    if (next.status === 200 && (next.size === undefined || next.size === size)) {
      return from;
    }
    return undefined;
  };
  if (options.from !== undefined) {
    // The answer must be the blob of that size (from byte 0 too: the rest of a read another
    // source broke off before its first byte).
    const first = usable(opened, start);
    if (first === undefined) {
      const error = new Error(
        `reading from byte ${String(start)}: the origin answered ${String(opened.status)}${opened.size === undefined ? '' : ` of ${String(opened.size)} bytes`}`,
      );
      opened.cancel(error);
      throw error;
    }
    skip = first;
  }

  async function* blocks(): AsyncGenerator<Buffer> {
    let received = start;
    let resumedAt = start;
    let stalls = 0;
    /** The last answer ended cleanly short of the end (a 206 of less than asked for). */
    let endedShort = false;
    /** The next request goes to a source `nextSource` just gave: at once, its budget whole. */
    let movedOn = false;
    /** The source asked last is one `nextSource` gave, whose first answer has not come. */
    let untried = false;
    /** `nextSource`'s way to ask for the rest after `why`, or `why` thrown when none is left. */
    const nextSource = (why: Error): Reopen => {
      const next = options.nextSource?.(why);
      if (next === undefined) {
        throw why;
      }
      return next;
    };
    for (;;) {
      try {
        for await (const block of current.blocks) {
          if (skip >= block.length) {
            skip -= block.length;
            continue;
          }
          const rest = skip === 0 ? block : block.subarray(skip);
          skip = 0;
          if (until !== undefined && received + rest.length > until) {
            // The part ends in this block: a registry that ignores Range sends the rest of the
            // blob too, whose transfer is cancelled as this loop ends.
            const last = rest.subarray(0, until - received);
            received = until;
            if (last.length > 0) {
              yield last;
            }
            return;
          }
          received += rest.length;
          yield rest;
        }
        if (end !== undefined && received < end) {
          // An answer that ended cleanly short of what was asked for (a CDN capping its
          // ranges): the rest is asked for as after a break.
          endedShort = true;
          throw new Error(
            `the origin's answer ended at byte ${String(received)}, short of ${String(end)}`,
          );
        }
        return;
      } catch (error) {
        if (
          until !== undefined &&
          received >= until &&
          stopped() === undefined &&
          !options.signal.aborted
        ) {
          // Broken off after the part's last byte (before the rest of a whole 200, or the end
          // of the answer): the part is whole.
          return;
        }
        let cause = error instanceof Error ? error : new Error(String(error));
        let failedReopen = false;
        for (;;) {
          if (movedOn) {
            // Another source, asked at once from the same byte, with a budget of its own.
            movedOn = false;
            stalls = 0;
            resumedAt = received;
            failedReopen = false;
            if (stopped() !== undefined || aborted()) {
              throw stopped() ?? cause;
            }
          } else {
            const progress = received - resumedAt;
            // A capped answer that brought what it said it would is progress too, however
            // small the cap (not below `CAPPED_PROGRESS_BYTES`, though: an origin dribbling).
            const progressed =
              progress >= RESUME_PROGRESS_BYTES ||
              (endedShort && progress >= CAPPED_PROGRESS_BYTES);
            endedShort = false;
            stalls = progressed ? 1 : stalls + 1;
            resumedAt = received;
            if (
              stopped() !== undefined ||
              options.signal.aborted ||
              stalls > ORIGIN_RESUMES ||
              end === undefined ||
              received >= end
            ) {
              throw stopped() ?? cause;
            }
            options.onResume?.(received, cause);
          }
          if (failedReopen) {
            const ceiling = Math.min(MAX_REOPEN_BACKOFF_MS, REOPEN_BACKOFF_MS * 2 ** (stalls - 1));
            // Over at once when the body is cancelled or the fetch stopped (checked next).
            await sleep(Math.floor(random() * ceiling), undefined, { signal: waitSignal }).catch(
              () => undefined,
            );
            if (stopped() !== undefined || aborted()) {
              throw stopped() ?? cause;
            }
          }
          let next: OpenedBlob;
          try {
            next = await reopen(received);
          } catch (reopenError) {
            if (stopped() !== undefined || aborted()) {
              throw stopped() ?? reopenError;
            }
            cause = reopenError instanceof Error ? reopenError : new Error(String(reopenError));
            if (untried) {
              reopen = nextSource(cause);
              movedOn = true;
            }
            failedReopen = true;
            continue;
          }
          const skipped = usable(next, received);
          const reason = stopped();
          if (reason !== undefined || aborted()) {
            // Stopped while asking: no next source is sought, and nothing is read.
            next.cancel(reason ?? cause);
            throw reason ?? cause;
          }
          if (skipped === undefined) {
            if (REFUSALS.has(next.status)) {
              // The credential no longer opens the blob (a token expired mid-transfer): asking
              // again with it cannot help. The caller may hold another; else the client asks
              // again with a fresh one.
              const refused = new ResumeRefusedError(
                { status: next.status, headers: next.headers, body: next.answer },
                received,
                cause,
              );
              next.cancel(refused);
              cause = refused;
              reopen = nextSource(refused);
              movedOn = true;
              untried = true;
              continue;
            }
            cause = new Error(
              `resuming at byte ${String(received)}: the origin answered ${String(next.status)}`,
              { cause },
            );
            next.cancel(cause);
            if (untried) {
              reopen = nextSource(cause);
              movedOn = true;
            }
            failedReopen = true;
            continue;
          }
          untried = false;
          current = next;
          skip = skipped;
          break;
        }
      }
    }
  }
  return {
    blocks: blocks(),
    cancel: (reason) => {
      cancelled = reason;
      cancelling.abort(reason);
      current.cancel(reason);
    },
  };
}

/**
 * The first byte a `Content-Range: bytes <first>-<last>/<size>` names, and the blob's size
 * unless it is `*`; undefined when the header is not one.
 */
function contentRange(
  header: string | string[] | undefined,
): { readonly first: number; readonly size: number | undefined } | undefined {
  const match =
    typeof header === 'string' ? /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(header.trim()) : null;
  if (match?.[1] === undefined) {
    return undefined;
  }
  return { first: Number(match[1]), size: match[2] === '*' ? undefined : Number(match[2]) };
}
