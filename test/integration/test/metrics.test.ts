/**
 * Metrics (issue 5, acceptance 2): after a swarm pull, each agent's bytes by source (origin,
 * seed, peer) add up to exactly the bytes of the blobs it fetched, and a pull served from the
 * cache counts under `cache` without changing them. Every service reports the metrics the
 * operations guide lists.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { scrapeMetrics, startWatcher, waitFor, WATCHER_TOKEN } from '@shoal/testkit';

import { MiB } from '../src/files.js';
import { pullBlobs, startCluster, type Cluster } from '../src/swarm.js';

/** Bytes by source as one agent's /metrics reports them. */
async function sources(url: string): Promise<Record<'origin' | 'seed' | 'peer' | 'cache', number>> {
  const metrics = await scrapeMetrics(url);
  const read = (source: string): number =>
    metrics.get('shoal_agent_fetched_bytes_total', { source });
  return { origin: read('origin'), seed: read('seed'), peer: read('peer'), cache: read('cache') };
}

/**
 * Every piece an agent kept from a peer or the seed has its fetch time observed once, under
 * the same source: the histogram's count is the pieces counted `ok`, a piece's time is
 * positive, and no time is observed for a source that sent nothing. Returns the times
 * observed.
 */
async function assertPieceTimes(
  url: string,
  got: Record<'origin' | 'seed' | 'peer', number>,
): Promise<number> {
  const metrics = await scrapeMetrics(url);
  let observed = 0;
  for (const source of ['seed', 'peer'] as const) {
    const kept = metrics.get('shoal_agent_pieces_total', { source, result: 'ok' });
    const count = metrics.get('shoal_agent_piece_fetch_seconds_count', { source });
    const seconds = metrics.get('shoal_agent_piece_fetch_seconds_sum', { source });
    assert.equal(count, kept, `${url}: a time for each piece kept from the ${source}`);
    assert.equal(kept > 0, got[source] > 0, `${url}: pieces from the ${source} iff its bytes`);
    assert.ok(count === 0 ? seconds === 0 : seconds > 0, `${url}: ${source} pieces took time`);
    observed += count;
  }
  return observed;
}

