/**
 * A registry's 429 with `Retry-After`, honoured: until the time it names, requests that would
 * meet the same limit are answered at once instead of being sent (Docker Hub's pull limits
 * count every manifest GET, and asking again before the reset only spends the allowance of
 * those who share it). A limit is held per registry, per credential (Docker Hub counts an
 * account's pulls, or an anonymous client's by address), per kind of request (Docker Hub counts
 * manifest GETs only: a manifest's 429 must not stop the blobs of a pull under way) and per
 * method (its HEADs are free, so a GET's 429 does not stop them).
 *
 * Some requests are never held: the `/v2/` ping (a held ping answered without its challenge
 * would leave clients that send credentials only when challenged never sending them) and a
 * request that carries on a transfer already started (a resume, a late range read), which the
 * registry is asked about itself: failing it would fail a pull the registry may well serve.
 */
import { createHash } from 'node:crypto';

/** Longest hold, in ms: a registry asking for hours is asked again after this. */
export const MAX_HOLD_MS = 60 * 60 * 1000;
/** Holds kept at most; the oldest go first (one per registry, kind, method and credential). */
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

/** What a request asks a registry for: a 429 holds only requests of the same kind. */
export type RegistryRequestKind = 'manifest' | 'blob' | 'referrers' | 'ping';

/** A request to a registry, as far as its rate limits go. */
export interface LimitedRequest {
  /** The registry's host (`docker.io`). */
  readonly registry: string;
  readonly kind: RegistryRequestKind;
  readonly method: string;
  /** The Authorization header sent, if any (kept only as a hash). */
  readonly authorization: string | undefined;
  /**
   * The request carries on a transfer already started (a resume from a byte past 0, a late
   * range read of a blob being served): never held. Default false.
   */
  readonly started?: boolean;
}

/** A registry answer's headers, from node:http or the raw client. */
export type LimitHeaders = Readonly<Record<string, string | readonly string[] | undefined>>;

export interface RateLimitHoldsOptions {
  /** The clock, in ms since the epoch (default `Date.now`; tests move their own). */
  readonly now?: () => number;
  /**
   * Called when a 429 starts a hold (`answered`) and when a request is held instead of sent
   * (`held`): the services count both in their metrics.
   */
  readonly count?: (registry: string, outcome: 'answered' | 'held') => void;
}

export class RateLimitHolds {
  /** key -> when the hold ends (Date.now() ms), oldest first. */
  readonly #until = new Map<string, number>();
  readonly #now: () => number;
  readonly #count: ((registry: string, outcome: 'answered' | 'held') => void) | undefined;

  constructor(options: RateLimitHoldsOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#count = options.count;
  }

  /** `note` with the `Retry-After` read from an answer's headers (the first, if several). */
  noteAnswer(request: LimitedRequest, status: number, headers: LimitHeaders): number | undefined {
    const value = headers['retry-after'];
    return this.note(request, status, typeof value === 'string' ? value : value?.[0]);
  }

  /**
   * Notes a registry's answer: a 429 with a readable `Retry-After` starts (or moves) a hold;
   * returns the hold's length in ms when one started, for the caller's log line.
   */
  note(
    request: LimitedRequest,
    status: number,
    retryAfter: string | undefined,
  ): number | undefined {
    if (status !== 429 || request.kind === 'ping') {
      // A ping is never held, so its 429 starts nothing.
      return undefined;
    }
    const ms = retryAfterMs(retryAfter, this.#now());
    if (ms === undefined || ms === 0) {
      return undefined;
    }
    const key = holdKey(request);
    this.#until.delete(key);
    this.#until.set(key, this.#now() + ms);
    for (const [oldest] of this.#until) {
      if (this.#until.size <= MAX_HOLDS) {
        break;
      }
      this.#until.delete(oldest);
    }
    this.#count?.(request.registry, 'answered');
    return ms;
  }

  /** The hold a request would meet now, if any. */
  held(request: LimitedRequest): HeldLimit | undefined {
    if (request.kind === 'ping' || request.started === true) {
      return undefined;
    }
    const key = holdKey(request);
    const until = this.#until.get(key);
    if (until === undefined) {
      return undefined;
    }
    const left = until - this.#now();
    if (left <= 0) {
      this.#until.delete(key);
      return undefined;
    }
    this.#count?.(request.registry, 'held');
    return { retryAfterS: Math.max(1, Math.ceil(left / 1000)) };
  }
}

/** A hold's key; the credential only as a hash, so no secret is kept in memory longer. */
function holdKey({ registry, kind, method, authorization }: LimitedRequest): string {
  const credential =
    authorization === undefined
      ? 'anonymous'
      : createHash('sha256').update(authorization).digest('base64url');
  return `${registry} ${kind} ${method} ${credential}`;
}

/** The answer a hold gives instead of the registry: a 429 with its OCI error body. */
export function heldAnswer(
  registry: string,
  held: HeldLimit,
): { readonly headers: Record<string, string>; readonly body: Buffer } {
  const body = heldAnswerBody(registry, held.retryAfterS);
  return {
    headers: {
      'content-type': 'application/json',
      'content-length': String(body.length),
      'retry-after': String(held.retryAfterS),
    },
    body,
  };
}

/** The OCI error body of an answer a hold gives instead of the registry. */
function heldAnswerBody(registry: string, retryAfterS: number): Buffer {
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
