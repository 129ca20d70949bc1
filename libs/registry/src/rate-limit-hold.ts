/**
 * A registry's 429 honoured: until the time its `Retry-After` names, requests that would
 * meet the same limit are answered at once instead of being sent (Docker Hub's pull limits
 * count every manifest GET, and asking again before the reset only spends the allowance of
 * those who share it). A limit is held per registry, per credential (Docker Hub counts an
 * account's pulls, or an anonymous client's by address), per kind of request (Docker Hub counts
 * manifest GETs only: a manifest's 429 must not stop the blobs of a pull under way) and per
 * method (its HEADs are free, so a GET's 429 does not stop them).
 *
 * A 429 without a readable `Retry-After` (Docker Hub's pull limit often sends none, ECR and
 * GCR throttle without one) holds for a backoff instead: 1 s, doubled by each 429 that comes
 * again within one hold's length after the last hold ended (the limit is still on), up to
 * 60 s; one that comes later starts from 1 s again. Without it every client request would go
 * to the registry, spending the allowance of everyone who shares it.
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
/** The first hold after a 429 without `Retry-After`, in ms. */
export const FIRST_BACKOFF_MS = 1000;
/** The longest hold after 429s without `Retry-After`, in ms. */
export const MAX_BACKOFF_MS = 60_000;

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
  /** key -> the last backoff (after a 429 without `Retry-After`): its length and end. */
  readonly #backoffs = new Map<string, { readonly ms: number; readonly endsAt: number }>();
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
   * Notes a registry's answer: a 429 starts (or moves) a hold, for its `Retry-After` or, when
   * it has none readable, for the backoff; returns the hold's length in ms when one started,
   * for the caller's log line (`Retry-After: 0` starts none).
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
    const key = holdKey(request);
    const ms = retryAfterMs(retryAfter, this.#now()) ?? this.#backoff(key);
    if (ms === 0) {
      return undefined;
    }
    remember(this.#until, key, this.#now() + ms);
    this.#count?.(request.registry, 'answered');
    return ms;
  }

  /** The hold after a 429 without `Retry-After`: doubled while the limit keeps answering. */
  #backoff(key: string): number {
    const now = this.#now();
    const last = this.#backoffs.get(key);
    const stillOn = last !== undefined && now - last.endsAt <= last.ms;
    const ms = stillOn ? Math.min(last.ms * 2, MAX_BACKOFF_MS) : FIRST_BACKOFF_MS;
    remember(this.#backoffs, key, { ms, endsAt: now + ms });
    return ms;
  }

  /** The hold a request would meet now, if any: the request is held (and counted so). */
  held(request: LimitedRequest): HeldLimit | undefined {
    const left = this.#left(request);
    if (left === undefined) {
      return undefined;
    }
    this.#count?.(request.registry, 'held');
    return { retryAfterS: Math.max(1, Math.ceil(left / 1000)) };
  }

  /** Whether a request would meet a hold now; a look, not a request held (not counted). */
  holds(request: LimitedRequest): boolean {
    return this.#left(request) !== undefined;
  }

  /** The ms left of the hold a request would meet now, if any. */
  #left(request: LimitedRequest): number | undefined {
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
    return left;
  }
}

/** Sets `key` as the newest entry of `map`, dropping the oldest beyond `MAX_HOLDS`. */
function remember<T>(map: Map<string, T>, key: string, value: T): void {
  map.delete(key);
  map.set(key, value);
  for (const [oldest] of map) {
    if (map.size <= MAX_HOLDS) {
      break;
    }
    map.delete(oldest);
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
          message: `${registry} rate-limited this credential; not asking it again for ${retryAfterS} s (its Retry-After, or a backoff when it sent none)`,
        },
      ],
    }),
  );
}
