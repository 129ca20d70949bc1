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
    assert.equal(view.entryCount, 1);
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
