/**
 * The holder index a hand-out samples: the policy's properties (no asker, no gone or expired
 * peer, the limit, load spread, zone first, someone who can finish the blob) hold on samples,
 * and the work per want is bounded by the limit, not the swarm.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { PieceRanges } from '@shoal/proto';

import { BlobHolders } from '../src/handout/holders.js';
import { LoadTracker } from '../src/handout/load.js';
import { holdsMissing } from '../src/handout/pieces.js';
import { choosePeers, sampleWindow, type SwarmMember } from '../src/handout/policy.js';
import { SwarmView } from '../src/swarm/view.js';
import { blob, have, member, peer } from './fixtures.js';

const T0 = 1_700_000_000_000;
const MAX_AGE_MS = 60_000;

function holdersOf(members: readonly SwarmMember[]): BlobHolders<SwarmMember> {
  const holders = new BlobHolders<SwarmMember>();
  for (const m of members) {
    holders.set(m);
  }
  return holders;
}

const always = (): boolean => true;

function ask(id: string, options: { have?: PieceRanges; zone?: string } = {}) {
  return { peer: peer(id, options.zone), have: options.have ?? [] };
}

function idsOf(members: readonly SwarmMember[]): string[] {
  return members.map((m) => m.peer.id).sort();
}

/** `n` partial members `<prefix>00000`... holding pieces [0, 10). */
function partials(n: number, zone?: string, prefix = 'p'): SwarmMember[] {
  return Array.from({ length: n }, (_, i) =>
    member(`${prefix}${String(i).padStart(5, '0')}`, zone === undefined ? {} : { zone }),
  );
}

