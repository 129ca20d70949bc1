/**
 * The preheat report stream deleted and declared again while a `nodes` preheat waits for its
 * agents' reports, NATS itself staying up (nobody reconnects): the job's report consumer ends
 * with its stream and the watcher reads the new stream from its first message, so the reports
 * published into it finish the job. Before, nats.js re-created the consumer after the last
 * sequence it had delivered, past the new stream's end, and the job waited for reports it
 * would never see. Real nats-server, registry, tracker, seed server, watcher and agent.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { connect } from '@nats-io/transport-node';
import { STREAMS } from '@shoal/proto';
import { ensureStreams, jetStreamFor } from '@shoal/runtime/nats';
import {
  generateImage,
  makeTempDir,
  pushImage,
  startAgent,
  Teardown,
  waitFor,
  type AgentProcess,
} from '@shoal/testkit';

import { MiB } from '../src/files.js';
import {
  preheatFinished,
  preheatStatus,
  queuePreheat,
  startPreheatStack,
  type PreheatStack,
} from '../src/preheat.js';
import { FAST_SWARM_ENV } from '../src/swarm.js';

describe('preheat reports on a stream made anew', () => {
  const teardown = new Teardown();
  let stack: PreheatStack;
  let agent: AgentProcess;
  let layouts: string;

  before(async () => {
    stack = await startPreheatStack(teardown);
    agent = await startAgent({
      registries: stack.registries,
      defaultRegistry: stack.registry.host,
      natsUrl: stack.nats.url,
      peerId: 'agent-slow',
      // Its preheat pulls take seconds: the stream is made anew before it reports.
      env: { ...FAST_SWARM_ENV, SHOAL_AGENT_PREHEAT_RATE_BYTES: String(MiB) },
    });
    teardown.add('agent', () => agent.stop());
    const dir = await makeTempDir('preheat-recreated');
    layouts = dir.path;
    teardown.add('images', () => dir.remove());
  });

  after(() => teardown.run());

  it('a nodes preheat finishes with the reports published into the new stream', async () => {
    const pushed = await generateImage(join(layouts, 'image'), {
      layerSizes: [3 * MiB, 3 * MiB],
      seed: 'preheat-reports-recreated',
    });
    const { nats, registry, watcher } = stack;
    const ref = await pushImage(pushed, registry.host, 'team/recreated');
    const id = await queuePreheat(watcher.url, ref, 'nodes');
    // The seed's part done, the job now waits for the agent's reports.
    await waitFor(
      'the job handed to the agent',
      async () => (await preheatStatus(watcher.url, id)).nodesTotal === 1,
      {
        timeoutMs: 30_000,
        intervalMs: 100,
      },
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    const nc = await connect({ servers: nats.url });
    try {
      const { jsm } = await jetStreamFor(nc);
      const old = await jsm.streams.info(STREAMS.preheatEvents.name);
      assert.ok(old.state.last_seq >= 3, 'the seed reported every blob into the old stream');
      await jsm.streams.delete(STREAMS.preheatEvents.name);
      assert.deepEqual(await ensureStreams(jsm, [STREAMS.preheatEvents], 1), [
        STREAMS.preheatEvents.name,
      ]);
    } finally {
      await nc.close();
    }
    // The small config blob may be reported already; the layers, at 1 MiB/s, are not.
    assert.ok(
      (await agent.metric('shoal_agent_preheat_blobs_total')) < pushed.blobs.length,
      'the agent had not reported every blob yet',
    );

    const job = await preheatFinished(watcher.url, id);
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.nodesDone, 1);
    assert.deepEqual(job.failures, []);
    assert.ok(
      (await watcher.metric('shoal_watcher_preheat_report_reader_reopens_total')) >= 1,
      'the watcher read the reports again',
    );
  });
});
