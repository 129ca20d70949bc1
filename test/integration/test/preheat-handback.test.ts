/**
 * An agent doing its part of a `nodes` preheat gets SIGTERM (a DaemonSet update, a node
 * drain) while a client pulls one of the same blobs through its mirror: it stops pulling,
 * hands its task back to the stream instead of reporting its blobs failed, and exits 0;
 * started again on the same node (same peer id, same cache), it takes the task again and
 * finishes it, and the job ends done with no failure. Before, the preheat stopped only after
 * the mirror's drain, whose cut (the client's download outlasting it) aborted the shared
 * downloads, and the agent reported those blobs failed: the job failed. Real nats-server,
 * registry, tracker, seed server, watcher and agents.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { connect } from '@nats-io/transport-node';
import {
  decodeMessage,
  preheatReport,
  preheatReportSubjects,
  STREAMS,
  type PreheatReport,
} from '@shoal/proto';
import { jetStreamFor } from '@shoal/runtime/nats';
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
import { streamDigest } from '../src/http.js';
import {
  preheatFinished,
  preheatStatus,
  queuePreheat,
  startPreheatStack,
  type PreheatStack,
} from '../src/preheat.js';
import { bytesBySource, FAST_SWARM_ENV, pullBlobs } from '../src/swarm.js';

const repository = 'team/handback';

describe('a node preheat handed back at SIGTERM', () => {
  const teardown = new Teardown();
  let stack: PreheatStack;
  let workDir: string;

  before(async () => {
    stack = await startPreheatStack(teardown);
    const dir = await makeTempDir('preheat-handback');
    workDir = dir.path;
    teardown.add('work dir', () => dir.remove());
  });

  after(() => teardown.run());

  /** The agent of node `node-1`, on its cache directory, its preheat pulls at 1 MiB/s. */
  const startNode = async (): Promise<AgentProcess> => {
    const agent = await startAgent({
      registries: stack.registries,
      defaultRegistry: stack.registry.host,
      natsUrl: stack.nats.url,
      peerId: 'node-1',
      cacheDir: join(workDir, 'cache'),
      env: {
        ...FAST_SWARM_ENV,
        SHOAL_AGENT_PREHEAT_RATE_BYTES: String(MiB),
        // A drain of 4 s: the client's pull (6 MiB), sharing the preheat's 1 MiB/s, outlasts
        // it; 2 s left for the rest of the close on a loaded machine.
        SHOAL_SHUTDOWN_TIMEOUT_MS: '6000',
      },
    });
    teardown.add('node-1', () => agent.stop());
    return agent;
  };

  /** Every report of `job` in the stream, the seed's and the agents'. */
  const reportsOf = async (job: string): Promise<PreheatReport[]> => {
    const nc = await connect({ servers: stack.nats.url });
    try {
      const { js } = await jetStreamFor(nc);
      const consumer = await js.consumers.get(STREAMS.preheatEvents.name, {
        filter_subjects: preheatReportSubjects(job),
      });
      const reports: PreheatReport[] = [];
      for (;;) {
        const msg = await consumer.next({ expires: 1_000 });
        if (msg === null) {
          return reports;
        }
        const decoded = decodeMessage(preheatReport, msg.data);
        assert.ok(decoded.ok, 'a valid report');
        reports.push(decoded.value);
      }
    } finally {
      await nc.close();
    }
  };

  it('the task comes back and the restarted agent finishes it; nothing is reported failed', async () => {
    const first = await startNode();
    const pushed = await generateImage(join(workDir, 'image'), {
      layerSizes: [6 * MiB, 2 * MiB],
      seed: 'preheat-handback',
    });
    const { registry, watcher } = stack;
    const ref = await pushImage(pushed, registry.host, repository);
    const id = await queuePreheat(watcher.url, ref, 'nodes');

    // The layers are coming in, at 1 MiB/s: the task is in the agent's hands. A client asks
    // for one of them meanwhile and shares its download; SIGTERM cuts its answer short.
    await waitFor(
      'the agent preheating',
      async () => (await first.metric('shoal_agent_fetched_bytes_total', { source: 'seed' })) > 0,
      { timeoutMs: 30_000, intervalMs: 50 },
    );
    const layer = pushed.layers[0];
    assert.ok(layer !== undefined);
    const client = streamDigest(
      `${first.url}/v2/${repository}/blobs/${layer.digest}?ns=${registry.host}`,
    ).then(
      (outcome) => outcome.digest,
      () => undefined,
    );
    await waitFor(
      'the agent pulling the layers',
      async () =>
        (await first.metric('shoal_agent_fetched_bytes_total', { source: 'seed' })) >= MiB,
      { timeoutMs: 30_000, intervalMs: 100 },
    );
    assert.ok(
      (await first.metric('shoal_agent_preheat_blobs_total')) < pushed.blobs.length,
      'the agent had not finished',
    );
    first.process.child.kill('SIGTERM');
    const [code] = (await once(first.process.child, 'exit')) as [number | null];
    if (code !== 0) {
      // What the agent said on its way out is the only account of why.
      const log = await readFile(first.process.logPath, 'utf8');
      assert.fail(
        `the agent exited ${String(code)} at SIGTERM; its log ends:\n${log.slice(-6000)}`,
      );
    }
    assert.notEqual(await client, layer.digest, 'the client was cut short');
    const reported = await reportsOf(id);
    assert.deepEqual(
      reported.filter((r) => !r.ok),
      [],
      'nothing reported failed at SIGTERM',
    );
    assert.ok(
      reported.filter((r) => r.role === 'agent').length < pushed.blobs.length,
      'the layers were not reported',
    );
    assert.match(
      await readFile(first.process.logPath, 'utf8'),
      /node preheat interrupted; will resume/,
    );
    await first.stop();
    assert.equal((await preheatStatus(watcher.url, id)).state, 'running');

    // The node's agent back: the task it handed back is its again.
    const second = await startNode();
    const job = await preheatFinished(watcher.url, id);
    assert.equal(job.state, 'done', JSON.stringify(job));
    assert.equal(job.nodesDone, 1);
    assert.deepEqual(job.failures, []);
    const reports = await reportsOf(id);
    assert.deepEqual(
      reports.filter((r) => !r.ok),
      [],
    );
    assert.deepEqual(
      new Set(reports.filter((r) => r.role === 'agent').map((r) => r.blob)),
      new Set(pushed.blobs.map((b) => b.digest)),
      'the agent reported every blob held',
    );

    // The blobs are in the node's cache: a pull now fetches nothing.
    const before = await bytesBySource(second);
    const outcomes = await pullBlobs(second, { image: pushed, registry }, repository);
    assert.deepEqual(
      outcomes.map((o) => ({ digest: o.digest, error: o.error?.message })),
      pushed.blobs.map((b) => ({ digest: b.digest, error: undefined })),
    );
    assert.deepEqual(await bytesBySource(second), before, 'nothing fetched at pull time');
  });
});
