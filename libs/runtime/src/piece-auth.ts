/**
 * Members only: the check every piece endpoint (the agents' peer port, the seed server) runs
 * before it reads a byte. A request must carry a hand-out token the tracker signed for the
 * requested blob and the requesting peer, unexpired. Checking needs no round trip: the
 * tracker's public keys come from a file, and tokens already verified are remembered until
 * they expire, so a piece costs a map lookup after the first.
 */
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';

import {
  checkHandoutClaims,
  PIECE_AUTH_SCHEME,
  PIECE_PEER_HEADER,
  verifyHandoutToken,
  type HandoutTokenClaims,
  type HandoutTokenRefusal,
} from '@shoal/proto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';

import { ConfigError, refusePlaceholderSecret } from './config.js';
import { clientVerified } from './https.js';

/** Clock difference tolerated between the tracker and a serving host, in ms. */
export const TOKEN_CLOCK_SKEW_MS = 30_000;
/** Verified tokens remembered at once; past it the oldest are forgotten. */
const VERIFIED_CACHE_ENTRIES = 4_096;
/** How often expired tokens are swept out of the cache (as new ones come), in ms. */
const SWEEP_INTERVAL_MS = 60_000;

/** `on` (default): piece requests need a hand-out token; `off`: anyone is served. */
export const envPieceAuth = z.enum(['on', 'off']).default('on');

const PEM_BLOCK = /-----BEGIN ([A-Z ]+)-----[\s\S]+?-----END \1-----/g;

/**
 * Reads an Ed25519 private key (PKCS#8 PEM) from `path`: the tracker's hand-out key, or (`what`
 * = 'record') the seed server's record key.
 */
export async function readHandoutPrivateKey(
  path: string,
  what: 'hand-out' | 'record' = 'hand-out',
): Promise<KeyObject> {
  const text = await readKeyFile(path);
  let key: KeyObject;
  try {
    key = createPrivateKey(text);
  } catch (error) {
    throw new ConfigError([`${path}: not a PEM private key (${(error as Error).message})`]);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new ConfigError([
      `${path}: the ${what} key must be Ed25519, not ${key.asymmetricKeyType}`,
    ]);
  }
  return key;
}

/**
 * Reads one or more Ed25519 public keys (PEM blocks, e.g. the current and the next) from
 * `path`: the tracker's hand-out keys, or (`what` = 'record') the seed server's record keys.
 */
export async function readHandoutPublicKeys(
  path: string,
  what: 'hand-out' | 'record' = 'hand-out',
): Promise<KeyObject[]> {
  const text = await readKeyFile(path);
  const keys: KeyObject[] = [];
  for (const [block] of text.matchAll(PEM_BLOCK)) {
    let key: KeyObject;
    try {
      key = createPublicKey(block);
    } catch (error) {
      throw new ConfigError([
        `${path}: a PEM block is not a public key (${(error as Error).message})`,
      ]);
    }
    if (key.asymmetricKeyType !== 'ed25519') {
      throw new ConfigError([
        `${path}: ${what} keys must be Ed25519, not ${key.asymmetricKeyType}`,
      ]);
    }
    keys.push(key);
  }
  if (keys.length === 0) {
    throw new ConfigError([`${path}: holds no PEM public key`]);
  }
  return keys;
}

async function readKeyFile(path: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new ConfigError([`${path}: cannot read the key file (${(error as Error).message})`]);
  }
  refusePlaceholderSecret(path, text);
  return text;
}

/** The outcome of checking one piece request. */
export type PieceAuthResult =
  | { readonly ok: true; readonly claims: HandoutTokenClaims }
  | { readonly ok: false; readonly reason: HandoutTokenRefusal };

/** Checks piece requests' tokens against the tracker's public keys, remembering good ones. */
export class PieceTokenVerifier {
  readonly #keys: readonly KeyObject[];
  readonly #now: () => number;
  /** Tokens whose signature checked out, with their claims; in insertion order. */
  readonly #verified = new Map<string, HandoutTokenClaims>();
  /** When expired tokens were last swept out, in ms. */
  #sweptAt: number;

  /** `now`: the clock in ms since the epoch (default `Date.now`). */
  constructor(keys: readonly KeyObject[], now: () => number = Date.now) {
    this.#keys = keys;
    this.#now = now;
    this.#sweptAt = now();
  }

  /** Tokens remembered. */
  get size(): number {
    return this.#verified.size;
  }

