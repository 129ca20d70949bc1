/**
 * A registry's 429 with `Retry-After`, honoured: until the time it names, requests that would
 * meet the same limit are answered at once instead of being sent (Docker Hub's pull limits
 * count every manifest GET, and asking again before the reset only spends the allowance of
 * those who share it). A limit is held per registry, per credential (Docker Hub counts an
 * account's pulls, or an anonymous client's by address) and per method (its HEADs are free, so
 * a GET's 429 does not stop them).
 */
import { createHash } from 'node:crypto';

/** Longest hold, in ms: a registry asking for hours is asked again after this. */
export const MAX_HOLD_MS = 60 * 60 * 1000;
/** Holds kept at most; the oldest go first (one per registry, credential and method). */
const MAX_HOLDS = 10_000;

/**
 * Milliseconds a `Retry-After` value asks to wait (delay-seconds or an HTTP date), at most
 * `MAX_HOLD_MS`; undefined when it is absent or unreadable.
 */
export function retryAfterMs(value: string | undefined, now = Date.now()): number | undefined {
  if (value === undefined) {
    return undefined;
  }
  const text = value.trim();
  if (/^[+-]?\d+$/.test(text)) {
    // delay-seconds is a non-negative integer; a signed one is not read as a year either.
    return /^\d+$/.test(text) ? Math.min(Number(text) * 1000, MAX_HOLD_MS) : undefined;
  }
  const ms = Date.parse(text) - now;
  if (!Number.isFinite(ms)) {
    return undefined;
  }
  return Math.min(Math.max(ms, 0), MAX_HOLD_MS);
}

/** What a held request is answered with. */
export interface HeldLimit {
  /** Whole seconds left, at least 1: the `Retry-After` to send. */
  readonly retryAfterS: number;
}

export class RateLimitHolds {
  /** key -> when the hold ends (Date.now() ms), oldest first. */
  readonly #until = new Map<string, number>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /**
   * Notes a registry's answer: a 429 with a readable `Retry-After` starts (or moves) a hold;
   * returns the hold's length in ms when one started, for the caller's log line.
   */
  note(
    registry: string,
    method: string,
    authorization: string | undefined,
    status: number,
    retryAfter: string | undefined,
  ): number | undefined {
    if (status !== 429) {
      return undefined;
    }
    const ms = retryAfterMs(retryAfter, this.#now());
    if (ms === undefined || ms === 0) {
      return undefined;
    }
    const key = holdKey(registry, method, authorization);
    this.#until.delete(key);
    this.#until.set(key, this.#now() + ms);
    for (const [oldest] of this.#until) {
      if (this.#until.size <= MAX_HOLDS) {
        break;
      }
      this.#until.delete(oldest);
    }
    return ms;
  }

  /** The hold a request would meet now, if any. */
  held(registry: string, method: string, authorization: string | undefined): HeldLimit | undefined {
    const key = holdKey(registry, method, authorization);
    const until = this.#until.get(key);
    if (until === undefined) {
      return undefined;
    }
    const left = until - this.#now();
    if (left <= 0) {
      this.#until.delete(key);
      return undefined;
    }
    return { retryAfterS: Math.max(1, Math.ceil(left / 1000)) };
  }
}

/** A hold's key; the credential only as a hash, so no secret is kept in memory longer. */
function holdKey(registry: string, method: string, authorization: string | undefined): string {
  const credential =
    authorization === undefined
      ? 'anonymous'
      : createHash('sha256').update(authorization).digest('base64url');
  return `${registry} ${method} ${credential}`;
}

/** The OCI error body of an answer a hold gives instead of the registry. */
export function heldAnswerBody(registry: string, retryAfterS: number): Buffer {
  return Buffer.from(
    JSON.stringify({
      errors: [
        {
          code: 'TOOMANYREQUESTS',
          message: `${registry} rate-limited this credential; not asking it again for ${retryAfterS} s (its Retry-After)`,
        },
      ],
    }),
  );
}
