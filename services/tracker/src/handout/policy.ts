/**
 * The hand-out policy: which members of a blob's swarm to give an asker, best first. Pure:
 * it sees the members, the ask and the load, and returns a ranking, so every rule is
 * unit-tested without NATS. The members it ranks are a sample of the swarm (`sampleWindow`
 * of them, see `BlobHolders.sample`), so a want costs O(limit) however large the swarm.
 */
import type { PeerInfo, PieceRanges } from '@shoal/proto';

import { countMissingFrom, missingRangesWithin, type KnownBitmap } from './pieces.js';

/** One member of a blob's swarm, as a hand-out lists it. */
export interface SwarmMember {
  readonly peer: PeerInfo;
  /** Pieces the member last announced holding. */
  readonly pieces: PieceRanges;
  /** True when the member holds the whole verified blob. */
  readonly complete: boolean;
  /** True for the seed server. */
  readonly seed: boolean;
  /**
   * `pieces` as a bitmap, made once by whoever keeps the member (the swarm view, per have
   * applied; see `pieceBitmap`); absent, it is looked up or made when a want compares sets.
   */
  readonly bits?: KnownBitmap;
}

/** What the asker told the tracker in its piece-want. */
export interface HandoutAsk {
  readonly peer: PeerInfo;
  /** Pieces the asker holds already. */
  readonly have: PieceRanges;
  /** Most members to return (the want's `limit`, 1-64). */
  readonly limit: number;
}

/**
 * How many members of each kind to sample for a want of `limit` peers: twice the limit, so
 * the less loaded half of a sample is handed out, and at least 16, so a small swarm is
 * ranked whole (and exactly as if the policy saw all of it).
 */
export function sampleWindow(limit: number): number {
  return Math.max(16, 2 * limit);
}

/** Recent hand-outs naming a peer (see `LoadTracker`). */
export type LoadOf = (peerId: string) => number;

interface Ranked {
  readonly member: SwarmMember;
  readonly sameZone: boolean;
  readonly load: number;
  /** Pieces the asker lacks that this member holds; Infinity for complete members. */
  readonly useful: number;
}

/**
 * Ranks the members that can help the asker and returns at most `ask.limit` of them.
 * `members` is the whole swarm or a sample of it; every rule holds within what it is given.
 *
 * - The asker itself, and members holding none of the pieces it lacks, are left out. A
 *   complete member holds every piece, and a seed is fetching every piece from the origin
 *   (cut-through), so both always stay in.
 * - Order: non-seeds before seeds (the seed server is the swarm's last resort, so it stays
 *   free for pieces nobody else has), then the asker's zone first (cross-zone traffic costs
 *   money and latency), then fewer recent hand-outs (spreads upload load), then more useful
 *   pieces, then peer id (so equal members are taken in turn as their load grows).
 * - Coverage: when no chosen member can finish the blob (complete, or a seed) but an
 *   unchosen one can, the best of those takes the last place, so the asker always learns of
 *   someone who will hold every piece.
 * - A partial member is returned with the pieces the asker lacks (`held \ have`, computed
 *   anyway to rank it): the rest is of no use to the asker, and the hand-out is smaller to
 *   encode, send and decode. Its set stays whole when the difference would take more ranges.
 *   Complete members and seeds are returned as they are.
 */
export function choosePeers(
  members: readonly SwarmMember[],
  ask: HandoutAsk,
  loadOf: LoadOf,
): SwarmMember[] {
  const ranked: Ranked[] = [];
  const missing = countMissingFrom(ask.have);
  for (const member of members) {
    if (member.peer.id === ask.peer.id) {
      continue;
    }
    const useful = member.complete ? Number.POSITIVE_INFINITY : missing(member.pieces, member.bits);
    if (useful === 0 && !member.seed) {
      continue;
    }
    ranked.push({
      member,
      sameZone: ask.peer.zone !== undefined && member.peer.zone === ask.peer.zone,
      load: loadOf(member.peer.id),
      useful,
    });
  }
  ranked.sort(compareRanked);

  const limit = Math.max(0, ask.limit);
  const chosen = ranked.slice(0, limit);
  if (limit > 0 && !chosen.some((r) => isFinisher(r.member))) {
    const finisher = ranked.slice(limit).find((r) => isFinisher(r.member));
    if (finisher !== undefined) {
      chosen.splice(limit - 1, 1, finisher);
    }
  }
  const lacked = missingRangesWithin(ask.have);
  return chosen.map(({ member }) => offered(member, lacked));
}

/**
 * The member as a hand-out names it: a partial member with only the pieces the asker lacks
 * (`lacked`), unless that takes more ranges than its own set (the schema's bound holds).
 */
function offered(
  member: SwarmMember,
  lacked: (held: PieceRanges, heldBits: KnownBitmap, maxRanges: number) => PieceRanges | undefined,
): SwarmMember {
  if (member.complete || member.seed) {
    return member;
  }
  const pieces = lacked(member.pieces, member.bits, member.pieces.length);
  if (pieces === undefined) {
    return member;
  }
  // Named afresh, without `bits`: that bitmap is of the member's whole set, not of these.
  return { peer: member.peer, pieces, complete: member.complete, seed: member.seed };
}

function compareRanked(a: Ranked, b: Ranked): number {
  if (a.member.seed !== b.member.seed) {
    return a.member.seed ? 1 : -1;
  }
  if (a.sameZone !== b.sameZone) {
    return a.sameZone ? -1 : 1;
  }
  if (a.load !== b.load) {
    return a.load < b.load ? -1 : 1;
  }
  // Compared, not subtracted: two complete members are both Infinity.
  if (a.useful !== b.useful) {
    return a.useful > b.useful ? -1 : 1;
  }
  if (a.member.peer.id === b.member.peer.id) {
    return 0;
  }
  return a.member.peer.id < b.member.peer.id ? -1 : 1;
}

/** A member that holds, or is fetching, the whole blob. */
function isFinisher(member: SwarmMember): boolean {
  return member.complete || member.seed;
}
