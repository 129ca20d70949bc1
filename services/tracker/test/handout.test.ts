import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { pieceRanges, type PieceRanges } from '@shoal/proto';

import { LoadTracker } from '../src/handout/load.js';
import {
  countMissing,
  countMissingFrom,
  countPieces,
  holdsMissing,
  holdsMissingFrom,
  missingRanges,
  missingRangesFrom,
  missingRangesWithin,
  pieceBitmap,
} from '../src/handout/pieces.js';
import { choosePeers, type SwarmMember } from '../src/handout/policy.js';
import { member, peer } from './fixtures.js';

const noLoad = (): number => 0;

/** Ids of the members chosen for an asker `me` holding `have`, limit 8 unless given. */
function ids(
  members: readonly SwarmMember[],
  options: {
    have?: PieceRanges;
    limit?: number;
    zone?: string;
    load?: (id: string) => number;
  } = {},
): string[] {
  return choosePeers(
    members,
    { peer: peer('me', options.zone), have: options.have ?? [], limit: options.limit ?? 8 },
    options.load ?? noLoad,
  ).map((m) => m.peer.id);
}

describe('piece ranges', () => {
  it('counts pieces', () => {
    assert.equal(countPieces([]), 0);
    assert.equal(
      countPieces([
        [0, 10],
        [20, 25],
      ]),
      15,
    );
  });

  it('computes the set difference, its size and whether it is empty, for random piece sets', () => {
    // Sorted, disjoint ranges over 0-300, as the schemas allow them; a fixed generator, so a
    // failure is found again.
    let seed = 7;
    const random = (): number => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const ranges = (): [number, number][] => {
      const out: [number, number][] = [];
      for (let at = Math.floor(random() * 5); at < 300;) {
        const end = at + 1 + Math.floor(random() * 8);
        out.push([at, end]);
        at = end + 1 + Math.floor(random() * (random() < 0.5 ? 2 : 30));
      }
      return out;
    };
    const expand = (set: [number, number][]): Set<number> =>
      new Set(
        set.flatMap(([start, end]) => Array.from({ length: end - start }, (_, k) => start + k)),
      );
    // Sets moved past the bitmaps' reach (16,384 pieces), both or one of them: the ranges are
    // merged instead, with the same answers.
    const far = 20_000;
    const moved = (set: [number, number][]): [number, number][] =>
      set.map(([start, end]) => [start + far, end + far]);
    for (let round = 0; round < 200; round += 1) {
      const held = ranges();
      const have = ranges();
      const haveSet = expand(have);
      const exact = [...expand(held)].filter((piece) => !haveSet.has(piece));
      const cases: [[number, number][], [number, number][], number][] = [
        [held, have, 0],
        [moved(held), moved(have), far],
        [held, [...have, [far, far + 1]], 0],
        [[...held, [far, far + 1]], have, 0],
      ];
      for (const [h, a, shift] of cases) {
        const extra = h.length > held.length ? [far] : [];
        const expected = [...exact.map((piece) => piece + shift), ...extra];
        assert.equal(countMissing(h, a), expected.length);
        const difference = missingRanges(h, a);
        assert.deepEqual([...expand(difference)], expected);
        // A valid piece set, as a hand-out carries it (sorted, disjoint, non-adjacent).
        assert.equal(pieceRanges.safeParse(difference).success, true);
        assert.equal(holdsMissing(h, a), expected.length > 0);
        // The same with the held set's bitmap passed in, as the swarm view keeps it (a copy
        // of the set, so no bitmap made above for `h` is found instead).
        const copy = h.map(([start, end]): [number, number] => [start, end]);
        const bits = pieceBitmap(copy);
        assert.equal(bits === undefined, shift > 0 || extra.length > 0);
        assert.equal(countMissingFrom(a)(copy, bits), expected.length);
        assert.deepEqual(missingRangesFrom(a)(copy, bits), difference);
        // Bounded by the ranges it takes, counted before they are made.
        const within = missingRangesWithin(a);
        assert.deepEqual(within(copy, bits, difference.length), difference);
        assert.deepEqual(within(h, undefined, difference.length + 1), difference);
        if (difference.length > 0) {
          assert.equal(within(copy, bits, difference.length - 1), undefined);
          assert.equal(within(h, undefined, 0), undefined);
        }
        assert.equal(holdsMissingFrom(a)(copy, bits), expected.length > 0);
      }
    }
  });

  it('counts the pieces of one set missing from another', () => {
    assert.equal(countMissing([[0, 10]], []), 10);
    assert.equal(countMissing([], [[0, 10]]), 0);
    assert.equal(countMissing([[0, 10]], [[0, 10]]), 0);
    assert.equal(
      countMissing(
        [[0, 10]],
        [
          [2, 4],
          [6, 8],
        ],
      ),
      6,
    );
    assert.equal(
      countMissing(
        [
          [0, 10],
          [20, 30],
        ],
        [[5, 25]],
      ),
      10,
    );
    assert.equal(
      countMissing(
        [
          [5, 6],
          [7, 8],
          [9, 10],
        ],
        [[0, 100]],
      ),
      0,
    );
    assert.equal(
      countMissing(
        [
          [0, 3],
          [5, 8],
        ],
        [
          [1, 2],
          [6, 7],
          [9, 12],
        ],
      ),
      4,
    );
    assert.equal(
      countMissing(
        [[10, 20]],
        [
          [0, 5],
          [25, 30],
        ],
      ),
      10,
    );
  });

  it('names runs that fill whole bitmap words and cross their edges as single ranges', () => {
    // Bitmaps hold 32 pieces a word: runs ending at, starting at and spanning word edges.
    assert.deepEqual(
      missingRanges(
        [[0, 256]],
        [
          [31, 33],
          [64, 96],
          [160, 161],
        ],
      ),
      [
        [0, 31],
        [33, 64],
        [96, 160],
        [161, 256],
      ],
    );
    assert.deepEqual(missingRanges([[5, 200]], []), [[5, 200]]);
    assert.deepEqual(missingRanges([[0, 256]], [[0, 256]]), []);
    assert.deepEqual(
      missingRanges(
        [
          [0, 32],
          [33, 64],
        ],
        [[31, 34]],
      ),
      [
        [0, 31],
        [34, 64],
      ],
    );
  });

  it('compares by the bitmap its caller keeps, not one made again', () => {
    // A bitmap out of step with its set (never so in the tracker) shows which one was read.
    const kept = Uint32Array.of(0b111);
    assert.equal(countMissingFrom([])([[0, 1]], kept), 3);
    assert.deepEqual(missingRangesFrom([[1, 2]])([[0, 1]], kept), [
      [0, 1],
      [2, 3],
    ]);
    assert.equal(holdsMissingFrom([[0, 1]])([[0, 1]], kept), true);
  });

  it('stays linear on large sets', () => {
    const even: PieceRanges = Array.from({ length: 4096 }, (_, i) => [i * 2, i * 2 + 1]);
    const odd: PieceRanges = Array.from({ length: 4096 }, (_, i) => [i * 2 + 1, i * 2 + 2]);
    assert.equal(countMissing(even, odd), 4096);
    assert.equal(countMissing(even, [[0, 8192]]), 0);
  });
});

