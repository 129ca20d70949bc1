/**
 * NATS goes down while a fetch streams its blob from a peer it knows: no hand-out or piece
 * hash can come any more, but the peer serves over HTTP, so the fetch goes on from it to the
 * end, past the stall timeout of the outage, and reads nothing from the origin. (Downloads
 * that cannot go on without NATS read the origin once it has been down for the stall
 * timeout: `agent-lifecycle.test.ts`.) A real nats-server, stopped mid-fetch; a real piece
 * server behind a slow link; a real registry behind a recording proxy.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Teardown } from '@shoal/testkit';

import {
  assertNothingFromOrigin,
  fetchFromLinkedPeer,
  startLinkedPeer,
  type LinkedPeer,
} from './linked-peer.js';

/** The link's rate: the 2 MiB blob takes about 4 s, most of it after NATS is gone. */
const LINK_BYTES = 512 * 1024;
/** The fetch's stall timeout: shorter than what is left of the fetch once NATS is gone. */
const STALL_TIMEOUT_MS = 2_000;

describe('SwarmFetch when NATS goes down mid-fetch', () => {
  const teardown = new Teardown();
  let peer: LinkedPeer;

  before(async () => {
    peer = await startLinkedPeer(teardown, 'fetch-nats-down', 2 * 1024 * 1024);
    peer.link.set({ kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES });
  });

  after(() => teardown.run());

  it('goes on from the peer it knows, past the wait for NATS, and reads nothing from the origin', async () => {
    const fetch = await fetchFromLinkedPeer(teardown, peer, {
      id: 'agent-nats-down',
      silenceMinMs: 1_000,
      stallTimeoutMs: STALL_TIMEOUT_MS,
    });
    while (peer.link.counts().bytes < peer.blob.length / 4) {
      await sleep(20);
    }
    await peer.fixture.nats.stop();
    const stoppedAt = Date.now();
    await fetch.running;
    const tookMs = Date.now() - stoppedAt;
    assert.ok(fetch.client.natsDownSince !== undefined, 'the client saw NATS go');
    await assertNothingFromOrigin(peer, fetch);
    // It ran past the stall timeout of the outage, when a download that could not go on
    // without NATS reads the origin.
    assert.ok(
      tookMs > STALL_TIMEOUT_MS + 500,
      `the fetch ended ${tookMs} ms after NATS went: too soon to tell`,
    );
  });
});
