/**
 * Hand-out tokens for askers: one per (blob, peer), signed with the tracker's key. A token is
 * reused until half its lifetime has passed, so a download asking every few hundred ms does
 * not make every peer it talks to verify a new signature each time. The tokens remembered
 * are the most recently used ones (least recently used first out), so a cluster with more
 * downloads in progress than the cache holds re-signs only for the askers idle longest.
 */
import type { KeyObject } from 'node:crypto';

import { signHandoutToken } from '@shoal/proto';

/** Tokens remembered at once by default: (blob, peer) pairs of downloads in progress. */
const MAX_REMEMBERED = 65_536;

export class HandoutTokens {
  readonly #key: KeyObject;
  readonly #ttlMs: number;
  readonly #capacity: number;
  /** (blob, peer) -> token, least recently used first (a Map keeps insertion order). */
  readonly #issued = new Map<string, { token: string; exp: number }>();

  /**
   * `ttlMs`: how long a token is accepted, in ms; `capacity`: most tokens remembered
   * (default 65 536).
   */
  constructor(key: KeyObject, ttlMs: number, capacity = MAX_REMEMBERED) {
    this.#key = key;
    this.#ttlMs = ttlMs;
    this.#capacity = Math.max(1, capacity);
  }

  /** Tokens remembered. */
  get size(): number {
    return this.#issued.size;
  }

  /**
   * Forgets the tokens past half their lifetime at `now` (ms): they are never handed out
   * again, so keeping them until the cache is full would only hold memory for every (blob,
   * peer) of the last hours. Returns the number forgotten.
   */
  prune(now: number): number {
    let pruned = 0;
    for (const [key, { exp }] of this.#issued) {
      if (exp - now <= this.#ttlMs / 2) {
        this.#issued.delete(key);
        pruned += 1;
      }
    }
    return pruned;
  }

  /** A token for `peer` to fetch pieces of `blob`, valid for at least half the lifetime. */
  tokenFor(blob: string, peer: string, now: number): string {
    const key = `${blob}/${peer}`;
    const known = this.#issued.get(key);
    // Taken out and put back (below) at the most recently used end.
    this.#issued.delete(key);
    if (known !== undefined && known.exp - now > this.#ttlMs / 2) {
      this.#issued.set(key, known);
      return known.token;
    }
    if (this.#issued.size >= this.#capacity) {
      const oldest = this.#issued.keys().next();
      if (oldest.done !== true) {
        this.#issued.delete(oldest.value);
      }
    }
    const exp = now + this.#ttlMs;
    const token = signHandoutToken(this.#key, { blob, peer, exp });
    this.#issued.set(key, { token, exp });
    return token;
  }
}
