/**
 * Hand-out tokens: the tracker's signed permission for one peer to fetch the pieces of one
 * blob, valid for a few minutes. The tracker puts one in every hand-out it sends; the peer
 * presents it on every piece request; peers and the seed server check it with the tracker's
 * public key, without asking anyone.
 *
 *   token  := base64url(claims JSON) "." base64url(Ed25519 signature of the first part)
 *   claims := { "blob": <digest>, "peer": <peer id>, "exp": <ms since the epoch> }
 *
 * Sent as `Authorization: Shoal-Piece <token>`, with `Shoal-Peer: <id>` naming the requester.
 * Without client certificates the peer id is a claim: the token is a bearer token scoped to
 * (blob, peer) for its lifetime, and keeping hand-outs private (each agent reads only its own)
 * is what keeps it from non-members.
 */
import { sign, verify, type KeyObject } from 'node:crypto';

import { z } from 'zod';

import { digestText, peerId } from './messages/common.js';

/** The `Authorization` scheme of a piece request. */
export const PIECE_AUTH_SCHEME = 'Shoal-Piece';
/** The header in which a piece request names its requester (lowercase, as node reports it). */
export const PIECE_PEER_HEADER = 'shoal-peer';
/**
 * The header in which a piece request to the seed server names the peers its asker cannot get
 * the piece from (comma-separated ids): those it could not connect to or that went silent
 * lately, and holders of the piece with a request of its download in flight for longer than
 * the endgame's lateness (slow to serve it). The copies the seed sent them do not count against
 * the asker in its fan-out rationing (see `notFromPeers`).
 */
export const PIECE_NOT_FROM_HEADER = 'shoal-not-from';
/**
 * The header (value `1`) in which a piece request to the seed server says that the swarm does
 * not hear the asker now: its haves or wants do not reach the swarm's streams (NATS down for
 * it, JetStream refusing them or leaving them unacknowledged past 1.5 s, as a cluster electing
 * a stream's new leader after a server went does), or its want has gone 4 s without a
 * hand-out. Told to get a piece from the agent that got it, it could not learn which one: the
 * seed's rationing does not refuse it (the copy still counts for the others).
 */
export const PIECE_UNHEARD_HEADER = 'shoal-unheard';
/**
 * The header in which a piece request to the seed server says that the asker's download has
 * starved: no piece came to it for its lateness with every request it has in flight late, or
 * for a second with none in flight. The value is that lateness in ms (twice its typical piece
 * time, at least a second). The seed's rationing does not hold against it the copies it
 * handed out longer ago than that (never less than `MIN_STARVED_LATE_MS`): they went to agents
 * that did not pass them on in that time (a slow node, receiving them or sending them on).
 */
export const PIECE_STARVED_HEADER = 'shoal-starved';
/**
 * The header of the seed server's refusal of a piece it rationed (429): every piece of the
 * blob it would refuse that asker now, as it asked (its exemptions taken into account: each
 * piece handed to another agent, being sent or within its fan-out window), as
 * `encodePieceBitmap` writes it. The asker leaves those to its peers for the seed's first
 * deferral, counting no refusal, except where it would ask with exemptions the refused request
 * did not carry, instead of asking for them one by one only to be turned away: a round trip
 * each on its link, while its requests to the seed are few.
 */
export const PIECE_RATIONED_HEADER = 'shoal-rationed';
/**
 * The least lateness the seed takes from `PIECE_STARVED_HEADER`, in ms: an agent's own least.
 * A smaller value would all but end the rationing for whoever sends it.
 */
export const MIN_STARVED_LATE_MS = 1000;

/** The lateness (ms) a `PIECE_STARVED_HEADER` value says, or undefined when it says none. */
export function starvedLateMs(value: string | undefined): number | undefined {
  if (value === undefined || !/^[0-9]{1,9}$/.test(value)) {
    return undefined;
  }
  return Number(value);
}
/** Most peers one `PIECE_NOT_FROM_HEADER` names; more are left out. */
export const MAX_NOT_FROM_PEERS = 16;
/** Longest token accepted, in characters; real ones are about 250. */
export const MAX_HANDOUT_TOKEN_LENGTH = 1024;