describe('metrics after a swarm pull', () => {
  const repository = 'shoal/metrics';
  let cluster: Cluster;

  before(async () => {
    cluster = await startCluster({
      layerSizes: [24 * MiB, 4 * MiB, 300 * 1024],
      seed: 'metrics',
      repository,
      trackers: 1,
      agents: ['m-1', 'm-2', 'm-3'].map((peerId) => ({ peerId })),
    });
  });

  after(async () => {
    await cluster.stop();
  });

  it('reports bytes by source that add up to what each agent received', async (t) => {
    const { agents, image } = cluster;
    const blobBytes = image.blobs.reduce((sum, b) => sum + b.size, 0);
    const outcomes = await Promise.all(
      agents.map((agent) => pullBlobs(agent, cluster, repository)),
    );
    for (const outcome of outcomes.flat()) {
      assert.equal(outcome.status, 200);
      assert.equal(outcome.error, undefined);
    }
    let piecesTimed = 0;
    for (const agent of agents) {
      const got = await sources(agent.url);
      t.diagnostic(
        `${agent.peerId ?? ''}: origin ${got.origin}, seed ${got.seed}, peer ${got.peer}, cache ${got.cache}; blobs ${blobBytes}`,
      );
      assert.equal(got.origin + got.seed + got.peer, blobBytes, `${agent.peerId ?? ''} received`);
      assert.equal(got.cache, 0, 'nothing was cached before');
      piecesTimed += await assertPieceTimes(agent.url, got);
      // A client has its last byte once the blob verifies; the cache's durable copy (fsync,
      // rename) follows, so the cache size reaches the blobs a moment later.
      await waitFor(
        `${agent.peerId ?? ''} caches every blob`,
        async () => (await agent.metric('shoal_agent_cache_size_bytes')) === blobBytes,
        { timeoutMs: 10_000 },
      );
      assert.equal(await agent.metric('shoal_agent_cache_size_bytes'), blobBytes);
    }
    // The swarm carried at least part of the pull, so some pieces were timed.
    assert.ok(piecesTimed > 0, 'the agents kept pieces from the seed or peers, each timed');

    // The same blobs again from one agent: all from its cache, nothing received.
    const [first] = agents;
    assert.ok(first !== undefined);
    const earlier = await sources(first.url);
    await pullBlobs(first, cluster, repository);
    const again = await sources(first.url);
    assert.deepEqual(again, { ...earlier, cache: blobBytes });
  });

  it('reports the listed metrics on every service', async () => {
    const [agent] = cluster.agents;
    const [tracker] = cluster.trackers;
    assert.ok(agent !== undefined && tracker !== undefined);
    const expected: [string, string[]][] = [
      [
        agent.url,
        [
          'fetched_bytes_total',
          'pieces_total',
          'piece_fetch_seconds',
          'verification_failures_total',
          'swarm_peers',
          'events_received_total',
          'events_rejected_total',
          'cache_size_bytes',
          'cache_evictions_total',
          'rate_limit_waits_total',
        ].map((m) => `shoal_agent_${m}`),
      ],
      [
        tracker.url,
        [
          'swarm_size_peers',
          'swarm_peers',
          'swarm_blobs',
          'handout_latency_seconds',
          'events_consumed_total',
          'events_rejected_total',
        ].map((m) => `shoal_tracker_${m}`),
      ],
      [
        cluster.seed.url,
        [
          'ingested_bytes_total',
          'served_bytes_total',
          'events_consumed_total',
          'seed_requests_rejected_total',
        ].map((m) => `shoal_seedserver_${m}`),
      ],
    ];
    for (const [url, names] of expected) {
      const metrics = await scrapeMetrics(url);
      for (const name of names) {
        assert.ok(metrics.has(name), `${url} reports ${name}`);
      }
    }
    assert.ok(
      (await tracker.metric('shoal_tracker_events_consumed_total', { type: 'piece-want' })) > 0,
    );
    assert.ok(
      (await cluster.seed.metric('shoal_seedserver_events_consumed_total', {
        type: 'seed-request',
      })) > 0,
    );
  });

  it('reports preheat jobs by state on the watcher', async () => {
    const { registry, image } = cluster;
    const watcher = await startWatcher({
      natsUrl: cluster.nats.url,
      registries: `${registry.host}=${registry.url}`,
    });
    try {
      const response = await fetch(`${watcher.url}/preheat`, {
        method: 'POST',
        headers: { authorization: `Bearer ${WATCHER_TOKEN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ image: `${registry.host}/${repository}:${image.tag}` }),
        signal: AbortSignal.timeout(10_000),
      });
      assert.equal(response.status, 202, await response.clone().text());
      await waitFor(
        'the job to be counted as done',
        async () =>
          (await watcher.metric('shoal_watcher_preheat_jobs_total', { state: 'done' })) === 1,
        { timeoutMs: 60_000, intervalMs: 250 },
      );
      const metrics = await scrapeMetrics(watcher.url);
      for (const name of [
        'preheat_jobs_total',
        'preheat_jobs_running',
        'preheat_commands_total',
        'preheat_reports_total',
        'webhooks_total',
        'events_rejected_total',
        'schedule_leader',
      ]) {
        assert.ok(metrics.has(`shoal_watcher_${name}`), `the watcher reports ${name}`);
      }
      assert.equal(metrics.get('shoal_watcher_preheat_jobs_running'), 0);
      assert.equal(metrics.get('shoal_watcher_preheat_commands_total', { origin: 'api' }), 1);
      assert.equal(
        metrics.get('shoal_watcher_preheat_reports_total', { role: 'seed', ok: 'true' }),
        image.blobs.length,
      );
    } finally {
      await watcher.stop();
    }
  });
});
