/**
 * A blob read from the origin over several connections at once, in stripes of a few MiB
 * (`Range: bytes=<first>-<last>` each), and handed on in order.
 *
 * One TCP flow from a registry often does not fill the link it crosses: a shaped 25 Mbit/s
 * link carried 0.82 of its rate to the seed server over one connection and 0.91 over three
 * (bench/README.md), and a far registry's round trip caps a single flow lower still. The seed
 * server reads each blob of the cluster once, and every agent waits on what it has read, so
 * it reads a large blob over a few connections at once, as Dragonfly's back-to-source does.
 *
 * Memory is bounded: a stripe is read only while it is among the next `streams` stripes from
 * the one being handed on, each into a buffer of its own that is reused once handed on, so a
 * body holds at most `streams` stripe buffers (and the blocks of its open transfers). The
 * stripe being handed on goes out as its bytes arrive; the ones after it wait in their
 * buffers. A stripe's transfer that breaks off resumes from where it stopped (`resumingBody`);
 * one that cannot be read fails the whole body, and the other transfers stop.
 */
import type { OpenedBlob } from './blob-reader.js';
import {
  contentRange,
  ORIGIN_RESUMES,
  resumingBody,
  waitBeforeAsking,
  type ResumingBody,
} from './resume.js';

/** Default bytes per stripe: 64 stripes for a 256 MiB layer, a request per 4 MiB. */
export const STRIPE_BYTES = 4 * 1024 * 1024;

/**
 * Stripe buffers kept between bodies, so that each blob does not touch fresh memory (a page
 * fault per 4 KiB: on a virtual machine that costs as much as hashing the bytes).
 */
export class StripeBuffers {
  readonly #bytes: number;
  readonly #maxIdle: number;
  readonly #idle: Buffer[] = [];

  /** Keeps up to `maxIdle` buffers of `bytes`; buffers of other sizes are not kept. */
  constructor(bytes: number, maxIdle: number) {
    this.#bytes = bytes;
    this.#maxIdle = maxIdle;
  }