describe('hand-out policy', () => {
  it('never hands the asker to itself', () => {
    assert.deepEqual(ids([member('me'), member('a')]), ['a']);
  });

  it('leaves out peers that hold none of the pieces the asker lacks', () => {
    const members = [
      member('has-what-i-have', { pieces: [[0, 10]] }),
      member('has-more', { pieces: [[0, 20]] }),
      member('has-other', { pieces: [[30, 40]] }),
    ];
    assert.deepEqual(ids(members, { have: [[0, 10]] }).sort(), ['has-more', 'has-other']);
  });

  it('keeps complete peers and seeds even when their piece lists add nothing', () => {
    const members = [
      member('complete', { complete: true, pieces: [[0, 10]] }),
      member('seed-starting', { seed: true, pieces: [] }),
      member('partial', { pieces: [[0, 10]] }),
    ];
    assert.deepEqual(ids(members, { have: [[0, 10]] }), ['complete', 'seed-starting']);
  });

  it('names of a partial peer only the pieces the asker lacks; complete peers and seeds whole', () => {
    const chosen = choosePeers(
      [
        member('partial', {
          pieces: [
            [0, 10],
            [20, 30],
          ],
        }),
        member('complete', { complete: true, pieces: [[0, 40]] }),
        member('seed', { seed: true, pieces: [[0, 25]] }),
        // The difference would take three ranges where the peer's own set takes one.
        member('split', { pieces: [[0, 40]] }),
      ],
      {
        peer: peer('me'),
        have: [
          [6, 22],
          [30, 32],
        ],
        limit: 8,
      },
      noLoad,
    );
    const offered = new Map(chosen.map((m) => [m.peer.id, m.pieces]));
    assert.deepEqual(offered.get('partial'), [
      [0, 6],
      [22, 30],
    ]);
    assert.deepEqual(offered.get('complete'), [[0, 40]]);
    assert.deepEqual(offered.get('seed'), [[0, 25]]);
    assert.deepEqual(offered.get('split'), [[0, 40]]);
    // Ranked by what each can give: the partial peer 14 pieces, the split one 22.
    assert.deepEqual(
      chosen.map((m) => m.peer.id),
      ['complete', 'split', 'partial', 'seed'],
    );
  });

  it('prefers the asker’s zone', () => {
    const members = [member('b1', { zone: 'b' }), member('a1', { zone: 'a' }), member('none')];
    assert.deepEqual(ids(members, { zone: 'a' }), ['a1', 'b1', 'none']);
  });

  it('ignores zones when the asker has none', () => {
    const members = [member('b1', { zone: 'b' }), member('a1', { zone: 'a' })];
    assert.deepEqual(ids(members), ['a1', 'b1']);
  });

  it('prefers less loaded peers', () => {
    const load = new Map([
      ['a', 5],
      ['b', 0],
      ['c', 2],
    ]);
    const members = [member('a'), member('b'), member('c')];
    assert.deepEqual(ids(members, { load: (id) => load.get(id) ?? 0 }), ['b', 'c', 'a']);
  });

  it('spreads hand-outs over equal peers as their load grows', () => {
    const tracker = new LoadTracker(10_000);
    const members = ['a', 'b', 'c', 'd'].map((id) => member(id));
    const firsts: string[] = [];
    for (let i = 0; i < 8; i += 1) {
      const chosen = choosePeers(members, { peer: peer(`asker${i}`), have: [], limit: 1 }, (id) =>
        tracker.load(id, 1_000),
      );
      for (const m of chosen) {
        tracker.record(m.peer.id, 1_000);
      }
      firsts.push(chosen[0]?.peer.id ?? '');
    }
    assert.deepEqual(firsts, ['a', 'b', 'c', 'd', 'a', 'b', 'c', 'd']);
  });

  it('prefers peers with more of the pieces the asker lacks', () => {
    const members = [
      member('few', { pieces: [[0, 12]] }),
      member('many', { pieces: [[0, 50]] }),
      member('some', { pieces: [[0, 30]] }),
    ];
    assert.deepEqual(ids(members, { have: [[0, 10]] }), ['many', 'some', 'few']);
  });

  it('ranks zone over load, and load over useful pieces', () => {
    const load = new Map([['near-busy', 3]]);
    const members = [
      member('far-idle', { zone: 'b', pieces: [[0, 100]] }),
      member('near-busy', { zone: 'a', pieces: [[0, 100]] }),
      member('near-idle-small', { zone: 'a', pieces: [[0, 5]] }),
    ];
    assert.deepEqual(ids(members, { zone: 'a', load: (id) => load.get(id) ?? 0 }), [
      'near-idle-small',
      'near-busy',
      'far-idle',
    ]);
  });

  it('puts seeds last whenever a non-seed peer can serve', () => {
    const members = [
      member('seed', { seed: true, complete: true, zone: 'a' }),
      member('far-partial', { zone: 'b' }),
      member('complete', { complete: true, zone: 'b' }),
    ];
    const chosen = ids(members, { zone: 'a', load: (id) => (id === 'complete' ? 9 : 0) });
    assert.deepEqual(chosen, ['far-partial', 'complete', 'seed']);
  });

  it('hands out seeds when they are all there is', () => {
    const members = [member('seed-2', { seed: true }), member('seed-1', { seed: true })];
    assert.deepEqual(ids(members), ['seed-1', 'seed-2']);
  });

  it('returns at most the asked number of peers', () => {
    const members = Array.from({ length: 20 }, (_, i) => member(`p${String(i).padStart(2, '0')}`));
    assert.equal(ids(members, { limit: 3 }).length, 3);
    assert.deepEqual(ids(members, { limit: 3 }), ['p00', 'p01', 'p02']);
    assert.equal(ids(members, { limit: 64 }).length, 20);
  });

  it('keeps the last place for someone who can finish the blob', () => {
    const members = [
      ...Array.from({ length: 5 }, (_, i) => member(`partial${i}`)),
      member('seed', { seed: true, complete: true }),
    ];
    assert.deepEqual(ids(members, { limit: 3 }), ['partial0', 'partial1', 'seed']);
    const withComplete = [...members, member('complete', { complete: true })];
    assert.deepEqual(ids(withComplete, { limit: 2, load: (id) => (id === 'complete' ? 5 : 0) }), [
      'partial0',
      'complete',
    ]);
  });

  it('returns nothing for an empty swarm', () => {
    assert.deepEqual(ids([]), []);
  });
});

