/**
 * A swarm fetch from a peer on a slow but healthy link is not sent to the origin (issue 14:
 * no piece request is abandoned by a fixed time on a healthy but slow link). A real
 * nats-server (piece hashes, a hand-out), a real piece server holding the whole blob behind a
 * proxy that shares 256 KiB/s among its answers (a slow link), and a real registry behind a
 * proxy that records what reached it. The download's requests share the link, so its 256 KiB
 * pieces arrive together after about four seconds, longer than the 1.5 s stall timeout: the
 * bytes keep moving, so the fetch waits for them, and the registry serves none of the blob.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Teardown } from '@shoal/testkit';

import {
  assertNothingFromOrigin,
  fetchFromLinkedPeer,
  startLinkedPeer,
  type LinkedPeer,
} from './linked-peer.js';

const STALL_TIMEOUT_MS = 1_500;
/** The slow link's rate, shared by every answer in flight. */
const LINK_BYTES = 256 * 1024;

describe('SwarmFetch on a slow link', () => {
  const teardown = new Teardown();
  let peer: LinkedPeer;

  before(async () => {
    // A 1 MiB layer: four pieces of 256 KiB and a few bytes more (the tarball's).
    peer = await startLinkedPeer(teardown, 'fetch-slow-link', 1024 * 1024);
    peer.link.set({ kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES });
  });

  after(() => teardown.run());

  it('waits for pieces that keep moving past the stall timeout, and reads nothing from the origin', async () => {
    const started = Date.now();
    // A source silent for 3 s while answering (or 10 of its gaps between reads) is given up.
    const fetch = await fetchFromLinkedPeer(teardown, peer, {
      id: 'agent-slow-link',
      silenceMinMs: 3_000,
      stallTimeoutMs: STALL_TIMEOUT_MS,
    });
    await fetch.running;
    const took = Date.now() - started;

    await assertNothingFromOrigin(peer, fetch);
    // The link, not the swarm, set the time: the whole pieces came well after the timeout.
    assert.ok(took > 2 * STALL_TIMEOUT_MS, `done in ${took} ms`);
    const pieces = await fetch.metrics.pieces.get();
    const ok = (source: string): number =>
      pieces.values.find((v) => v.labels.source === source && v.labels.result === 'ok')?.value ?? 0;
    assert.equal(ok('peer'), fetch.count, 'every piece from the slow peer');
    assert.equal(ok('origin'), 0, 'no piece from the origin');
    assert.equal(peer.link.counts().bytes, peer.blob.length, 'the link carried each byte once');
  });
});