  /** Checks the `Authorization` and `Shoal-Peer` values of a request for a piece of `blob`. */
  check(
    authorization: string | undefined,
    peer: string | undefined,
    blob: string,
  ): PieceAuthResult {
    if (authorization === undefined || authorization === '') {
      return { ok: false, reason: 'missing' };
    }
    const space = authorization.indexOf(' ');
    if (
      space === -1 ||
      authorization.slice(0, space).toLowerCase() !== PIECE_AUTH_SCHEME.toLowerCase()
    ) {
      return { ok: false, reason: 'malformed' };
    }
    const token = authorization.slice(space + 1).trim();
    let claims = this.#verified.get(token);
    if (claims === undefined) {
      const verified = verifyHandoutToken(token, this.#keys);
      if (!verified.ok) {
        return verified;
      }
      claims = verified.claims;
      this.#remember(token, claims);
    }
    const reason = checkHandoutClaims(claims, {
      blob,
      peer,
      now: this.#now(),
      skewMs: TOKEN_CLOCK_SKEW_MS,
    });
    if (reason === 'expired') {
      this.#verified.delete(token);
    }
    return reason === undefined ? { ok: true, claims } : { ok: false, reason };
  }

  #remember(token: string, claims: HandoutTokenClaims): void {
    const now = this.#now();
    // Expired entries go once a minute, not only when the cache is full: a peer that keeps
    // serving would otherwise hold the cache's worth of dead tokens for good.
    if (this.#verified.size >= VERIFIED_CACHE_ENTRIES || now - this.#sweptAt >= SWEEP_INTERVAL_MS) {
      this.#sweptAt = now;
      for (const [known, entry] of this.#verified) {
        if (now > entry.exp + TOKEN_CLOCK_SKEW_MS) {
          this.#verified.delete(known);
        }
      }
    }
    if (this.#verified.size >= VERIFIED_CACHE_ENTRIES) {
      // None expired: the oldest goes (Maps iterate in insertion order).
      const oldest = this.#verified.keys().next();
      if (this.#verified.size >= VERIFIED_CACHE_ENTRIES && oldest.done !== true) {
        this.#verified.delete(oldest.value);
      }
    }
    this.#verified.set(token, claims);
  }
}

/**
 * Why a piece request was refused: its hand-out token, or (with mutual TLS) no client
 * certificate from the cluster CA. Stable, used as a metric label.
 */
export type PieceRefusal = HandoutTokenRefusal | 'client-certificate';

/** What a piece endpoint needs to refuse non-members. */
export interface PieceAuthDeps {
  /** The verifier, or undefined when piece authentication is off. */
  readonly verifier: PieceTokenVerifier | undefined;
  /**
   * Mutual TLS: the connection must have shown a client certificate of the listener's client
   * CA (checked at the handshake). Independent of the token: with both, both are required.
   */
  readonly requireClientCert?: boolean;
  /** Counts refusals by reason. */
  readonly refused: (reason: PieceRefusal) => void;
  readonly logger: Logger;
}

interface PieceParams {
  readonly algorithm: string;
  readonly hex: string;
}

/**
 * A fastify preHandler for a `/pieces/:algorithm/:hex/:index` route: answers 403 (no client
 * certificate of the cluster CA, with mutual TLS), 401 (no, bad or expired token) or 403 (a
 * token for another blob or peer) before the handler runs.
 */
export function pieceAuthPreHandler(deps: PieceAuthDeps) {
  return async (
    request: FastifyRequest<{ Params: PieceParams }>,
    reply: FastifyReply,
  ): Promise<FastifyReply | undefined> => {
    if (deps.requireClientCert === true && !clientVerified(request.raw.socket)) {
      deps.refused('client-certificate');
      deps.logger.warn(
        { reason: 'client-certificate', from: request.ip, path: request.url.slice(0, 256) },
        'piece request refused',
      );
      return reply
        .code(403)
        .send({ error: 'piece request refused: no client certificate from the cluster CA' });
    }
    if (deps.verifier === undefined) {
      return undefined;
    }
    const peerHeader = request.headers[PIECE_PEER_HEADER];
    const peer = typeof peerHeader === 'string' ? peerHeader : undefined;
    const blob = `${request.params.algorithm}:${request.params.hex}`;
    const result = deps.verifier.check(request.headers.authorization, peer, blob);
    if (result.ok) {
      return undefined;
    }
    deps.refused(result.reason);
    const forbidden = result.reason === 'wrong-blob' || result.reason === 'wrong-peer';
    const log = result.reason === 'missing' || result.reason === 'expired' ? 'debug' : 'warn';
    deps.logger[log](
      {
        reason: result.reason,
        peer: peer?.slice(0, 64),
        from: request.ip,
        path: request.url.slice(0, 256),
      },
      'piece request refused',
    );
    return reply
      .code(forbidden ? 403 : 401)
      .header('www-authenticate', PIECE_AUTH_SCHEME)
      .send({ error: `piece request refused: ${result.reason} hand-out token` });
  };
}
