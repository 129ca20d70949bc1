/**
 * Hand-out tokens for askers: one per (blob, peer), signed with the tracker's key. A token is
 * reused until half its lifetime has passed, so a download asking every few hundred ms does
 * not make every peer it talks to verify a new signature each time.
 */
import type { KeyObject } from 'node:crypto';

import { signHandoutToken } from '@shoal/proto';

/** Tokens remembered at once; past it the map is cleared (they are cheap to sign again). */
const MAX_REMEMBERED = 65_536;

export class HandoutTokens {
  readonly #key: KeyObject;
  readonly #ttlMs: number;
  readonly #issued = new Map<string, { token: string; exp: number }>();

  /** `ttlMs`: how long a token is accepted, in ms. */
  constructor(key: KeyObject, ttlMs: number) {
    this.#key = key;
    this.#ttlMs = ttlMs;
  }

  /** A token for `peer` to fetch pieces of `blob`, valid for at least half the lifetime. */
  tokenFor(blob: string, peer: string, now: number): string {
    const key = `${blob}/${peer}`;
    const known = this.#issued.get(key);
    if (known !== undefined && known.exp - now > this.#ttlMs / 2) {
      return known.token;
    }
    if (this.#issued.size >= MAX_REMEMBERED) {
      this.#issued.clear();
    }
    const exp = now + this.#ttlMs;
    const token = signHandoutToken(this.#key, { blob, peer, exp });
    this.#issued.set(key, { token, exp });
    return token;
  }
}
