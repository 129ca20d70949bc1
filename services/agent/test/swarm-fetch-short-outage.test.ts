/**
 * A blob's only source goes silent for a few seconds mid-fetch (a short outage: packets
 * dropped, then back), shorter than the stall timeout: the fetch gives it up for its silence
 * within a second or so, probes it again soon (the refused source's short, doubling penalty),
 * and finishes from it once it is back; the registry serves none of the blob. A penalty
 * longer than the stall timeout (the first version of the silence rule: 10 s) sent the whole
 * rest to the origin. A real nats-server (piece hashes, a hand-out), a real piece server
 * behind a proxy that goes silent on cue, and a real registry behind a recording proxy.
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

const STALL_TIMEOUT_MS = 8_000;
/** The link's rate before and after the outage, shared by every answer in flight. */
const LINK_BYTES = 512 * 1024;
/**
 * How long the only source says nothing: well within the stall timeout, and shorter than the
 * first probe's wait (given up after at least `SILENCE_MIN_MS` of silence, then left alone
 * for the 2 s penalty), so the probe finds it back. At 3 s the probe could land just before
 * the link came back: given up again, its penalty doubled, and the next probe came after the
 * stall timeout (a CI run under load fell back to the origin that way).
 */
const OUTAGE_MS = 2_000;
/**
 * The longest the outage lasts while the fetch has not given the source up yet: the silence
 * it waits for is ten of the source's recent gaps between reads when that is more than the
 * floor, and on a loaded machine the gaps grow (a CI run saw the outage end before the fetch
 * gave the source up: it waited the outage out, which is right, and the check below failed).
 * Ended then, the probe after the 2 s penalty still comes within the stall timeout.
 */
const OUTAGE_MAX_MS = 5_000;
/** A source silent this long while answering is given up (the floor). */
const SILENCE_MIN_MS = 1_000;

describe('SwarmFetch when its only source goes silent for a few seconds', () => {
  const teardown = new Teardown();
  let peer: LinkedPeer;

  before(async () => {
    // A 4 MiB layer: sixteen pieces of 256 KiB and a few bytes more (the tarball's).
    peer = await startLinkedPeer(teardown, 'fetch-short-outage', 4 * 1024 * 1024);
    peer.link.set({ kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES });
  });

  after(() => teardown.run());

  it('gives the source up for its silence, asks it again once it is back, and reads nothing from the origin', async () => {
    const fetch = await fetchFromLinkedPeer(teardown, peer, {
      id: 'agent-short-outage',
      silenceMinMs: SILENCE_MIN_MS,
      stallTimeoutMs: STALL_TIMEOUT_MS,
    });
    // A second or so into the fetch (a quarter of the blob across), the source goes silent.
    while (peer.link.counts().bytes < peer.blob.length / 4) {
      await sleep(20);
    }
    const givenUp = async (): Promise<number> =>
      (await fetch.metrics.silentSources.get()).values.find((v) => v.labels.source === 'peer')
        ?.value ?? 0;
    peer.link.set({ kind: 'silent' });
    const silencedAt = Date.now();
    // Silent for the outage, and until the fetch gives the source up (at most OUTAGE_MAX_MS).
    while (
      Date.now() - silencedAt < OUTAGE_MS ||
      ((await givenUp()) === 0 && Date.now() - silencedAt < OUTAGE_MAX_MS)
    ) {
      await sleep(20);
    }
    peer.link.set({ kind: 'slow', delayMs: 0, rateBytes: LINK_BYTES });
    await fetch.running;

    await assertNothingFromOrigin(peer, fetch);
    assert.ok((await givenUp()) >= 1, 'the source was given up for its silence');
  });
});