describe('holder index', () => {
  it('samples a small swarm whole, without the asker', () => {
    const holders = holdersOf([
      member('me'),
      member('a'),
      member('c', { complete: true }),
      member('s', { seed: true }),
    ]);
    const sample = holders.sample(ask('me'), 16, always);
    assert.deepEqual(idsOf(sample.members), ['a', 'c', 's']);
    assert.equal(sample.finisher, true);
    assert.deepEqual(sample.dead, []);
  });

  it('compares a member by the bitmap kept with it (the swarm view makes it per have)', () => {
    // Out of step with its set on purpose: piece 1 only in the bitmap shows which was read.
    const kept: SwarmMember = { ...member('k', { pieces: [[0, 1]] }), bits: Uint32Array.of(0b11) };
    const asker = ask('me', { have: [[0, 1]] });
    const sample = holdersOf([kept]).sample(asker, 16, always);
    assert.deepEqual(idsOf(sample.members), ['k']);
    const chosen = choosePeers(sample.members, { ...asker, limit: 4 }, () => 0);
    assert.deepEqual(
      chosen.map((m) => [m.peer.id, m.pieces, m.bits]),
      [['k', [[1, 2]], undefined]],
    );
  });

  it('leaves out members that no longer count, and reports them', () => {
    const holders = holdersOf([
      member('live'),
      member('expired'),
      member('gone-complete', { complete: true }),
    ]);
    const sample = holders.sample(ask('me'), 16, (m) => m.peer.id === 'live');
    assert.deepEqual(idsOf(sample.members), ['live']);
    assert.equal(sample.finisher, false);
    assert.deepEqual([...new Set(idsOf(sample.dead))], ['expired', 'gone-complete']);
  });

  it('leaves out partial members holding nothing the asker lacks', () => {
    const holders = holdersOf([
      member('same', { pieces: [[0, 10]] }),
      member('more', { pieces: [[0, 20]] }),
    ]);
    assert.deepEqual(idsOf(holders.sample(ask('me', { have: [[0, 10]] }), 16, always).members), [
      'more',
    ]);
  });

  it('follows updates: a member that completes moves, one that leaves is gone', () => {
    const holders = holdersOf([member('a'), member('b')]);
    holders.set(member('a', { complete: true }));
    holders.delete('b');
    holders.delete('never-there');
    assert.equal(holders.size, 1);
    const sample = holders.sample(ask('me'), 16, always);
    assert.deepEqual(idsOf(sample.members), ['a']);
    assert.equal(sample.finisher, true);
    assert.equal(sample.members[0]?.complete, true);
  });

  it('looks at O(window) members per want however large the swarm', () => {
    for (const size of [100, 10_000]) {
      const holders = holdersOf([
        ...partials(size),
        ...Array.from({ length: size }, (_, i) => member(`c${String(i)}`, { complete: true })),
      ]);
      let visited = 0;
      const counting = (): boolean => {
        visited += 1;
        return true;
      };
      for (let i = 0; i < 50; i += 1) {
        const sample = holders.sample(ask('me'), sampleWindow(8), counting);
        assert.ok(sample.members.length <= 2 * sampleWindow(8), `${sample.members.length}`);
      }
      assert.ok(visited <= 50 * 2 * sampleWindow(8), `${size}: visited ${visited}`);
    }
  });

  it('spreads hand-outs over the whole swarm as wants come', () => {
    const holders = holdersOf(partials(1000));
    const load = new LoadTracker(10_000);
    const limit = 8;
    for (let i = 0; i < 1000; i += 1) {
      const asker = { ...ask(`asker${i}`), limit };
      const sample = holders.sample(asker, sampleWindow(limit), always);
      const chosen = choosePeers(sample.members, asker, (id) => load.load(id, T0));
      assert.equal(chosen.length, limit);
      for (const m of chosen) {
        load.record(m.peer.id, T0);
      }
    }
    const counts = partials(1000).map((m) => load.load(m.peer.id, T0));
    // 8 000 hand-outs over 1 000 holders: every holder gets some, none more than twice its share.
    assert.ok(Math.min(...counts) >= 4, `least handed out: ${Math.min(...counts)}`);
    assert.ok(Math.max(...counts) <= 16, `most handed out: ${Math.max(...counts)}`);
  });

  it('samples the asker’s zone first, and other zones only to fill the window', () => {
    const holders = holdersOf([...partials(40, 'a', 'a'), ...partials(3, 'b', 'b')]);
    const near = holders.sample(ask('me', { zone: 'a' }), 16, always);
    assert.ok(near.members.every((m) => m.peer.zone === 'a'));
    const far = holders.sample(ask('me', { zone: 'b' }), 16, always);
    assert.equal(far.members.filter((m) => m.peer.zone === 'b').length, 3);
    assert.ok(far.members.length >= 16);
  });

  it('includes someone who can finish the blob when one exists, even outside the window', () => {
    const holders = holdersOf([
      ...partials(100, 'a'),
      member('far-complete', { complete: true, zone: 'b' }),
    ]);
    const sample = holders.sample(ask('me', { zone: 'a' }), 16, always);
    assert.equal(sample.finisher, true);
    assert.ok(sample.members.some((m) => m.peer.id === 'far-complete'));
    const chosen = choosePeers(sample.members, { ...ask('me', { zone: 'a' }), limit: 4 }, () => 0);
    assert.equal(chosen.length, 4);
    assert.equal(chosen.at(-1)?.peer.id, 'far-complete');
  });

  it('passes over a partial member with nothing to give without reading it', () => {
    const holders = holdersOf(partials(100));
    let asked = 0;
    const counting = (): boolean => {
      asked += 1;
      return true;
    };
    // Every member holds [0, 10), as the asker does: none is asked whether it still counts.
    assert.deepEqual(holders.sample(ask('me', { have: [[0, 10]] }), 16, counting).members, []);
    assert.equal(asked, 0);
    // To an asker lacking those pieces they can give: each one taken is read.
    const sample = holders.sample(ask('me'), 16, counting);
    assert.equal(sample.members.length, 16);
    assert.equal(asked, 16);
  });

  it('tests partial members by the bitmaps it keeps side by side, through updates and removals', () => {
    // Seeded, so a failure is the same on every run.
    let state = 7;
    const next = (): number => {
      state = (state * 48_271) % 2_147_483_647;
      return state / 2_147_483_647;
    };
    /** Up to 8 random runs of pieces below `reach`, sorted and disjoint. */
    const randomSet = (reach: number): PieceRanges => {
      const bounds = [...new Set(Array.from({ length: 16 }, () => Math.floor(next() * reach)))];
      bounds.sort((x, y) => x - y);
      const set: Array<[number, number]> = [];
      for (let i = 0; i + 1 < bounds.length; i += 2) {
        set.push([bounds[i] ?? 0, bounds[i + 1] ?? 0]);
      }
      return set;
    };
    // Blobs of 64 to 20,000 pieces: the bitmaps kept side by side widen as longer sets come;
    // sets past 2,048 pieces are compared by their own bitmaps, past 16,384 by their ranges.
    const reaches = [64, 256, 1_000, 5_000, 20_000];
    const holders = new BlobHolders<SwarmMember>();
    const held = new Map<string, SwarmMember>();
    const check = (when: string): void => {
      for (const have of [[], ...reaches.map(randomSet)]) {
        // A window past the swarm's size: every member is visited once.
        const sample = holders.sample(ask('asker', { have }), 1_000, always);
        const expected = [...held.values()].filter((m) => holdsMissing(m.pieces, have));
        assert.deepEqual(idsOf(sample.members), idsOf(expected), when);
      }
    };
    for (let op = 1; op <= 3_000; op += 1) {
      const id = `m${String(Math.floor(next() * 300))}`;
      if (next() < 0.2) {
        holders.delete(id);
        held.delete(id);
      } else {
        const reach = reaches[Math.floor(next() * reaches.length)] ?? 64;
        const m = member(id, { pieces: randomSet(reach) });
        holders.set(m);
        held.set(id, m);
      }
      if (op % 250 === 0) {
        check(`after ${String(op)} updates`);
      }
    }
    // Most members leave (the ring gives back room), then some come back.
    for (const id of [...held.keys()].slice(5)) {
      holders.delete(id);
      held.delete(id);
    }
    check('after most left');
    for (let i = 0; i < 40; i += 1) {
      const m = member(`back${String(i)}`, { pieces: randomSet(reaches[i % 3] ?? 64) });
      holders.set(m);
      held.set(m.peer.id, m);
    }
    check('after some came back');
  });

  it('says nobody can finish the blob when only the asker could', () => {
    const holders = holdersOf([member('me', { complete: true }), member('a')]);
    assert.equal(holders.sample(ask('me'), 16, always).finisher, false);
    assert.equal(holders.sample(ask('a'), 16, always).finisher, true);
  });
});

describe('swarm view samples', () => {
  const a = blob('a');

  it('sample live members, drop expired ones, and never gone peers', () => {
    const view = new SwarmView({ maxAgeMs: MAX_AGE_MS });
    view.applyHave(have(a, 'old', { complete: true }), 1, T0, T0);
    view.applyHave(have(a, 'fresh'), 2, T0 + 30_000, T0 + 30_000);
    view.applyHave(have(a, 'leaver', { complete: true }), 3, T0 + 30_000, T0 + 30_000);
    view.applyGone('leaver', 4, T0 + 31_000);
    const now = T0 + MAX_AGE_MS + 1;
    const sample = view.sample(a, ask('me'), 16, now);
    assert.deepEqual(idsOf(sample.members), ['fresh']);
    assert.equal(sample.finisher, false);
    assert.equal(sample.swarmSize, 2, 'counted before the expired member was removed');
    assert.equal(view.entryCount, 1, 'the expired member met by the sample is removed');
    assert.deepEqual(view.sample(blob('unknown'), ask('me'), 16, now), {
      members: [],
      finisher: false,
      swarmSize: 0,
    });
  });
});
