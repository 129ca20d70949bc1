import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { SwarmView } from '../src/swarm/view.js';
import { blob, have } from './fixtures.js';

const MAX_AGE_MS = 60_000;
const T0 = 1_700_000_000_000;

function newView(): SwarmView {
  return new SwarmView({ maxAgeMs: MAX_AGE_MS });
}

/** Peer ids in a blob's swarm at `now`, sorted. */
function members(view: SwarmView, digest: string, now = T0): string[] {
  return view
    .members(digest, now)
    .map((e) => e.peer.id)
    .sort();
}

describe('swarm view', () => {
  const a = blob('a');
  const b = blob('b');

  it('adds peers from their haves', () => {
    const view = newView();
    assert.equal(view.applyHave(have(a, 'p1'), 1, T0, T0), 'applied');
    assert.equal(view.applyHave(have(a, 'p2'), 2, T0, T0), 'applied');
    assert.equal(view.applyHave(have(b, 'p1'), 3, T0, T0), 'applied');
    assert.deepEqual(members(view, a), ['p1', 'p2']);
    assert.deepEqual(members(view, b), ['p1']);
    assert.deepEqual(members(view, blob('unknown')), []);
    assert.equal(view.blobCount, 2);
    assert.equal(view.peerCount, 2);
    assert.equal(view.entryCount, 3);
    assert.equal(view.lastSeq, 3);
  });

  it('replaces a peer’s entry with its later have (full set, not a delta)', () => {
    const view = newView();
    view.applyHave(have(a, 'p1', { pieces: [[0, 10]] }), 1, T0, T0);
    view.applyHave(have(a, 'p1', { pieces: [[20, 30]], complete: true }), 2, T0, T0);
    const entries = view.members(a, T0);
    assert.equal(entries.length, 1);
    const [entry] = entries;
    assert.ok(entry !== undefined);
    assert.deepEqual(entry.pieces, [[20, 30]]);
    assert.equal(entry.complete, true);
    assert.equal(entry.seq, 2);
    // A complete member is never compared piece by piece: no bitmap is made for it.
    assert.equal(entry.bits, undefined);
    assert.equal(view.entryCount, 1);
  });

  it('keeps a partial member’s pieces as a bitmap too, made from the have it applied', () => {
    const view = newView();
    view.applyHave(
      have(a, 'p1', {
        pieces: [
          [0, 10],
          [40, 45],
        ],
      }),
      1,
      T0,
      T0,
    );
    // Pieces 0-9 in the first word, 40-44 at bits 8-12 of the second.
    assert.deepEqual(view.members(a, T0)[0]?.bits, Uint32Array.of(0x3ff, 0x1f00));
    view.applyHave(have(a, 'p1', { pieces: [[0, 64]] }), 2, T0, T0);
    assert.deepEqual(view.members(a, T0)[0]?.bits, Uint32Array.of(0xffffffff, 0xffffffff));
  });

  it('after a rebase (stream made anew, sequence from 1) applies the new stream in order', () => {
    const view = newView();
    view.applyHave(have(a, 'p1', { complete: true }), 5000, T0, T0);
    view.applyHave(have(b, 'p1', { complete: true }), 5001, T0, T0);
    view.applyHave(have(a, 'p2', { complete: true }), 5002, T0, T0);
    view.applyGone('p3', 5003, T0);
    view.applyHave(have(a, 'seed-1', { seed: true, pieces: [], complete: false }), 5004, T0, T0);
    // Without the rebase each of these is ignored: superseded, or hidden by the departure.
    const without = newView();
    without.applyHave(have(a, 'p1', { complete: true }), 5000, T0, T0);
    assert.equal(without.applyHave(have(a, 'p1', { pieces: [] }), 3, T0, T0), 'superseded');

    view.rebase();
    assert.equal(view.lastSeq, 0);
    assert.equal(view.seedWithdrawal(a), undefined);
    assert.deepEqual(members(view, a), ['p1', 'p2'], 'entries kept');
    // p1 evicts blob a (a withdrawal at seq 1 of the new stream), p2 leaves, p3 comes back.
    assert.equal(view.applyHave(have(a, 'p1', { pieces: [] }), 1, T0, T0), 'withdrawn');
    assert.equal(view.applyGone('p2', 2, T0), 1);
    assert.equal(view.applyHave(have(b, 'p3', { complete: true }), 3, T0, T0), 'applied');
    assert.deepEqual(members(view, a), []);
    assert.deepEqual(members(view, b), ['p1', 'p3']);
    assert.equal(view.entryCount, 2);
  });

  it('ignores a have older than the one it holds', () => {
    const view = newView();
    view.applyHave(have(a, 'p1', { pieces: [[0, 20]] }), 5, T0, T0);
    assert.equal(view.applyHave(have(a, 'p1', { pieces: [[0, 1]] }), 4, T0, T0), 'superseded');
    assert.deepEqual(view.members(a, T0)[0]?.pieces, [[0, 20]]);
  });

  it('removes a gone peer from every blob', () => {
    const view = newView();
    view.applyHave(have(a, 'p1'), 1, T0, T0);
    view.applyHave(have(b, 'p1'), 2, T0, T0);
    view.applyHave(have(a, 'p2'), 3, T0, T0);
    assert.equal(view.applyGone('p1', 4, T0), 2);
    assert.deepEqual(members(view, a), ['p2']);
    assert.deepEqual(members(view, b), []);
    assert.equal(view.blobCount, 1);
    assert.equal(view.peerCount, 1);
    assert.equal(view.entryCount, 1);
  });

  it('adds a gone peer back on a later have, but not on an earlier one', () => {
    const view = newView();
    view.applyHave(have(a, 'p1'), 1, T0, T0);
    view.applyGone('p1', 2, T0);
    // A have from before the departure (e.g. delivered out of order) stays out.
    assert.equal(view.applyHave(have(b, 'p1'), 1, T0, T0), 'peer-gone');
    assert.deepEqual(members(view, b), []);
    assert.equal(view.applyHave(have(a, 'p1'), 3, T0 + 1, T0 + 1), 'applied');
    assert.deepEqual(members(view, a, T0 + 1), ['p1']);
  });

  it('removes the entry of a peer that holds nothing of the blob any more', () => {
    const view = newView();
    view.applyHave(have(a, 'p1', { pieces: [[0, 10]], complete: true }), 1, T0, T0);
    view.applyHave(have(b, 'p1'), 2, T0, T0);
    view.applyHave(have(a, 'seed', { pieces: [[0, 10]], complete: true, seed: true }), 3, T0, T0);
    // p1 evicted a; the seed server evicted it too (its withdrawal says seed: true).
    assert.equal(view.applyHave(have(a, 'p1', { pieces: [] }), 4, T0, T0), 'withdrawn');
    assert.equal(
      view.applyHave(have(a, 'seed', { pieces: [], seed: true }), 5, T0, T0),
      'withdrawn',
    );
    assert.deepEqual(members(view, a), []);
    assert.deepEqual(members(view, b), ['p1']);
    assert.equal(view.entryCount, 1);
    assert.equal(view.blobCount, 1);
    assert.equal(view.peerCount, 1);
    // Nobody can finish a any more: a want for it must lead to a seed request again.
    assert.equal(view.sample(a, { peer: have(a, 'asker').peer, have: [] }, 8, T0).finisher, false);
    // Never held, then withdrawn: nothing to remove, nothing added.
    assert.equal(view.applyHave(have(blob('c'), 'p2', { pieces: [] }), 6, T0, T0), 'withdrawn');
    assert.equal(view.entryCount, 1);
    // Held again later: an entry again.
    assert.equal(view.applyHave(have(a, 'p1'), 7, T0, T0), 'applied');
    assert.deepEqual(members(view, a), ['p1']);
  });

  it('remembers when a seed last withdrew a blob, for a while and within the cap', () => {
    const view = new SwarmView({ maxAgeMs: MAX_AGE_MS, maxEntries: 2 });
    view.applyHave(have(a, 'seed', { complete: true, seed: true }), 1, T0, T0);
    assert.equal(view.seedWithdrawal(a), undefined);
    // An agent's eviction is no seed's withdrawal.
    view.applyHave(have(a, 'p1', { pieces: [] }), 2, T0, T0);
    assert.equal(view.seedWithdrawal(a), undefined);
    view.applyHave(have(a, 'seed', { pieces: [], seed: true }), 3, T0, T0);
    assert.equal(view.seedWithdrawal(a), 3);
    // Seeded and withdrawn again: the later one counts.
    view.applyHave(have(a, 'seed', { complete: true, seed: true }), 4, T0 + 10, T0 + 10);
    view.applyHave(have(a, 'seed', { pieces: [], seed: true }), 5, T0 + 10, T0 + 10);
    assert.equal(view.seedWithdrawal(a), 5);
    view.applyHave(have(b, 'seed', { pieces: [], seed: true }), 6, T0 + 20, T0 + 20);
    view.applyHave(have(blob('c'), 'seed', { pieces: [], seed: true }), 7, T0 + 30, T0 + 30);
    // Past the cap the oldest goes.
    assert.equal(view.withdrawalCount, 2);
    assert.equal(view.seedWithdrawal(a), undefined);
    assert.equal(view.seedWithdrawal(b), 6);
    view.expire(T0 + 25 + MAX_AGE_MS);
    assert.equal(view.seedWithdrawal(b), undefined);
    assert.equal(view.seedWithdrawal(blob('c')), 7);
    assert.equal(view.withdrawalCount, 1);
  });

  it('counts a seed leaving (peer-gone) as its withdrawal of every blob it held', () => {
    const view = newView();
    view.applyHave(have(a, 'seed', { complete: true, seed: true }), 1, T0, T0);
    view.applyHave(have(b, 'seed', { complete: true, seed: true }), 2, T0, T0);
    view.applyHave(have(a, 'p1'), 3, T0, T0);
    // An agent leaving withdraws nothing a seed request is named after.
    assert.equal(view.applyGone('p1', 4, T0), 1);
    assert.equal(view.seedWithdrawal(a), undefined);
    // The seed server back under its id with an empty cache leaves every swarm first: the
    // next seed request for a or b must not repeat the id of the one that brought them in.
    assert.equal(view.applyGone('seed', 5, T0 + 10), 2);
    assert.equal(view.seedWithdrawal(a), 5);
    assert.equal(view.seedWithdrawal(b), 5);
    assert.deepEqual(members(view, a, T0 + 10), []);
    // Leaving again with nothing held changes nothing.
    assert.equal(view.applyGone('seed', 6, T0 + 20), 0);
    assert.equal(view.seedWithdrawal(a), 5);
  });

  it('stays flat over rollouts whose blobs every peer evicts', () => {
    const view = newView();
    let seq = 0;
    for (let rollout = 0; rollout < 1_000; rollout += 1) {
      const digest = blob(`rollout-${rollout}`);
      for (let p = 0; p < 16; p += 1) {
        view.applyHave(have(digest, `agent-${p}`, { complete: true }), (seq += 1), T0, T0);
      }
      // Each agent's cache keeps the last two rollouts' blobs.
      if (rollout >= 2) {
        const evicted = blob(`rollout-${rollout - 2}`);
        for (let p = 0; p < 16; p += 1) {
          view.applyHave(have(evicted, `agent-${p}`, { pieces: [] }), (seq += 1), T0, T0);
        }
      }
    }
    assert.equal(view.entryCount, 2 * 16);
    assert.equal(view.blobCount, 2);
    assert.equal(view.peerCount, 16);
  });

  it('ignores a peer-gone for a peer it does not know', () => {
    const view = newView();
    assert.equal(view.applyGone('nobody', 1, T0), 0);
    assert.equal(view.entryCount, 0);
  });

  it('does not count haves older than the maximum age', () => {
    const view = newView();
    assert.equal(view.applyHave(have(a, 'old'), 1, T0 - MAX_AGE_MS - 1, T0), 'expired');
    assert.equal(view.applyHave(have(a, 'fresh'), 2, T0 - MAX_AGE_MS, T0), 'applied');
    assert.deepEqual(members(view, a), ['fresh']);
  });

  it('expires entries as time passes', () => {
    const view = newView();
    view.applyHave(have(a, 'p1'), 1, T0, T0);
    view.applyHave(have(a, 'p2'), 2, T0 + 30_000, T0 + 30_000);
    assert.deepEqual(members(view, a, T0 + MAX_AGE_MS + 1), ['p2']);
    assert.deepEqual(view.liveBlobs(T0 + MAX_AGE_MS + 30_001), []);
    // Memory is only released by expire().
    assert.equal(view.entryCount, 2);
    assert.equal(view.expire(T0 + MAX_AGE_MS + 1), 1);
    assert.equal(view.entryCount, 1);
    assert.equal(view.expire(T0 + MAX_AGE_MS + 30_001), 1);
    assert.equal(view.blobCount, 0);
    assert.equal(view.peerCount, 0);
  });

  it('drops an entry when its peer’s later have has expired', () => {
    const view = newView();
    view.applyHave(have(a, 'p1'), 1, T0 - MAX_AGE_MS - 10, T0 - MAX_AGE_MS - 10);
    assert.equal(view.applyHave(have(a, 'p1'), 2, T0 - MAX_AGE_MS - 5, T0), 'expired');
    assert.equal(view.entryCount, 0);
  });

  it('forgets departures once they are older than the maximum age', () => {
    const view = newView();
    view.applyHave(have(a, 'p1'), 1, T0, T0);
    view.applyGone('p1', 2, T0);
    view.expire(T0 + MAX_AGE_MS + 1);
    // A have older than the departure is older than the maximum age too, so it is expired.
    assert.equal(view.applyHave(have(a, 'p1'), 1, T0, T0 + MAX_AGE_MS + 1), 'expired');
  });

  it('gives a sorted, read-only snapshot', () => {
    const view = newView();
    view.applyHave(have(a, 'zed'), 1, T0, T0);
    view.applyHave(have(a, 'amy', { seed: true, complete: true, pieces: [[0, 50]] }), 2, T0, T0);
    view.applyHave(have(b, 'amy'), 3, T0, T0);
    const snapshot = view.snapshot(() => T0);
    assert.deepEqual(
      snapshot.swarm(a).map((e) => e.peer.id),
      ['amy', 'zed'],
    );
    assert.deepEqual(snapshot.blobs(), [a, b].sort());
    const [amy] = snapshot.swarm(a);
    assert.deepEqual(
      { peer: amy?.peer, pieces: amy?.pieces, complete: amy?.complete, seed: amy?.seed },
      { peer: have(a, 'amy').peer, pieces: [[0, 50]], complete: true, seed: true },
    );
  });

  it('holds at most maxEntries entries, dropping the one updated longest ago', () => {
    const view = new SwarmView({ maxAgeMs: MAX_AGE_MS, maxEntries: 3 });
    view.applyHave(have(a, 'p1'), 1, T0, T0);
    view.applyHave(have(a, 'p2'), 2, T0, T0);
    view.applyHave(have(b, 'p1'), 3, T0, T0);
    // p1's entry for a is refreshed: now a/p2 is the stalest.
    view.applyHave(have(a, 'p1', { pieces: [[0, 20]] }), 4, T0, T0);
    assert.equal(view.applyHave(have(b, 'p3'), 5, T0, T0), 'applied');
    assert.equal(view.entryCount, 3);
    assert.equal(view.evictedCount, 1);
    assert.deepEqual(members(view, a), ['p1']);
    assert.deepEqual(members(view, b), ['p1', 'p3']);
    assert.equal(view.peerCount, 2);
  });

  it('stays bounded under a flood of haves and departures for made-up blobs and peers', () => {
    const cap = 1_000;
    const view = new SwarmView({ maxAgeMs: MAX_AGE_MS, maxEntries: cap });
    let seq = 0;
    for (let i = 0; i < 50_000; i += 1) {
      view.applyHave(have(blob(`flood-${i}`), `peer-${i % 7_000}`), (seq += 1), T0, T0);
      if (i % 5 === 0) {
        view.applyGone(`gone-${i}`, (seq += 1), T0);
      }
    }
    assert.equal(view.entryCount, cap);
    assert.ok(view.blobCount <= cap);
    assert.ok(view.peerCount <= cap);
    assert.equal(view.departureCount, cap);
    // The newest haves are the ones kept.
    assert.deepEqual(members(view, blob('flood-49999')), ['peer-999']);
    assert.deepEqual(members(view, blob('flood-0')), []);
  });
});
