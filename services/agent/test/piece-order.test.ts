import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  endgameLate,
  nextTypicalMs,
  orderPieces,
  windowEnd,
  type PieceCandidate,
} from '../src/swarm/piece-order.js';

const MiB = 1024 * 1024;

function indexes(candidates: PieceCandidate[]): number[] {
  return candidates.map((c) => c.index);
}

describe('piece order', () => {
  it('reaches as far past the prefix as the held budget holds, and at least the concurrency', () => {
    assert.equal(windowEnd(10, MiB, 8 * MiB, 8), 18);
    assert.equal(windowEnd(10, 256 * 1024, 8 * MiB, 8), 42);
    assert.equal(windowEnd(0, 16 * MiB, 8 * MiB, 8), 8);
  });

  it('asks for pieces in the window first, then the rest, rarest first within each', () => {
    const candidates: PieceCandidate[] = [
      { index: 40, holders: 1, rank: 0.1 },
      { index: 3, holders: 3, rank: 0.2 },
      { index: 5, holders: 1, rank: 0.9 },
      { index: 12, holders: 2, rank: 0.5 },
      { index: 30, holders: 3, rank: 0.3 },
      { index: 4, holders: 2, rank: 0.4 },
    ];
    assert.deepEqual(indexes(orderPieces(candidates, 18)), [5, 4, 12, 3, 40, 30]);
  });

  it("breaks ties with the agent's own rank, not the index, so agents spread over the pieces", () => {
    const candidates: PieceCandidate[] = [
      { index: 0, holders: 1, rank: 0.7 },
      { index: 1, holders: 1, rank: 0.2 },
      { index: 2, holders: 1, rank: 0.5 },
    ];
    assert.deepEqual(indexes(orderPieces(candidates, 8)), [1, 2, 0]);
  });
});

describe('endgame', () => {
  it('asks a second peer only for a piece late against the typical piece time', () => {
    // Pieces typically take 8 s on this link: a request 10 s old is on time, 16 s is late.
    assert.equal(endgameLate(0, 10_000, 8_000, 2, 1_000), false);
    assert.equal(endgameLate(0, 15_999, 8_000, 2, 1_000), false);
    assert.equal(endgameLate(0, 16_000, 8_000, 2, 1_000), true);
    // Fast pieces: never before the minimum.
    assert.equal(endgameLate(0, 999, 20, 2, 1_000), false);
    assert.equal(endgameLate(0, 1_000, 20, 2, 1_000), true);
    // Before any piece arrived: the minimum alone.
    assert.equal(endgameLate(5_000, 6_000, undefined, 2, 1_000), true);
    assert.equal(endgameLate(5_000, 5_500, undefined, 2, 1_000), false);
  });

  it('follows the piece times with a moving average', () => {
    let typical = nextTypicalMs(undefined, 800);
    assert.equal(typical, 800);
    typical = nextTypicalMs(typical, 1_600);
    assert.equal(typical, 900);
    for (let i = 0; i < 100; i++) {
      typical = nextTypicalMs(typical, 8_000);
    }
    assert.ok(Math.abs(typical - 8_000) < 1, `settles on the new time: ${typical}`);
  });
});
