/**
 * Upload slots (issue 11, item 2): an agent serves at most SHOAL_AGENT_MAX_UPLOADS pieces at
 * once, and at most SHOAL_AGENT_MAX_UPLOADS_PER_PEER to one peer, so that one greedy or
 * stalled peer cannot take every slot. Past a cap the answer is 429 with the reason, counted.
 * The agent's upload limit (128 KiB/s, a 256 KiB piece in two seconds) keeps requests in
 * flight long enough to hit the caps.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { piecePath, pieceAuthHeaders } from '@shoal/proto';
import { signTestToken } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { rawGet, type RawResponse } from '../src/http.js';
import { pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

const repository = 'team/slots';

describe('upload slots on the peer port', () => {
  let cluster: Cluster;
  let peerUrl: string;
  let strictUrl: string;
  let blob: string;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [4 * MiB],
      seed: 'upload-slots',
      repository,
      trackers: 1,
      agents: [
        {
          // A 256 KiB piece takes four seconds at its upload rate; its deadline is half a second.
          peerId: 'strict',
          env: {
            SHOAL_AGENT_UPLOAD_RATE_BYTES: String(64 * 1024),
            SHOAL_AGENT_UPLOAD_TIMEOUT_MS: '500',
            SHOAL_AGENT_MAX_UPLOADS: '1',
          },
        },
        {
          peerId: 'holder',
          env: {
            SHOAL_AGENT_UPLOAD_RATE_BYTES: String(128 * 1024),
            SHOAL_AGENT_MAX_UPLOADS: '3',
            SHOAL_AGENT_MAX_UPLOADS_PER_PEER: '2',
          },
        },
      ],
    });
    const [strict, holder] = cluster.agents;
    assert.ok(strict?.peerUrl !== undefined && holder?.peerUrl !== undefined);
    strictUrl = strict.peerUrl;
    peerUrl = holder.peerUrl;
    const layer = cluster.image.layers[0];
    assert.ok(layer !== undefined);
    blob = layer.digest;
    for (const agent of cluster.agents) {
      for (const outcome of await pullBlobs(agent, cluster, repository)) {
        assert.equal(outcome.error, undefined);
      }
    }
  });

  after(async () => {
    await cluster.stop();
  });

  /** A piece request as `peer`, with a valid hand-out token. */
  const ask = (peer: string, piece: number, url = peerUrl): Promise<RawResponse> =>
    rawGet(
      url,
      piecePath(blob, piece),
      pieceAuthHeaders(signTestToken({ blob, peer, exp: Date.now() + 120_000 }), peer),
    );

  it('refuses a peer past its own cap, and everyone past the total, then serves again', async () => {
    const holder = cluster.agents[1];
    assert.ok(holder !== undefined);
    // Two slots for "greedy" (its cap): a third request from it is refused, with one slot free.
    const held = [ask('greedy', 0), ask('greedy', 1)];
    await new Promise((resolve) => setTimeout(resolve, 300));
    const greedyAgain = await ask('greedy', 3);
    assert.equal(greedyAgain.status, 429, 'a third request from one peer');
    assert.match(greedyAgain.body.toString('utf8'), /peer-busy/);

    // The free slot goes to another peer; then all three are in flight.
    const polite = ask('polite', 2);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const late = await ask('late', 4);
    assert.equal(late.status, 429, 'a fourth request in all');
    assert.match(late.body.toString('utf8'), /"busy"/);
    assert.equal(
      await holder.metric('shoal_agent_uploads_refused_total', { reason: 'peer-busy' }),
      1,
    );
    assert.equal(await holder.metric('shoal_agent_uploads_refused_total', { reason: 'busy' }), 1);

    for (const response of [...(await Promise.all(held)), await polite]) {
      assert.equal(response.status, 200);
      assert.equal(response.body.length, 256 * 1024);
    }
    // Slots are given back as responses end: the same peer is served again.
    const after = await ask('greedy', 3);
    assert.equal(after.status, 200);
    assert.equal(after.body.length, 256 * 1024);
  });

  it('closes an answer that outlives its deadline, and frees its upload slot', async () => {
    const strict = cluster.agents[0];
    assert.ok(strict !== undefined);
    const url = strictUrl;
    const refusedBefore = await strict.metric('shoal_agent_uploads_refused_total');
    // While the other agent pulled, this one's single slot was often taken: a peer that got
    // 429 waits a second before asking again, instead of spinning (thousands of refusals).
    assert.ok(refusedBefore < 100, `${refusedBefore} refusals during one pull`);
    const started = Date.now();
    await assert.rejects(ask('slow', 0, url), 'the answer is cut');
    const took = Date.now() - started;
    assert.ok(took < 3000, `cut after ${took} ms`);
    // Its only slot is free again: the next request is not refused as busy.
    const next = await ask('slow', 0, url).catch((error: unknown) => error);
    assert.ok(next instanceof Error, 'cut again, not refused');
    assert.equal(await strict.metric('shoal_agent_uploads_refused_total'), refusedBefore);
  });
});