  take(bytes: number): Buffer {
    return (bytes === this.#bytes ? this.#idle.pop() : undefined) ?? Buffer.allocUnsafeSlow(bytes);
  }

  give(buffer: Buffer): void {
    if (buffer.length === this.#bytes && this.#idle.length < this.#maxIdle) {
      this.#idle.push(buffer);
    }
  }
}

export interface StripeOptions {
  /** The blob's size, from the first stripe's `Content-Range`. */
  readonly size: number;
  /** Bytes per stripe (default `STRIPE_BYTES`); the first stripe, already asked, is as long. */
  readonly stripeBytes?: number;
  /** Stripes read at once, the one being handed on included (at least 1). */
  readonly streams: number;
  /**
   * Bytes of the first stripe to arrive before the others are asked for (default 0: at once):
   * the first bytes of a blob get the link to themselves, since a cold pull waits on them.
   */
  readonly wideAfterBytes?: number;
  /**
   * Asks the origin for the blob's bytes `first` to `last` (both included). An error it throws
   * is asked again after a wait, as an answer other than a 206 from `first` is, unless `final`
   * says it ends the body (a refusal: asking again would not help).
   */
  readonly fetch: (first: number, last: number, signal: AbortSignal) => Promise<OpenedBlob>;
  /** Whether an error `fetch` threw ends the body at once (default: none does). */
  readonly final?: (error: Error) => boolean;
  readonly signal: AbortSignal;
  /**
   * A stripe's transfer broke off at byte `at` of the blob, or its request failed (`at` its
   * first byte), and it is asked again from there.
   */
  readonly onResume?: (at: number, cause: Error) => void;
  /** A number in [0, 1) for the jitter of the waits between requests (default Math.random). */
  readonly random?: () => number;
  /** Where stripe buffers come from and go back to (default: a pool of this body's own). */
  readonly buffers?: StripeBuffers;
}

/** One stripe of the blob: where it is and what of it has arrived. */
interface Stripe {
  readonly first: number;
  readonly length: number;
  readonly buffer: Buffer;
  filled: number;
  /** Its transfer, once asked: cancelled when the body fails or is cancelled. */
  body: ResumingBody | undefined;
}

/**
 * The blob's size when `answer` is a 206 to a range from byte 0 that names it, else
 * undefined (a registry that ignored Range answers 200; one that sent `*` cannot be striped).
 */
export function stripedSize(answer: OpenedBlob): number | undefined {
  if (answer.status !== 206) {
    return undefined;
  }
  const range = contentRange(answer.headers['content-range']);
  return range?.first === 0 && range.size !== undefined && range.last < range.size
    ? range.size
    : undefined;
}

const asError = (error: unknown): Error =>
  error instanceof Error ? error : new Error(String(error));

/**
 * The blob's bytes in order, read in stripes over up to `streams` connections. `first` is
 * the origin's 206 to the first stripe (`bytes=0-<stripeBytes - 1>`, see `stripedSize`).
 * Blocks are lent until the next is asked for, as `OpenedBlob.blocks` are; the stripes after
 * the first are asked for once the first block is asked for, so a body cancelled unread costs
 * one request. A blob of one stripe is `first`'s body as it comes, resumed as any.
 */
export function stripedBody(first: OpenedBlob, options: StripeOptions): ResumingBody {
  const { size, streams } = options;
  const stripeBytes = options.stripeBytes ?? STRIPE_BYTES;
  const random = options.random ?? Math.random;
  const final = options.final ?? (() => false);
  if (size <= stripeBytes) {
    return resumingBody(first, {
      offset: 0,
      reopen: (from) => options.fetch(from, size - 1, options.signal),
      signal: options.signal,
      ...(options.onResume === undefined ? {} : { onResume: options.onResume }),
      random,
    });
  }
  const buffers = options.buffers ?? new StripeBuffers(stripeBytes, streams);
  const count = Math.ceil(size / stripeBytes);
  const stop = new AbortController();
  const signal = AbortSignal.any([options.signal, stop.signal]);
  const aborted = (): boolean => signal.aborted;
  const stripes: Stripe[] = [];
  /** Buffers of stripes handed on, for the next. */
  const free: Buffer[] = [];
  /** The stripe being handed on. */
  let cursor = 0;
  /** Whether the stripes after the first may be asked for yet. */
  let wide = (options.wideAfterBytes ?? 0) <= 0;
  let started = false;
  let failure: Error | undefined;
  let waiter: (() => void) | undefined;

  const wake = (): void => {
    const resolve = waiter;
    waiter = undefined;
    resolve?.();
  };
  const fail = (error: Error): void => {
    if (failure === undefined) {
      failure = error;
      stop.abort(error);
      first.cancel(error);
      for (const stripe of stripes) {
        stripe.body?.cancel(error);
      }
    }
    wake();
  };
  /** `fetch`, a final error ending the body at once. */
  const ask = async (from: number, last: number): Promise<OpenedBlob> => {
    try {
      return await options.fetch(from, last, signal);
    } catch (error) {
      const cause = asError(error);
      if (final(cause)) {
        fail(cause);
      }
      throw cause;
    }
  };

  /** Asks for the stripes the window allows: the next `streams` from the cursor. */
  const launch = (): void => {
    const window = started && wide ? streams : 1;
    while (failure === undefined && stripes.length < count && stripes.length < cursor + window) {
      const index = stripes.length;
      const start = index * stripeBytes;
      const stripe: Stripe = {
        first: start,
        length: Math.min(stripeBytes, size - start),
        buffer: free.pop() ?? buffers.take(stripeBytes),
        filled: 0,
        body: undefined,
      };
      stripes.push(stripe);
      void read(stripe, index === 0 ? first : undefined).catch((error: unknown) => {
        fail(asError(error));
      });
    }
  };

  /**
   * An answer for the rest of a stripe: a 206 from its byte `from`, asked again after a wait
   * when it fails (within `ORIGIN_RESUMES` in a row).
   */
  const open = async (stripe: Stripe, from: number): Promise<OpenedBlob> => {
    const last = stripe.first + stripe.length - 1;
    for (let failures = 1; ; failures += 1) {
      let cause: Error;
      try {
        const answer = await ask(from, last);
        if (
          answer.status === 206 &&
          contentRange(answer.headers['content-range'])?.first === from
        ) {
          return answer;
        }
        cause = new Error(
          `bytes ${String(from)}-${String(last)}: the origin answered ${String(answer.status)}`,
        );
        answer.cancel(cause);
      } catch (error) {
        cause = asError(error);
      }
      if (signal.aborted || failures > ORIGIN_RESUMES) {
        throw failure ?? cause;
      }
      options.onResume?.(from, cause);
      await waitBeforeAsking(failures, random, signal);
      // Read through a call: the wait may have ended with an abort, which narrowing misses.
      if (aborted()) {
        throw failure ?? cause;
      }
    }
  };

  /**
   * Reads a stripe into its buffer: `opened` (the first stripe's answer) or answers it asks
   * for. A transfer that breaks off resumes (`resumingBody`); one that ends cleanly short of
   * the stripe (a server that sent less than asked) is asked again for the rest, within the
   * same budget; bytes past the stripe's end are not read.
   */
  const read = async (stripe: Stripe, opened: OpenedBlob | undefined): Promise<void> => {
    const last = stripe.first + stripe.length - 1;
    let answer = opened;
    for (let shortEnds = 0; stripe.filled < stripe.length; shortEnds += 1) {
      if (shortEnds > ORIGIN_RESUMES) {
        throw new Error(
          `bytes ${String(stripe.first)}-${String(last)}: the origin kept sending less than asked (${String(stripe.filled)} bytes)`,
        );
      }
      if (shortEnds > 0) {
        options.onResume?.(stripe.first + stripe.filled, new Error('the range ended short'));
      }
      const from = stripe.first + stripe.filled;
      answer ??= await open(stripe, from);
      if (failure !== undefined) {
        answer.cancel(failure);
        return;
      }
      const body = resumingBody(answer, {
        offset: from,
        reopen: (resumeFrom) => ask(from + resumeFrom, last),
        signal,
        onResume: (at, cause) => options.onResume?.(from + at, cause),
        random,
      });
      answer = undefined;
      stripe.body = body;
      for await (const block of body.blocks) {
        const room = stripe.length - stripe.filled;
        block.copy(stripe.buffer, stripe.filled, 0, Math.min(block.length, room));
        stripe.filled += Math.min(block.length, room);
        if (!wide && stripe.filled >= (options.wideAfterBytes ?? 0)) {
          wide = true;
          launch();
        }
        wake();
        if (stripe.filled === stripe.length) {
          // A range answered past its end: the rest is another stripe's.
          break;
        }
      }
    }
    if (!wide) {
      // A first stripe shorter than `wideAfterBytes`.
      wide = true;
      launch();
    }
  };

  async function* blocks(): AsyncGenerator<Buffer> {
    let complete = false;
    try {
      started = true;
      launch();
      let at = 0;
      while (cursor < count) {
        if (failure !== undefined) {
          throw failure;
        }
        const stripe = stripes[cursor];
        if (stripe === undefined) {
          throw new Error(`stripe ${String(cursor)} was never asked for`);
        }
        if (at < stripe.filled) {
          const view = stripe.buffer.subarray(at, stripe.filled);
          at = stripe.filled;
          yield view;
        } else if (at === stripe.length) {
          // Handed on whole, and the caller asked for more: its buffer is free.
          free.push(stripe.buffer);
          stripe.body = undefined;
          cursor += 1;
          at = 0;
          launch();
        } else {
          await new Promise<void>((resolve) => {
            waiter = resolve;
          });
        }
      }
      complete = true;
      for (const buffer of free.splice(0)) {
        buffers.give(buffer);
      }
    } finally {
      if (!complete) {
        fail(failure ?? new Error('the blob was not read to its end'));
      }
    }
  }

  return { blocks: blocks(), cancel: fail };
}
