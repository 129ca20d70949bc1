/** The split of blobs between replicas (`ReplicaSet`) and the undecoded haves (`RawHaves`). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { encodeMessage, pieceHave, pieceHaveSubject } from '@shoal/proto';
import { createLogger, createMetrics } from '@shoal/runtime';

import type { SwarmEvent } from '../src/consumers/swarm-event.js';
import { RawHaves } from '../src/shard/raw-haves.js';
import { rendezvousOwner, ReplicaSet } from '../src/shard/replicas.js';
import { createTrackerMetrics } from '../src/metrics.js';
import { BlobShard, haveSubjectKey } from '../src/shard/shard.js';
import { SwarmView } from '../src/swarm/view.js';
import { blob, have } from './fixtures.js';

const digests = Array.from({ length: 3_000 }, (_, i) => blob(`split-${i}`));

describe('ReplicaSet', () => {
  it('owns everything alone, and splits the blobs evenly with the replicas it hears', () => {
    const set = new ReplicaSet('r-a', 5_000);
    assert.ok(digests.every((d) => set.owns(d)));
    assert.equal(set.heard('r-b', 0), true);
    assert.equal(set.heard('r-c', 0), true);
    assert.equal(set.heard('r-b', 100), false, 'a known replica changes nothing');
    assert.deepEqual(set.members, ['r-a', 'r-b', 'r-c']);
    const counts = new Map<string, number>();
    for (const d of digests) {
      counts.set(set.owner(d), (counts.get(set.owner(d)) ?? 0) + 1);
    }
    for (const member of set.members) {
      const share = (counts.get(member) ?? 0) / digests.length;
      assert.ok(share > 0.28 && share < 0.39, `${member} owns ${share}`);
    }
  });

  it('agrees with another replica that hears the same set', () => {
    const a = new ReplicaSet('r-a', 5_000);
    const b = new ReplicaSet('r-b', 5_000);
    a.heard('r-b', 0);
    b.heard('r-a', 0);
    assert.ok(digests.every((d) => a.owner(d) === b.owner(d)));
    assert.ok(
      digests.every((d) => a.owns(d) !== b.owns(d)),
      'each blob owned by exactly one',
    );
  });

  it('moves only the blobs of a replica that went', () => {
    const set = new ReplicaSet('r-a', 5_000);
    set.heard('r-b', 0);
    set.heard('r-c', 0);
    const before = new Map(digests.map((d) => [d, set.owner(d)]));
    const epoch = set.epoch;
    assert.equal(set.sweep(4_000), false, 'heard within the dead-after time');
    set.heard('r-b', 4_000);
    assert.equal(set.sweep(6_000), true, 'r-c not heard for 6 s');
    assert.ok(set.epoch > epoch);
    assert.deepEqual(set.members, ['r-a', 'r-b']);
    for (const d of digests) {
      if (before.get(d) !== 'r-c') {
        assert.equal(set.owner(d), before.get(d), 'a blob of a live replica stays');
      }
    }
    assert.equal(set.drop('r-b'), true);
    assert.equal(set.drop('r-b'), false);
    assert.ok(
      digests.every((d) => set.owns(d)),
      'alone again: everything',
    );
  });

  it("reads another replica's times on its own clock, from the heartbeats' send times", () => {
    const set = new ReplicaSet('r-a', 5_000);
    assert.equal(set.clocks.toLocal('r-b', 1_000), 1_000, 'unknown: as it is');
    // r-b's clock runs 3 s behind: sent at 7,000 on it, heard at 10,000 (+ transit) here.
    set.heard('r-b', 10_004, 7_000);
    set.heard('r-b', 11_300, 8_000); // a late one (a paused receiver): 300 ms in transit
    set.heard('r-b', 12_001, 9_000);
    assert.equal(set.clocks.offsetMs('r-b'), 3_001, 'the quickest heartbeat is the closest');
    assert.equal(set.clocks.toLocal('r-b', 9_500), 12_501);
    // 16 heartbeats later the old samples are gone: a stepped clock is followed.
    for (let i = 0; i < 16; i += 1) {
      set.heard('r-b', 20_000 + i * 1_000 + 2, 20_000 + i * 1_000 + 500);
    }
    assert.equal(set.clocks.offsetMs('r-b'), -498);
    set.heard('r-c', 20_000);
    assert.equal(set.clocks.offsetMs('r-c'), undefined, 'a heartbeat without a send time');
    assert.equal(set.drop('r-b'), true);
    assert.equal(set.clocks.offsetMs('r-b'), undefined, 'forgotten with the replica');
    set.heard('r-d', 0, 100);
    assert.equal(set.sweep(6_000), true);
    assert.equal(set.clocks.offsetMs('r-d'), undefined, 'forgotten when it stopped beating');
  });

  it('never drops itself', () => {
    const set = new ReplicaSet('r-a', 1);
    assert.equal(set.heard('r-a', 0), false);
    assert.equal(set.drop('r-a'), false);
    assert.equal(set.sweep(1_000_000), false);
    assert.deepEqual(set.members, ['r-a']);
    assert.equal(rendezvousOwner('sha256:00', []), undefined);
  });
});

describe('RawHaves', () => {
  const [b1, b2] = [blob('raw-1'), blob('raw-2')];
  const event = (seq: number, publishedAtMs = 0): SwarmEvent => ({
    subject: 'as received',
    data: new Uint8Array([seq]),
    seq,
    publishedAtMs,
  });

  it('keeps the latest have per (blob, peer), copied, in stream order per blob', () => {
    const raw = new RawHaves(100);
    const data = new Uint8Array([7]);
    assert.equal(raw.keep(b1, 'p1', { ...event(3), data }), 0);
    data[0] = 9;
    raw.keep(b1, 'p1', event(2));
    raw.keep(b1, 'p2', event(1));
    raw.keep(b2, 'p1', event(4));
    assert.deepEqual(
      raw.haves(b1).map((e) => [e.seq, e.data[0], e.subject]),
      [
        [1, 1, pieceHaveSubject(b1, 'p2')],
        [3, 7, pieceHaveSubject(b1, 'p1')],
      ],
      'the older have of p1 did not replace the newer; the bytes were copied; the subject rebuilt',
    );
    assert.equal(raw.size, 3);
    assert.ok(raw.has(b2));
    assert.deepEqual(raw.haves(blob('none')), []);
    raw.keep('not:a-digest', 'p1', event(5));
    assert.deepEqual(raw.haves('not:a-digest'), [], 'a made-up blob has nothing to load');
  });

  it('drops the stalest past its bound, and expired haves', () => {
    const raw = new RawHaves(2);
    assert.equal(raw.keep(b1, 'p1', event(1, 0)), 0);
    assert.equal(raw.keep(b1, 'p2', event(2, 500)), 0);
    assert.equal(raw.keep(b2, 'p1', event(3, 1_000)), 1, 'one dropped');
    assert.equal(raw.size, 2);
    assert.deepEqual(
      raw.haves(b1).map((e) => e.seq),
      [2],
    );
    // An update moves its blob to the back: b2 is now the stalest.
    raw.keep(b1, 'p2', event(4, 1_100));
    raw.keep(b1, 'p3', event(5, 1_100));
    assert.equal(raw.has(b2), false);
    assert.deepEqual(
      raw.haves(b1).map((e) => e.seq),
      [4, 5],
    );
    assert.equal(raw.expire(1_200, 50), 2);
    assert.equal(raw.has(b1), false);
    assert.equal(raw.size, 0);
  });
});

describe('BlobShard', () => {
  it('gives a borrowed blob back to its owner 30 s after the last borrow', () => {
    let clock = 1_000_000;
    const view = new SwarmView({ maxAgeMs: 3_600_000, maxEntries: 1_000 });
    const replicas = new ReplicaSet('r-a', 3_600_000);
    replicas.heard('r-b', clock);
    const shard = new BlobShard({
      view,
      replicas,
      metrics: createTrackerMetrics(createMetrics('tracker'), view),
      logger: createLogger({ service: 'tracker', level: 'silent' }),
      now: () => clock,
      maxKeptHaves: 100,
    });
    const digest = digests.find((d) => !replicas.owns(d));
    assert.ok(digest !== undefined);
    const event: SwarmEvent = {
      subject: pieceHaveSubject(digest, 'holder'),
      data: encodeMessage(pieceHave, have(digest, 'holder', { complete: true })),
      seq: 1,
      publishedAtMs: clock,
    };
    assert.equal(shard.admit(event, digest, 'holder'), false, "another replica's blob: kept");
    assert.deepEqual(view.blobKeys().length, 0);

    shard.borrow(digest);
    assert.ok(shard.applies(digest));
    assert.deepEqual([...view.blobKeys()], [digest], 'its kept haves applied');
    clock += 20_000;
    assert.equal(shard.releaseBorrowed(clock), 0);
    shard.borrow(digest);
    clock += 25_000;
    assert.equal(shard.releaseBorrowed(clock), 0, 'borrowed again 25 s ago');
    clock += 6_000;
    assert.equal(shard.releaseBorrowed(clock), 1);
    assert.equal(shard.applies(digest), false);
    assert.deepEqual([...view.blobKeys()], [], 'left the view');
    shard.borrow(digest);
    assert.deepEqual([...view.blobKeys()], [digest], 'borrowed again: loaded again');
  });
});

describe('haveSubjectKey', () => {
  it('reads the blob and the peer from a have subject', () => {
    assert.deepEqual(haveSubjectKey('shoal.swarm.v1.have.sha256.abc.node-1'), {
      blob: 'sha256:abc',
      peer: 'node-1',
    });
    assert.equal(haveSubjectKey('shoal.swarm.v1.have.sha256.abc'), undefined);
  });
});