export const handoutTokenClaims = z.strictObject({
  /** The blob whose pieces the token opens. */
  blob: digestText,
  /** The peer the tracker handed the blob's peers to. */
  peer: peerId,
  /** When the token stops being accepted, in ms since the epoch. */
  exp: z.int().positive(),
});
export type HandoutTokenClaims = z.infer<typeof handoutTokenClaims>;

/** Why a token was not accepted for a request; stable, used as a metric label. */
export type HandoutTokenRefusal =
  'missing' | 'malformed' | 'bad-signature' | 'expired' | 'wrong-blob' | 'wrong-peer';

/** Signs claims with the tracker's Ed25519 private key. */
export function signHandoutToken(key: KeyObject, claims: HandoutTokenClaims): string {
  const payload = Buffer.from(JSON.stringify(handoutTokenClaims.parse(claims))).toString(
    'base64url',
  );
  const signature = sign(null, Buffer.from(payload, 'ascii'), key).toString('base64url');
  return `${payload}.${signature}`;
}

const TOKEN_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

/**
 * Checks a token's form and signature against any of `keys` (several during a key rotation)
 * and returns its claims. Expiry and scope depend on the request: see `checkHandoutClaims`.
 */
export function verifyHandoutToken(
  token: string,
  keys: readonly KeyObject[],
): { ok: true; claims: HandoutTokenClaims } | { ok: false; reason: 'malformed' | 'bad-signature' } {
  if (token.length > MAX_HANDOUT_TOKEN_LENGTH || !TOKEN_SHAPE.test(token)) {
    return { ok: false, reason: 'malformed' };
  }
  const dot = token.indexOf('.');
  const payload = token.slice(0, dot);
  const signature = Buffer.from(token.slice(dot + 1), 'base64url');
  const signed = Buffer.from(payload, 'ascii');
  if (!keys.some((key) => verify(null, signed, key, signature))) {
    return { ok: false, reason: 'bad-signature' };
  }
  let json: unknown;
  try {
    json = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  const claims = handoutTokenClaims.safeParse(json);
  return claims.success ? { ok: true, claims: claims.data } : { ok: false, reason: 'malformed' };
}

/** What a piece request asks for, to hold a token's claims against. */
export interface PieceRequestScope {
  /** The blob of the requested piece, as it appears in the path (`algorithm:hex`). */
  readonly blob: string;
  /** The requester's claimed peer id (`Shoal-Peer`), if it sent one. */
  readonly peer: string | undefined;
  /** Now, in ms since the epoch. */
  readonly now: number;
  /** Clock difference tolerated between the tracker and this host, in ms. */
  readonly skewMs: number;
}

/** The reason verified claims do not cover this request, or undefined when they do. */
export function checkHandoutClaims(
  claims: HandoutTokenClaims,
  scope: PieceRequestScope,
): HandoutTokenRefusal | undefined {
  if (scope.now > claims.exp + scope.skewMs) {
    return 'expired';
  }
  if (claims.blob !== scope.blob) {
    return 'wrong-blob';
  }
  if (claims.peer !== scope.peer) {
    return 'wrong-peer';
  }
  return undefined;
}

/** The headers a piece request carries its token in. */
export function pieceAuthHeaders(token: string, peer: string): Record<string, string> {
  return { authorization: `${PIECE_AUTH_SCHEME} ${token}`, [PIECE_PEER_HEADER]: peer };
}

/** The `PIECE_NOT_FROM_HEADER` value naming `peers` (at most `MAX_NOT_FROM_PEERS`). */
export function notFromHeader(peers: readonly string[]): string {
  return peers.slice(0, MAX_NOT_FROM_PEERS).join(',');
}

/**
 * The peer ids a `PIECE_NOT_FROM_HEADER` value names: at most `MAX_NOT_FROM_PEERS`,
 * only well-formed ids (anything else in the list is skipped).
 */
export function notFromPeers(value: string | undefined): string[] {
  if (value === undefined || value === '') {
    return [];
  }
  return value
    .split(',', MAX_NOT_FROM_PEERS)
    .map((id) => id.trim())
    .filter((id) => peerId.safeParse(id).success);
}