describe('load tracker', () => {
  it('counts hand-outs per peer within the window', () => {
    const load = new LoadTracker(10_000);
    load.record('a', 0);
    load.record('a', 4_000);
    load.record('b', 4_000);
    assert.equal(load.load('a', 5_000), 2);
    assert.equal(load.load('b', 5_000), 1);
    assert.equal(load.load('c', 5_000), 0);
  });

  it('forgets hand-outs older than the window', () => {
    const load = new LoadTracker(10_000);
    load.record('a', 0);
    load.record('a', 6_000);
    assert.equal(load.load('a', 9_999), 2);
    assert.equal(load.load('a', 12_000), 1);
    assert.equal(load.load('a', 17_000), 0);
  });

  it('counts a hand-out from a clock that stepped back in its own time, and expires it then', () => {
    const load = new LoadTracker(10_000);
    load.record('a', 5_000);
    load.record('a', 2_000);
    load.record('a', 5_000);
    assert.equal(load.load('a', 5_000), 3);
    assert.equal(load.load('a', 12_500), 2);
    assert.equal(load.load('a', 15_000), 0);
  });

  it('lets recent hand-outs expire while one from a clock that ran ahead is still counted', () => {
    const load = new LoadTracker(10_000);
    load.record('a', 60_000);
    const seen: number[] = [];
    for (let t = 1_000; t <= 50_000; t += 1_000) {
      load.record('a', t);
      if (t % 10_000 === 0) {
        seen.push(load.load('a', t));
      }
    }
    // The ten hand-outs of the last ten seconds, and the one counted ahead of the clock.
    assert.deepEqual(seen, [11, 11, 11, 11, 11]);
  });

  it('prunes idle peers', () => {
    const load = new LoadTracker(1_000);
    load.record('a', 0);
    load.record('b', 900);
    load.prune(1_500);
    assert.equal(load.size, 1);
    load.prune(5_000);
    assert.equal(load.size, 0);
  });
});
